// Format readers -> Checkpoint (HF names, HF layout) -> LlamaForCausalLM.
#include "flashback/checkpoint.hpp"
#include "flashback/io/hub_cache.hpp"

#include <sys/stat.h>

#include <cstring>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>

#include "flashback/error.hpp"
#include "flashback/strings.hpp"
#include "flashback/formats/ggml_types.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/formats/llama2c.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/formats/safetensors.hpp"
#include "flashback/runtime.hpp"
#include "gguf_layout.hpp"

namespace flashback {

namespace internal {

namespace {
const std::map<std::string, std::string>& gguf_global_names() {
  static const std::map<std::string, std::string> m = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  return m;
}
const std::map<std::string, std::string>& gguf_layer_names() {
  static const std::map<std::string, std::string> m = {
      {"attn_norm.weight", "input_layernorm.weight"},   {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},     {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},       {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  return m;
}
// The layer index of "<prefix><digits>.<rest>", or npos.
size_t layer_dot(const std::string& n, size_t prefix) {
  const size_t dot = n.find('.', prefix);
  return dot != std::string::npos && dot > prefix && n.find_first_not_of("0123456789", prefix) == dot ? dot
                                                                                                      : std::string::npos;
}
}  // namespace

std::string gguf_to_hf_name(const std::string& n, const std::string& path) {
  if (auto it = gguf_global_names().find(n); it != gguf_global_names().end()) return it->second;
  if (starts_with(n, "blk.")) {
    if (size_t dot = layer_dot(n, 4); dot != std::string::npos) {
      auto it = gguf_layer_names().find(n.substr(dot + 1));
      if (it != gguf_layer_names().end()) return "model.layers." + n.substr(4, dot - 4) + "." + it->second;
    }
  }
  throw FormatError(path, "unexpected tensor '" + n + "' (not part of a Llama model)");
}

std::string hf_to_gguf_name(const std::string& n) {
  for (const auto& [gguf, hf] : gguf_global_names())
    if (hf == n) return gguf;
  const std::string prefix = "model.layers.";
  if (starts_with(n, prefix)) {
    if (size_t dot = layer_dot(n, prefix.size()); dot != std::string::npos) {
      const std::string rest = n.substr(dot + 1);
      for (const auto& [gguf, hf] : gguf_layer_names())
        if (hf == rest) return "blk." + n.substr(prefix.size(), dot - prefix.size()) + "." + gguf;
    }
  }
  throw InvalidArgument("tensor '" + n + "' has no GGUF name (not part of a Llama model)");
}

// Head by head, the pair (2i, 2i+1) lands at (i, i + D/2), and back.
at::Tensor meta_to_hf_rope(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.size(1), D = rows / heads;
  return w.view({heads, D / 2, 2, cols}).transpose(1, 2).reshape({rows, cols});
}

at::Tensor hf_to_meta_rope(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.size(1), D = rows / heads;
  return w.view({heads, 2, D / 2, cols}).transpose(1, 2).reshape({rows, cols});
}

}  // namespace internal

namespace {

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
std::string parent_dir(const std::string& p) {
  auto s = p.find_last_of('/');
  return s == std::string::npos ? "." : (s == 0 ? "/" : p.substr(0, s));
}

at::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::Bool: return at::kBool;
  }
  return at::kFloat;
}

// A tensor over the file's bytes (kept alive by the deleter); copied when the
// bytes are not aligned for the element type.
at::Tensor to_tensor(const RawTensor& r) {
  const auto st = to_scalar_type(r.dtype);
  const size_t esize = dtype_size(r.dtype);
  auto opts = at::TensorOptions().dtype(st);
  if (r.nbytes == 0) return at::empty(r.shape, opts);
  if (reinterpret_cast<uintptr_t>(r.data) % esize != 0) {
    at::Tensor t = at::empty(r.shape, opts);
    std::memcpy(t.data_ptr(), r.data, r.nbytes);
    return t;
  }
  std::shared_ptr<const void> owner = r.owner;
  return at::from_blob(const_cast<uint8_t*>(r.data), r.shape, [owner](void*) mutable { owner.reset(); }, opts);
}

void permute_qk(Checkpoint& ck) {
  const auto& c = ck.config;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    for (auto [name, heads] : {std::pair<const char*, int64_t>{"q_proj.weight", c.num_attention_heads},
                               std::pair<const char*, int64_t>{"k_proj.weight", c.num_key_value_heads}}) {
      auto it = ck.tensors.find(p + name);
      if (it == ck.tensors.end()) continue;  // reported as missing when the model loads
      if (it->second.dim() != 2 || it->second.size(0) != heads * c.head_dim)
        throw FormatError(ck.path, "tensor '" + p + name + "' has shape " + shape_str(it->second.sizes().vec()) +
                                       " but the header needs " + std::to_string(heads * c.head_dim) + " rows");
      it->second = internal::meta_to_hf_rope(it->second, heads);
    }
    for (auto [name, heads] : {std::pair<const char*, int64_t>{"q_proj.weight", c.num_attention_heads},
                               std::pair<const char*, int64_t>{"k_proj.weight", c.num_key_value_heads}}) {
      auto it = ck.quantized.find(p + name);
      if (it == ck.quantized.end()) continue;
      if (it->second.rows != heads * c.head_dim)
        throw FormatError(ck.path, "tensor '" + p + name + "' has " + std::to_string(it->second.rows) +
                                       " rows but the header needs " + std::to_string(heads * c.head_dim));
      // Whole rows of blocks move: the same permutation on the bytes.
      it->second.data = internal::meta_to_hf_rope(it->second.data, heads).contiguous();
    }
  }
}

// ---------------------------------------------------------------- HF directory
void read_hf_weights(Checkpoint& ck, const std::string& dir) {
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;
  if (is_file(index)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(index));
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(index, std::string("not valid JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw FormatError(index, "missing 'weight_map' object");
    std::set<std::string> seen;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) throw FormatError(index, "weight_map value for '" + it.key() + "' is not a string");
      std::string f = it->get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
        throw FormatError(index, "weight_map names an invalid shard file '" + f + "'");
      weight_map[it.key()] = f;
      if (seen.insert(f).second) files.push_back(f);
    }
  } else if (is_file(single)) {
    files.push_back("model.safetensors");
  } else if (is_file(dir + "/pytorch_model.bin") || is_file(dir + "/pytorch_model.bin.index.json")) {
    throw FormatError(dir, "only safetensors weights are supported (found pytorch_model.bin: convert it to safetensors)");
  } else {
    throw FormatError(dir, "no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& f : files) {
    const std::string path = dir + "/" + f;
    SafetensorsFile st = read_safetensors(path);
    for (const auto& r : st.tensors) {
      if (!weight_map.empty()) {
        auto w = weight_map.find(r.name);
        if (w == weight_map.end() || w->second != f)
          throw FormatError(path, "tensor '" + r.name + "' is not mapped to this shard by " + index);
      }
      if (!ck.tensors.emplace(r.name, to_tensor(r)).second)
        throw FormatError(path, "tensor '" + r.name + "' appears in more than one file");
    }
  }
  for (const auto& [name, f] : weight_map)
    if (!ck.tensors.count(name)) throw FormatError(dir + "/" + f, "tensor '" + name + "' listed in the index is missing");
}

Checkpoint read_hf_dir(const std::string& dir) {
  Checkpoint ck;
  ck.path = dir;
  ck.format = "hf";
  const std::string cfg = dir + "/config.json";
  if (!is_file(cfg)) throw FormatError(dir, "not a model directory (no config.json)");
  ck.config = LlamaConfig::from_file(cfg);
  read_hf_weights(ck, dir);
  return ck;
}

// ---------------------------------------------------------------- llama2.c
Checkpoint read_llama2c_checkpoint(const std::string& path) {
  Llama2cFile f = read_llama2c(path);
  Checkpoint ck;
  ck.path = path;
  ck.format = "llama2c";
  LlamaConfig& c = ck.config;
  c.vocab_size = f.vocab_size;
  c.hidden_size = f.dim;
  c.intermediate_size = f.hidden_dim;
  c.num_hidden_layers = f.n_layers;
  c.num_attention_heads = f.n_heads;
  c.num_key_value_heads = f.n_kv_heads;
  c.head_dim = f.dim / f.n_heads;
  c.max_position_embeddings = f.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = f.shared_classifier;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  c.validate(path);
  for (const auto& r : f.tensors) ck.tensors.emplace(r.name, to_tensor(r));
  permute_qk(ck);
  return ck;
}

// ---------------------------------------------------------------- GGUF
// A layer projection (not the embedding or the head) in a type kept quantized.
bool keep_in_blocks(const std::string& hf_name, const GgufTensorInfo& info) {
  return keeps_quantized(info.ggml_type) && info.shape.size() == 2 && hf_name.rfind("model.layers.", 0) == 0 &&
         ends_with(hf_name, "_proj.weight");
}

Checkpoint read_gguf_checkpoint(const std::string& path, bool keep_quantized) {
  GgufFile g = read_gguf(path);
  const std::string arch = g.get_string("general.architecture");
  if (arch != "llama") throw FormatError(path, "architecture '" + arch + "' is not supported (only llama)");
  Checkpoint ck;
  ck.path = path;
  ck.format = "gguf";
  bool quantized = false;
  std::optional<QuantizedMatrix> embed_blocks;
  for (const auto& info : g.infos) {
    std::string name = internal::gguf_to_hf_name(info.name, path);
    at::Tensor t;
    const bool head = name == "lm_head.weight" || name == "model.embed_tokens.weight";
    if (keep_quantized && (keep_in_blocks(name, info) || (head && keeps_quantized(info.ggml_type) && info.shape.size() == 2))) {
      QuantizedMatrix m;
      m.type = info.ggml_type;
      m.rows = info.shape[0];
      m.cols = info.shape[1];
      if (m.cols % 32 != 0 || uint64_t(m.rows * m.row_bytes()) != info.nbytes)
        throw FormatError(path, "tensor '" + info.name + "': " + std::to_string(info.nbytes) + " bytes do not hold " +
                                    std::to_string(m.rows) + " rows of " + std::to_string(m.cols) + " " + m.type_name() +
                                    " values");
      m.data = at::empty({m.rows, m.row_bytes()}, at::kByte);
      std::memcpy(m.data.data_ptr<uint8_t>(), g.tensor_data(info), info.nbytes);
      quantized = true;
      if (!head) {
        if (!ck.quantized.emplace(name, std::move(m)).second) throw FormatError(path, "duplicate tensor '" + info.name + "'");
        continue;
      }
      // The head's blocks: the file's output.weight; the embedding's only if the file has none (tied),
      // known once every tensor is read. The dense copy follows.
      if (name == "lm_head.weight")
        ck.quantized.emplace(name, std::move(m));
      else
        embed_blocks = std::move(m);
    }
    if (ggml_type_dequantizable(info.ggml_type)) {
      // Quantized: dequantized to fp32 here; load_model casts to the dtype asked for.
      t = at::empty(info.shape, at::kFloat);
      try {
        dequantize(info.ggml_type, g.tensor_data(info), info.nbytes, t.numel(), t.data_ptr<float>(),
                   "tensor '" + info.name + "'");
      } catch (const InvalidArgument& e) {
        throw FormatError(path, e.what());
      }
      quantized = true;
    } else {
      t = to_tensor(g.tensor(info));
    }
    if (!ck.tensors.emplace(name, t).second) throw FormatError(path, "duplicate tensor '" + info.name + "'");
  }
  LlamaConfig& c = ck.config;
  c.hidden_size = g.get_int("llama.embedding_length");
  c.intermediate_size = g.get_int("llama.feed_forward_length");
  c.num_hidden_layers = g.get_int("llama.block_count");
  c.num_attention_heads = g.get_int("llama.attention.head_count");
  c.num_key_value_heads = g.get_int("llama.attention.head_count_kv", c.num_attention_heads);
  if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0)
    throw FormatError(path, "llama.embedding_length is not a multiple of llama.attention.head_count");
  c.head_dim = c.hidden_size / c.num_attention_heads;
  if (g.get_int("llama.rope.dimension_count", c.head_dim) != c.head_dim)
    throw FormatError(path, "partial rotary embeddings (llama.rope.dimension_count != head size) are not supported");
  c.max_position_embeddings = g.get_int("llama.context_length", 2048);
  c.rms_norm_eps = g.get_float("llama.attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_theta = g.get_float("llama.rope.freq_base", 10000.0);
  if (const GgufValue* s = g.find("llama.rope.scaling.type"); s && s->s != "none") {
    if (s->s != "linear") throw FormatError(path, "rope scaling '" + s->s + "' is not supported (only linear)");
    c.rope_type = "linear";
    c.rope_factor = g.get_float("llama.rope.scaling.factor", 1.0);
  }
  auto emb = ck.tensors.find("model.embed_tokens.weight");
  if (emb == ck.tensors.end()) throw FormatError(path, "missing tensor 'token_embd.weight'");
  c.vocab_size = g.get_int("llama.vocab_size", emb->second.size(0));
  c.tie_word_embeddings = !ck.tensors.count("lm_head.weight");
  if (c.tie_word_embeddings && embed_blocks) ck.quantized.emplace("lm_head.weight", std::move(*embed_blocks));
  if (g.find("tokenizer.ggml.model")) {
    ck.tokenizer = gguf_tokenizer(g);
    c.bos_token_id = ck.tokenizer->bos_id() >= 0 ? ck.tokenizer->bos_id() : 1;
    c.eos_token_ids = {ck.tokenizer->eos_id() >= 0 ? ck.tokenizer->eos_id() : 2};
  }
  auto q = ck.tensors.find("model.layers.0.self_attn.q_proj.weight");
  at::ScalarType wt = q != ck.tensors.end() ? q->second.scalar_type() : emb->second.scalar_type();
  c.torch_dtype = quantized ? "float32" : wt == at::kHalf ? "float16" : wt == at::kBFloat16 ? "bfloat16" : "float32";
  c.validate(path);
  permute_qk(ck);
  return ck;
}

}  // namespace

