#include "flashback/formats/llama2c.hpp"

#include <cstdint>
#include <cstring>
#include <functional>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"

namespace flashback {

namespace {

constexpr uint32_t kMagicV1 = 0x616b3432;  // "ak42"

// Hands out consecutive fp32 spans of the data; the caller checked the total size.
struct Slicer {
  const uint8_t* p;
  std::shared_ptr<const void> owner;
  std::vector<RawTensor>* out;
  void take(const std::string& name, std::vector<int64_t> shape) {
    RawTensor t;
    t.name = name;
    t.dtype = DType::F32;
    t.shape = std::move(shape);
    t.nbytes = static_cast<size_t>(t.numel()) * 4;
    t.data = p;
    t.owner = owner;
    p += t.nbytes;
    out->push_back(std::move(t));
  }
  void skip(uint64_t floats) { p += floats * 4; }
};

std::string layer(int i, const char* rest) { return "model.layers." + std::to_string(i) + "." + rest; }

}  // namespace

Llama2cFile read_llama2c(const std::string& path) {
  auto file = MappedFile::open(path);
  Llama2cFile f;
  f.path = path;
  const uint8_t* base = file->data();
  const uint64_t size = file->size();
  uint64_t header_bytes = 28;
  int32_t h[7];
  uint32_t magic = 0;
  if (size >= 4) std::memcpy(&magic, base, 4);
  if (magic == kMagicV1) {
    if (size < 256) throw FormatError(path, "truncated llama2.c v1 header");
    int32_t version;
    std::memcpy(&version, base + 4, 4);
    if (version != 1)
      throw FormatError(path, "llama2.c format version " + std::to_string(version) +
                                  " is not supported (only the fp32 versions 0 and 1; version 2 is int8-quantized)");
    std::memcpy(h, base + 8, sizeof(h));
    f.version = 1;
    f.shared_classifier = base[36] != 0;
    header_bytes = 256;
  } else {
    if (size < 28) throw FormatError(path, "too small to be a llama2.c checkpoint (" + std::to_string(size) + " bytes)");
    std::memcpy(h, base, sizeof(h));
    f.shared_classifier = h[5] > 0;
    // -vocab_size marks an unshared classifier; INT32_MIN has no negation (0 fails the range check)
    h[5] = h[5] == INT32_MIN ? 0 : h[5] < 0 ? -h[5] : h[5];
  }
  f.dim = h[0], f.hidden_dim = h[1], f.n_layers = h[2], f.n_heads = h[3], f.n_kv_heads = h[4];
  f.vocab_size = h[5], f.seq_len = h[6];
  const auto bad = [&](const std::string& what) {
    throw FormatError(path, "invalid llama2.c header (dim=" + std::to_string(f.dim) + ", hidden_dim=" +
                                std::to_string(f.hidden_dim) + ", n_layers=" + std::to_string(f.n_layers) +
                                ", n_heads=" + std::to_string(f.n_heads) + ", n_kv_heads=" + std::to_string(f.n_kv_heads) +
                                ", vocab_size=" + std::to_string(f.vocab_size) + ", seq_len=" + std::to_string(f.seq_len) +
                                "): " + what);
  };
  constexpr int kMax = 1 << 20;
  for (int v : h)
    if (v <= 0 || v > kMax) bad("every field must be in 1..2^20");
  if (f.dim % f.n_heads != 0) bad("dim is not a multiple of n_heads");
  if (f.n_heads % f.n_kv_heads != 0) bad("n_heads is not a multiple of n_kv_heads");
  const int64_t hd = f.dim / f.n_heads;
  if (hd % 2 != 0) bad("head size is odd");
  const int64_t D = f.dim, F = f.hidden_dim, L = f.n_layers, V = f.vocab_size, KV = f.n_kv_heads * hd;

  // Expected fp32 count: embeddings, per-layer weights, final norm, and for v0
  // the two RoPE tables; then the classifier when unshared.
  uint64_t per_layer = 2 * D + D * D + 2 * D * KV + D * D + 3 * D * F;
  uint64_t floats = V * D + L * per_layer + D + (f.version == 0 ? uint64_t(f.seq_len) * hd : 0) +
                    (f.shared_classifier ? 0 : V * D);
  // floats can reach ~2^63 (fields up to 2^20): compare without multiplying, which could wrap.
  const uint64_t data_bytes = size - header_bytes;
  if (floats > data_bytes / 4 || data_bytes % 4 != 0 || floats != data_bytes / 4)
    bad("the file is " + std::to_string(size) + " bytes but the header implies " + std::to_string(header_bytes) +
        " + 4 x " + std::to_string(floats) + (floats > data_bytes / 4 ? " (truncated?)" : " (trailing bytes?)"));

  Slicer s{base + header_bytes, file, &f.tensors};
  auto per_layer_weights = [&](const char* name, std::vector<int64_t> shape) {
    for (int i = 0; i < L; ++i) s.take(layer(i, name), shape);
  };
  if (f.version == 0) {
    s.take("model.embed_tokens.weight", {V, D});
    per_layer_weights("input_layernorm.weight", {D});
    per_layer_weights("self_attn.q_proj.weight", {D, D});
    per_layer_weights("self_attn.k_proj.weight", {KV, D});
    per_layer_weights("self_attn.v_proj.weight", {KV, D});
    per_layer_weights("self_attn.o_proj.weight", {D, D});
    per_layer_weights("post_attention_layernorm.weight", {D});
    per_layer_weights("mlp.gate_proj.weight", {F, D});
    per_layer_weights("mlp.down_proj.weight", {D, F});
    per_layer_weights("mlp.up_proj.weight", {F, D});
    s.take("model.norm.weight", {D});
    s.skip(uint64_t(f.seq_len) * hd);  // freq_cis_real, freq_cis_imag: recomputed
  } else {
    per_layer_weights("input_layernorm.weight", {D});
    per_layer_weights("post_attention_layernorm.weight", {D});
    s.take("model.norm.weight", {D});
    s.take("model.embed_tokens.weight", {V, D});
    per_layer_weights("self_attn.q_proj.weight", {D, D});
    per_layer_weights("self_attn.k_proj.weight", {KV, D});
    per_layer_weights("self_attn.v_proj.weight", {KV, D});
    per_layer_weights("self_attn.o_proj.weight", {D, D});
    per_layer_weights("mlp.gate_proj.weight", {F, D});
    per_layer_weights("mlp.down_proj.weight", {D, F});
    per_layer_weights("mlp.up_proj.weight", {F, D});
  }
  if (!f.shared_classifier) s.take("lm_head.weight", {V, D});
  return f;
}

}  // namespace flashback
