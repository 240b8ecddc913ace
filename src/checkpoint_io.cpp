// Writing HF model directories, and finding the tokenizer that goes with a model.
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/formats/safetensors.hpp"
#include "flashback/io/atomic_dir.hpp"
#include "flashback/io/atomic_file.hpp"

namespace flashback {

namespace {

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    default: throw InvalidArgument(std::string("cannot save dtype ") + c10::toString(t));
  }
}

std::string dtype_string(at::ScalarType t) {
  return t == at::kHalf ? "float16" : t == at::kBFloat16 ? "bfloat16" : "float32";
}

}  // namespace

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Contiguous CPU copies where needed; `keep` holds them until written.
  std::vector<at::Tensor> keep;
  std::vector<RawTensor> raw;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    keep.push_back(c);
    RawTensor r;
    r.name = name;
    r.dtype = to_dtype(c.scalar_type());
    r.shape = c.sizes().vec();
    r.data = static_cast<const uint8_t*>(c.data_ptr());
    r.nbytes = c.nbytes();
    raw.push_back(std::move(r));
  }
  write_safetensors(path, raw, metadata);
}

namespace {
// config.json, generation_config.json, model.safetensors [, tokenizer.model
// or tokenizer.json, tokenizer_config.json] into `dir`.
void write_hf_files(const std::string& dir, const LlamaConfig& config, const std::map<std::string, at::Tensor>& tensors,
                    const Tokenizer* tokenizer) {
  std::map<std::string, at::Tensor> weights = tensors;
  if (config.tie_word_embeddings) weights.erase("lm_head.weight");
  auto emb = weights.find("model.embed_tokens.weight");
  const at::ScalarType dtype = emb == weights.end() ? at::kFloat : emb->second.scalar_type();
  save_safetensors(dir + "/model.safetensors", weights);

  LlamaConfig c = config;
  c.torch_dtype = dtype_string(dtype);
  write_file_atomic(dir + "/config.json", c.to_json());
  nlohmann::ordered_json gen = {{"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id()}};
  write_file_atomic(dir + "/generation_config.json", gen.dump(2) + "\n");

  if (tokenizer) {
    // SentencePiece as tokenizer.model (LlamaTokenizer); byte-level BPE as
    // tokenizer.json (PreTrainedTokenizerFast), which HF tokenizers runs.
    const bool sp = tokenizer->family() == TokenizerFamily::SentencePiece;
    if (sp) write_file_atomic(dir + "/tokenizer.model", serialize_sentencepiece_model(tokenizer->model()));
    else write_file_atomic(dir + "/tokenizer.json", write_tokenizer_json(tokenizer->bpe_model()));
    auto piece = [&](int32_t id) { return id >= 0 ? nlohmann::json(tokenizer->id_to_piece(id)) : nlohmann::json(); };
    nlohmann::ordered_json tc = {{"tokenizer_class", sp ? "LlamaTokenizer" : "PreTrainedTokenizerFast"},
                                 {"add_bos_token", tokenizer->adds_bos()},
                                 {"add_eos_token", false},
                                 {"bos_token", piece(tokenizer->bos_id())},
                                 {"eos_token", piece(tokenizer->eos_id())},
                                 {"unk_token", piece(tokenizer->unk_id())},
                                 {"model_max_length", c.max_position_embeddings}};
    write_file_atomic(dir + "/tokenizer_config.json", tc.dump(2) + "\n");
  }
}
}  // namespace

void save_hf_directory(const std::string& target, const LlamaConfig& config,
                       const std::map<std::string, at::Tensor>& tensors, const Tokenizer* tokenizer) {
  write_directory_atomic(target, "config.json", "an HF model directory",
                         [&](const std::string& dir) { write_hf_files(dir, config, tensors, tokenizer); });
}

Tokenizer load_tokenizer(const Checkpoint& ck, const std::string& tokenizer_path) {
  Tokenizer tok;
  if (!tokenizer_path.empty()) {
    tok = Tokenizer::from_file(tokenizer_path);
  } else if (ck.format == "hf") {
    const std::string sp = ck.path + "/tokenizer.model", hf = ck.path + "/tokenizer.json";
    if (is_file(sp)) tok = Tokenizer::from_file(sp);
    else if (is_file(hf)) tok = Tokenizer::from_file(hf);
    else throw FormatError(ck.path, "no tokenizer.model or tokenizer.json in the model directory: pass --tokenizer");
  } else if (ck.tokenizer) {
    tok = *ck.tokenizer;
  } else {
    auto slash = ck.path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : ck.path.substr(0, slash);
    const std::string v = std::to_string(ck.config.vocab_size);
    std::string found;
    for (const std::string& name : std::vector<std::string>{"tokenizer.model", "tok" + v + ".model", "tokenizer.bin", "tok" + v + ".bin"})
      if (is_file(dir + "/" + name)) {
        found = dir + "/" + name;
        break;
      }
    if (found.empty())
      throw FormatError(ck.path, "no tokenizer found next to the model (tokenizer.model, tok" + v +
                                     ".model, tokenizer.bin): pass --tokenizer");
    tok = Tokenizer::from_file(found);
  }
  if (tok.vocab_size() > ck.config.vocab_size)
    throw FormatError(tokenizer_path.empty() ? ck.path : tokenizer_path,
                      "the tokenizer has " + std::to_string(tok.vocab_size()) +
                          " pieces but the model's vocabulary has only " + std::to_string(ck.config.vocab_size));
  return tok;
}

}  // namespace flashback