// ---------------------------------------------------------------- public
Checkpoint read_checkpoint(const std::string& given, bool keep_quantized) {
  const std::string path = resolve_model_path(given);  // a hub cache folder or repo id -> its snapshot
  if (is_dir(path)) return read_hf_dir(path);
  if (!is_file(path)) throw FormatError(path, "no such file or directory");
  char magic[4] = {};
  {
    auto f = MappedFile::open(path);
    if (f->size() >= 4) std::memcpy(magic, f->data(), 4);
  }
  if (std::memcmp(magic, "GGUF", 4) == 0) return read_gguf_checkpoint(path, keep_quantized);
  if (ends_with(path, ".safetensors")) {
    // A lone safetensors file: its config.json must sit beside it.
    return read_hf_dir(parent_dir(path));
  }
  return read_llama2c_checkpoint(path);
}

at::ScalarType resolve_dtype(const LlamaConfig& config, const LoadOptions& options) {
  if (options.dtype) return *options.dtype;
  at::ScalarType t = config.torch_dtype == "bfloat16" ? at::kBFloat16
                     : config.torch_dtype == "float16" ? at::kHalf
                                                       : at::kFloat;
  if (t == at::kHalf && !supports_dtype(t, options.device)) t = at::kFloat;
  return t;
}

void load_weights(LlamaForCausalLMImpl& model, const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  at::NoGradGuard no_grad;
  auto params = model.named_parameters(/*recurse=*/true);
  const std::vector<std::string> q = model.quantized_weights();
  const std::set<std::string> kept(q.begin(), q.end());
  std::set<std::string> used;
  for (auto& p : params) {
    if (kept.count(p.key())) {  // in ggml blocks already (load_model); an untied head's dense copy goes unused
      used.insert(p.key());
      continue;
    }
    auto it = tensors.find(p.key());
    if (it == tensors.end()) throw FormatError(source, "missing tensor '" + p.key() + "'");
    const at::Tensor& src = it->second;
    if (!src.is_floating_point())
      throw FormatError(source, "tensor '" + p.key() + "' has non-floating dtype " + std::string(c10::toString(src.scalar_type())));
    if (src.sizes() != p.value().sizes())
      throw FormatError(source, "tensor '" + p.key() + "' has shape " + shape_str(src.sizes().vec()) +
                                    " but the config needs " + shape_str(p.value().sizes().vec()));
    p.value().copy_(src);
    used.insert(p.key());
  }
  for (const auto& [name, t] : tensors) {
    if (used.count(name)) continue;
    if (ends_with(name, ".rotary_emb.inv_freq")) continue;  // older HF exports save the RoPE table
    if (name == "lm_head.weight" && model.config().tie_word_embeddings) continue;  // tied: the embedding wins
    throw FormatError(source, "unexpected tensor '" + name + "' (not part of a Llama model with this config)");
  }
}

