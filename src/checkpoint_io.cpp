// Writing HF model directories and GGUF files, and finding the tokenizer that goes with a model.
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/strings.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/formats/safetensors.hpp"
#include "flashback/io/atomic_dir.hpp"
#include "flashback/io/atomic_file.hpp"
#include "gguf_layout.hpp"

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

namespace {
// tokenizer.ggml.*: llama.cpp's names for the vocabulary, padded to the model's rows as its converter pads
// ("[PAD<id>]", unused), since llama.cpp takes the vocabulary's size for the embedding's.
void gguf_tokenizer_metadata(std::vector<std::pair<std::string, GgufValue>>& kv, const Tokenizer& tok, int64_t rows) {
  if (tok.vocab_size() > rows)
    throw InvalidArgument("the tokenizer has " + std::to_string(tok.vocab_size()) +
                          " pieces but the model's vocabulary has only " + std::to_string(rows));
  std::vector<GgufValue> tokens, types;
  for (int64_t id = 0; id < rows; ++id) {
    const bool real = id < tok.vocab_size();
    tokens.push_back(gguf_string(real ? tok.id_to_piece(int32_t(id)) : "[PAD" + std::to_string(id) + "]"));
    types.push_back(gguf_i32(static_cast<int32_t>(real ? tok.piece_type(int32_t(id)) : PieceType::Unused)));
  }
  const bool sp = tok.family() == TokenizerFamily::SentencePiece;
  kv.emplace_back("tokenizer.ggml.model", gguf_string(sp ? "llama" : "gpt2"));
  kv.emplace_back("tokenizer.ggml.tokens", gguf_array(GgufValue::String, std::move(tokens)));
  kv.emplace_back("tokenizer.ggml.token_type", gguf_array(GgufValue::I32, std::move(types)));
  if (sp) {
    std::vector<GgufValue> scores;
    for (int64_t id = 0; id < rows; ++id)
      scores.push_back(gguf_f32(id < tok.vocab_size() ? tok.model().pieces[size_t(id)].score : -1e9f));
    kv.emplace_back("tokenizer.ggml.scores", gguf_array(GgufValue::F32, std::move(scores)));
    kv.emplace_back("tokenizer.ggml.add_space_prefix", gguf_bool(tok.model().add_dummy_prefix));
  } else {
    std::vector<GgufValue> merges;
    for (const auto& [a, b] : tok.bpe_model().merges) merges.push_back(gguf_string(a + " " + b));
    kv.emplace_back("tokenizer.ggml.pre", gguf_string(tok.bpe_model().pre));
    kv.emplace_back("tokenizer.ggml.merges", gguf_array(GgufValue::String, std::move(merges)));
  }
  for (auto [key, id] : {std::pair<const char*, int32_t>{"tokenizer.ggml.bos_token_id", tok.bos_id()},
                         std::pair<const char*, int32_t>{"tokenizer.ggml.eos_token_id", tok.eos_id()},
                         std::pair<const char*, int32_t>{"tokenizer.ggml.unknown_token_id", tok.unk_id()},
                         std::pair<const char*, int32_t>{"tokenizer.ggml.padding_token_id", tok.pad_id()}})
    if (id >= 0) kv.emplace_back(key, gguf_u32(static_cast<uint32_t>(id)));
  kv.emplace_back("tokenizer.ggml.add_bos_token", gguf_bool(tok.adds_bos()));
  kv.emplace_back("tokenizer.ggml.add_eos_token", gguf_bool(false));
}
}  // namespace

void save_gguf(const std::string& path, const LlamaConfig& c, const std::map<std::string, at::Tensor>& tensors,
               const Tokenizer& tokenizer, at::ScalarType dtype) {
  uint32_t ggml_type = 0, file_type = 0;  // llama.cpp's LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_BF16
  switch (dtype) {
    case at::kFloat: ggml_type = 0; file_type = 0; break;
    case at::kHalf: ggml_type = 1; file_type = 1; break;
    case at::kBFloat16: ggml_type = 30; file_type = 32; break;
    default: throw InvalidArgument(std::string("GGUF export: dtype ") + c10::toString(dtype) + " (float32, float16 or bfloat16)");
  }
  c.validate(path);
  if (c.head_dim * c.num_attention_heads != c.hidden_size)
    throw InvalidArgument("GGUF export: head_dim " + std::to_string(c.head_dim) + " is not hidden_size / num_attention_heads");
  auto u32 = [](int64_t v) { return gguf_u32(static_cast<uint32_t>(v)); };
  std::vector<std::pair<std::string, GgufValue>> kv = {
      {"general.architecture", gguf_string("llama")},
      {"general.file_type", gguf_u32(file_type)},
      {"llama.vocab_size", u32(c.vocab_size)},
      {"llama.context_length", u32(c.max_position_embeddings)},
      {"llama.embedding_length", u32(c.hidden_size)},
      {"llama.block_count", u32(c.num_hidden_layers)},
      {"llama.feed_forward_length", u32(c.intermediate_size)},
      {"llama.rope.dimension_count", u32(c.head_dim)},
      {"llama.attention.head_count", u32(c.num_attention_heads)},
      {"llama.attention.head_count_kv", u32(c.num_key_value_heads)},
      {"llama.attention.layer_norm_rms_epsilon", gguf_f32(static_cast<float>(c.rms_norm_eps))},
      {"llama.rope.freq_base", gguf_f32(static_cast<float>(c.rope_theta))},
  };
  if (c.rope_type == "linear") {
    kv.emplace_back("llama.rope.scaling.type", gguf_string("linear"));
    kv.emplace_back("llama.rope.scaling.factor", gguf_f32(static_cast<float>(c.rope_factor)));
  }
  gguf_tokenizer_metadata(kv, tokenizer, c.vocab_size);

  // Contiguous CPU copies in the file's types; `keep` holds them until written.
  std::vector<at::Tensor> keep;
  std::vector<GgufTensorOut> out;
  for (const auto& [name, t] : tensors) {
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;
    if (ends_with(name, ".rotary_emb.inv_freq")) continue;
    at::Tensor w = t.detach().to(at::kCPU);
    if (ends_with(name, "self_attn.q_proj.weight")) w = internal::hf_to_meta_rope(w, c.num_attention_heads);
    if (ends_with(name, "self_attn.k_proj.weight")) w = internal::hf_to_meta_rope(w, c.num_key_value_heads);
    const bool vector = w.dim() == 1;  // norms: F32, as llama.cpp's converter keeps them
    w = w.to(vector ? at::kFloat : dtype).contiguous();
    keep.push_back(w);
    GgufTensorOut o;
    o.name = internal::hf_to_gguf_name(name);
    o.ggml_type = vector ? 0 : ggml_type;
    o.shape = w.sizes().vec();
    o.data = w.data_ptr();
    o.nbytes = w.nbytes();
    out.push_back(std::move(o));
  }
  write_gguf(path, kv, out);
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