LlamaForCausalLM load_model(const Checkpoint& ck, const LoadOptions& options) {
  ensure_default_threads();
  // The config decides what the model allocates. One that promises far more parameters than the
  // checkpoint holds (a config.json claiming a 100 GB model beside a small file) is refused before
  // allocating them; a near miss is built and compared tensor by tensor (load_weights names it).
  int64_t held = 0;
  for (const auto& [name, t] : ck.tensors) held += t.numel();
  for (const auto& [name, m] : ck.quantized)
    if (name != "lm_head.weight") held += m.rows * m.cols;  // the head's blocks copy a dense tensor
  const int64_t promised = ck.config.num_parameters();
  if (promised > 2 * held + (int64_t(1) << 20))
    throw FormatError(ck.path, "the config implies " + std::to_string(promised) + " parameters but the checkpoint holds " +
                                   std::to_string(held) + ": not this model's weights");
  LlamaForCausalLMOptions mo;
  mo.dtype = resolve_dtype(ck.config, options);
  mo.device = options.device;
  LlamaForCausalLM model(ck.config, mo);
  if (!ck.quantized.empty()) {
    if (!options.device.is_cpu())
      throw InvalidArgument(ck.path + ": quantized weights run on the CPU only (load without keep_quantized for " +
                            options.device.str() + ")");
    // The kept matrices replace their projections' dense weights before the rest loads.
    std::map<std::string, Linear> linears;
    for (auto& m : model->named_modules("", /*include_self=*/false))
      if (auto l = std::dynamic_pointer_cast<LinearImpl>(m.value())) linears.emplace(m.key() + ".weight", Linear(l));
    for (const auto& [name, q] : ck.quantized) {
      if (name == "lm_head.weight") {
        // The head's blocks, while they hold the whole vocabulary (marking tokens grow it).
        const LlamaConfig& c = ck.config;
        if (q.rows != c.vocab_size || q.cols != c.hidden_size) continue;
        if (c.tie_word_embeddings)
          model->model->embed_tokens->head_quantized = std::make_shared<const QuantizedMatrix>(q);
        else
          model->lm_head->keep_quantized(q);
        continue;
      }
      auto it = linears.find(name);
      if (it == linears.end()) throw FormatError(ck.path, "unexpected tensor '" + name + "' (not part of a Llama model with this config)");
      LinearImpl& l = *it->second;
      if (q.rows != l.out_features || q.cols != l.in_features)
        throw FormatError(ck.path, "tensor '" + name + "' has shape [" + std::to_string(q.rows) + ", " +
                                       std::to_string(q.cols) + "] but the config needs [" + std::to_string(l.out_features) +
                                       ", " + std::to_string(l.in_features) + "]");
      l.keep_quantized(q);
    }
  }
  load_weights(*model, ck.tensors, ck.path);
  return model;
}

LlamaForCausalLM load_model(const std::string& path, const LoadOptions& options) {
  return load_model(read_checkpoint(path, options.keep_quantized), options);
}

std::map<std::string, at::Tensor> load_safetensors(const std::string& path) {
  std::map<std::string, at::Tensor> out;
  for (const auto& r : read_safetensors(path).tensors) out.emplace(r.name, to_tensor(r));
  return out;
}

std::map<std::string, at::Tensor> model_tensors(LlamaForCausalLMImpl& model) {
  if (model.keeps_quantized())
    throw InvalidArgument("the model keeps quantized weights (keep_quantized): load it without them to save, "
                          "convert or merge");
  std::map<std::string, at::Tensor> out;
  for (auto& p : model.named_parameters(true)) out.emplace(p.key(), p.value());
  return out;
}

}  // namespace flashback
