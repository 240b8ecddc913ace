// The Llama-2 decoder: each function reads top to bottom like the math.
#include "flashback/llama.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "flashback/error.hpp"
#include "flashback/strings.hpp"
#include "flashback/kernels.hpp"

namespace flashback {

// ---------------------------------------------------------------- RMSNorm
RMSNormImpl::RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options) : eps(eps) {
  weight = register_parameter("weight", at::ones({dim}, options));  // [C]
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  if (kernels::rms_norm_usable(x, weight)) return kernels::rms_norm(x, weight, eps);
  at::Tensor xf = x.to(at::kFloat);                                      // [..., C]
  at::Tensor inv_rms = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);  // [..., 1]
  return weight * (xf * inv_rms).to(x.scalar_type());                   // [..., C]
}

// ---------------------------------------------------------------- RoPE
RotaryTables make_rotary_tables(const LlamaConfig& c, const at::Device& device) {
  // inv_freq_i = theta^(-2i/D), i < D/2; angle(p, i) = (p / factor) * inv_freq_i, in fp64.
  const int64_t D = c.head_dim;
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor inv_freq = at::pow(c.rope_theta, -at::arange(0, D, 2, f64) / double(D));           // [D/2]
  at::Tensor pos = at::arange(c.max_position_embeddings, f64) / c.rope_factor;                  // [P]
  at::Tensor angle = at::outer(pos, inv_freq);                                                  // [P, D/2]
  at::Tensor emb = at::cat({angle, angle}, -1);                                                 // [P, D]
  return {emb.cos().to(at::kFloat).to(device), emb.sin().to(at::kFloat).to(device)};
}

namespace {
// [x1, x2] -> [-x2, x1] over the last dim.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
}  // namespace

std::pair<at::Tensor, at::Tensor> apply_rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                               const at::Tensor& sin) {
  if (kernels::rotary_usable(q, cos, sin) && kernels::rotary_usable(k, cos, sin))
    return {kernels::rotary(q, cos, sin), kernels::rotary(k, cos, sin)};
  // cos/sin: [T, D] -> broadcast over [B, H]; [B, T, D] -> [B, 1, T, D].
  at::Tensor c = (cos.dim() == 3 ? cos.unsqueeze(1) : cos).to(q.scalar_type());
  at::Tensor s = (sin.dim() == 3 ? sin.unsqueeze(1) : sin).to(q.scalar_type());
  return {q * c + rotate_half(q) * s, k * c + rotate_half(k) * s};  // [B, H, T, D], [B, Hkv, T, D]
}

// ---------------------------------------------------------------- attention
namespace {
// Rows of queries per block: at most kQueryBlock, and few enough that the
// scores of one block, [B, Hkv, G*Tb, S] in fp32, stay under kScoreBlockBytes
// (a long prefill never holds a T x S score matrix per head). Block i only
// scores the keys it can see, so causal prefill skips about half of the
// masked work (T = 512: 56% of the full square).
constexpr int64_t kScoreBlockBytes = int64_t(32) << 20;
constexpr int64_t kQueryBlock = 64;

// softmax(q k^T / sqrt(D) + causal mask) v for the queries of slots
// [start, start + T). q: [B, H, T, D], k, v: [B, Hkv, S, D] -> [B, H, T, D].
at::Tensor attention_block(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), G = H / Hkv;
  // Heads h = g_kv * G + g share KV head g_kv: fold the G query heads of a
  // group into the row dimension instead of repeating K and V.
  at::Tensor qg = q.reshape({B, Hkv, G * T, D}) * (1.0 / std::sqrt(double(D)));  // [B, Hkv, G*T, D]
  at::Tensor scores = at::matmul(qg, k.transpose(-1, -2));                         // [B, Hkv, G*T, S]
  scores = scores.to(at::kFloat).view({B, Hkv, G, T, S});                          // [B, Hkv, G, T, S]
  if (T > 1 || start + T < S) {
    // Query at slot start + i may see key slots j <= start + i.
    auto idx = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor qslot = at::arange(start, start + T, idx).unsqueeze(1);  // [T, 1]
    at::Tensor kslot = at::arange(S, idx).unsqueeze(0);                 // [1, S]
    scores.masked_fill_(kslot > qslot, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());  // [B, Hkv, G, T, S]
  at::Tensor out = at::matmul(probs.view({B, Hkv, G * T, S}), v);  // [B, Hkv, G*T, D]
  return out.view({B, H, T, D});                                   // [B, H, T, D]
}
}  // namespace

at::Tensor grouped_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  const int64_t S = k.size(2);
  // One new token (decode): the hand-written kernel reads each cached key and
  // value once, in its storage dtype.
  if (T == 1 && start + 1 == S && kernels::decode_attention_usable(q, k, v)) return kernels::decode_attention(q, k, v);
  // LibTorch 1.13's CPU half/bf16 matmuls are far slower than fp32: compute in fp32.
  if (q.is_cpu() && q.scalar_type() != at::kFloat)
    return grouped_causal_attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), start).to(q.scalar_type());
  const int64_t rows =
      std::clamp<int64_t>(kScoreBlockBytes / (B * H * S * int64_t(sizeof(float))), 1, kQueryBlock);
  if (T <= rows) return attention_block(q, k, v, start);
  // Long prefill: query blocks of `rows` slots; block i sees keys [0, start + t0 + Tb).
  std::vector<at::Tensor> outs;
  for (int64_t t0 = 0; t0 < T; t0 += rows) {
    const int64_t tb = std::min(rows, T - t0), s = start + t0 + tb;
    outs.push_back(attention_block(q.narrow(2, t0, tb), k.narrow(2, 0, s), v.narrow(2, 0, s), start + t0));
  }
  return at::cat(outs, 2);  // [B, H, T, D]
}

AttentionImpl::AttentionImpl(const LlamaConfig& c, const at::TensorOptions& options)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.q_dim(), options));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.kv_dim(), options));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.kv_dim(), options));
  o_proj = register_module("o_proj", Linear(c.q_dim(), c.hidden_size, options));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                  KVCacheStore* cache, int64_t layer) {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor q = q_proj->forward(x).view({B, T, num_heads, head_dim}).transpose(1, 2);     // [B, H, T, D]
  at::Tensor k = k_proj->forward(x).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);  // [B, Hkv, T, D]
  at::Tensor v = v_proj->forward(x).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);  // [B, Hkv, T, D]
  std::tie(q, k) = apply_rotary(q, k, cos, sin);
  int64_t start = 0;
  if (cache) {
    start = cache->size();
    std::tie(k, v) = cache->write(layer, k, v);  // [B, Hkv, start + T, D] views of the cache
  }
  at::Tensor y = grouped_causal_attention(q, k, v, start);                  // [B, H, T, D]
  y = y.transpose(1, 2).reshape({B, T, num_heads * head_dim});               // [B, T, H*D]
  return o_proj->forward(y);                                                 // [B, T, C]
}

// ---------------------------------------------------------------- MLP
MLPImpl::MLPImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  gate_proj = register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, options));
  up_proj = register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, options));
  down_proj = register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x) {
  at::Tensor gate = gate_proj->forward(x), up = up_proj->forward(x);  // [B, T, F]
  // One row (decode): the fused gate saves two small ops; longer inputs keep
  // LibTorch's vectorised silu.
  if (gate.numel() == gate.size(-1) && kernels::silu_mul_usable(gate, up))
    return down_proj->forward(kernels::silu_mul(gate, up));  // [B, T, C]
  return down_proj->forward(at::silu(gate) * up);                                                 // [B, T, C]
}

// ---------------------------------------------------------------- block
DecoderLayerImpl::DecoderLayerImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  self_attn = register_module("self_attn", Attention(c, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  mlp = register_module("mlp", MLP(c, options));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                     KVCacheStore* cache, int64_t layer) {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, cache, layer);  // [B, T, C]
  return h + mlp->forward(post_attention_layernorm->forward(h));                              // [B, T, C]
}

// ---------------------------------------------------------------- decoder
LlamaDecoderImpl::LlamaDecoderImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens", std::make_shared<torch::nn::Module>("Embedding"));
  embed_tokens_weight = embed_tokens->register_parameter("weight", at::empty({c.vocab_size, c.hidden_size}, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layer_list.emplace_back(c, options);
    layers->push_back(layer_list.back());
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
}

// ---------------------------------------------------------------- model
namespace {
// LibTorch 1.13 has no fp16 matmul on CPU (later versions do): ask it once.
bool half_matmul_works(const at::Device& device) {
  if (!device.is_cpu()) return true;
  static const bool ok = [] {
    try {
      at::Tensor a = at::ones({2, 2}, at::kHalf);
      (void)at::matmul(a, a);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }();
  return ok;
}

void check_dtype(at::ScalarType dtype, const at::Device& device) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    throw InvalidArgument("model dtype must be float32, bfloat16 or float16");
  if (dtype == at::kHalf && !half_matmul_works(device))
    throw InvalidArgument("float16 compute is not supported on this device by this LibTorch; use float32 or bfloat16");
}
}  // namespace

bool supports_dtype(at::ScalarType dtype, const at::Device& device) {
  try {
    check_dtype(dtype, device);
    return true;
  } catch (const InvalidArgument&) {
    return false;
  }
}

LlamaModelImpl::LlamaModelImpl(LlamaConfig config, LlamaModelOptions options)
    : config_(std::move(config)), options_(options) {
  config_.validate("LlamaConfig");
  check_dtype(options_.dtype, options_.device);
  auto topts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  model = register_module("model", LlamaDecoder(config_, topts));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(config_.hidden_size, config_.vocab_size, topts));
  rope_ = make_rotary_tables(config_, options_.device);
}

at::Tensor LlamaModelImpl::output_weight() const {
  return config_.tie_word_embeddings ? model->embed_tokens_weight : lm_head->weight;
}

void LlamaModelImpl::check_inputs(const at::Tensor& tokens, const at::Tensor& positions,
                                  const KVCacheStore* cache) const {
  if (!tokens.defined() || tokens.dim() != 2 || tokens.size(1) == 0)
    throw InvalidArgument("tokens must be a non-empty [B, T] tensor");
  if (tokens.scalar_type() != at::kLong) throw InvalidArgument("tokens must be int64");
  auto [lo, hi] = at::aminmax(tokens);
  const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
  if (mn < 0 || mx >= config_.vocab_size)
    throw InvalidArgument("token id " + std::to_string(mn < 0 ? mn : mx) + " is outside the vocabulary [0, " +
                          std::to_string(config_.vocab_size) + ")");
  const int64_t T = tokens.size(1);
  if (positions.defined()) {
    if (positions.scalar_type() != at::kLong) throw InvalidArgument("positions must be int64");
    bool shape_ok = (positions.dim() == 1 && positions.size(0) == T) ||
                    (positions.dim() == 2 && positions.size(0) == tokens.size(0) && positions.size(1) == T);
    if (!shape_ok) throw InvalidArgument("positions must be [T] or [B, T] matching tokens");
    auto [plo, phi] = at::aminmax(positions);
    const int64_t pmn = plo.item<int64_t>(), pmx = phi.item<int64_t>();
    if (pmn < 0 || pmx >= config_.max_position_embeddings)
      throw InvalidArgument("position " + std::to_string(pmn < 0 ? pmn : pmx) + " is outside [0, " +
                            std::to_string(config_.max_position_embeddings) + ") (max_position_embeddings)");
  } else {
    const int64_t start = cache ? cache->size() : 0;
    if (start + T > config_.max_position_embeddings)
      throw InvalidArgument("sequence of " + std::to_string(start + T) + " positions exceeds max_position_embeddings (" +
                            std::to_string(config_.max_position_embeddings) + ")");
  }
  if (cache) {
    if (!cache->defined() || cache->num_layers() != config_.num_hidden_layers ||
        cache->num_kv_heads() != config_.num_key_value_heads || cache->head_dim() != config_.head_dim)
      throw InvalidArgument("the KV cache was not made for this model's config");
    if (cache->batch() != tokens.size(0))
      throw InvalidArgument("the KV cache holds batch " + std::to_string(cache->batch()) + " but tokens have batch " +
                            std::to_string(tokens.size(0)));
    cache->check_room(T);
  }
}

at::Tensor LlamaModelImpl::hidden_states(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore* cache) {
  check_inputs(tokens, positions, cache);
  const int64_t T = tokens.size(1);
  const int64_t chunk = options_.prefill_chunk;
  if (cache && chunk > 0 && T > chunk) {
    std::vector<at::Tensor> outs;
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
      const int64_t n = std::min(chunk, T - t0);
      outs.push_back(hidden_states(tokens.narrow(1, t0, n), positions.defined() ? positions.narrow(-1, t0, n) : positions,
                                   cache));  // [B, n, C]
    }
    return at::cat(outs, 1);  // [B, T, C]
  }
  const int64_t start = cache ? cache->size() : 0;
  at::Tensor pos = positions.defined()
                       ? positions.to(rope_.cos.device())
                       : at::arange(start, start + T, at::TensorOptions().dtype(at::kLong).device(rope_.cos.device()));
  at::Tensor cos = rope_.cos.index({pos});  // [T, D] or [B, T, D]
  at::Tensor sin = rope_.sin.index({pos});  // [T, D] or [B, T, D]

  at::Tensor x = at::embedding(model->embed_tokens_weight, tokens);  // [B, T, C]
  if (model->token_adapter) x = model->token_adapter->forward(tokens, x);  // [B, T, C]
  for (size_t l = 0; l < model->layer_list.size(); ++l)
    x = model->layer_list[l]->forward(x, cos, sin, cache, static_cast<int64_t>(l));  // [B, T, C]
  if (cache) cache->commit(T);
  return model->norm->forward(x);  // [B, T, C]
}

at::Tensor LlamaModelImpl::logits(const at::Tensor& hidden) {
  at::Tensor out = config_.tie_word_embeddings ? flashback::linear(hidden, model->embed_tokens_weight)
                                               : lm_head->forward(hidden);  // [..., V]
  // A tied head reads the embedding, so trainable token rows (unmerged) are
  // its rows too, as when merged (and as PEFT ties them).
  const TokenAdapter& ta = model->token_adapter;
  if (config_.tie_word_embeddings && ta && ta->enabled && !ta->merged) {
    at::Tensor ids = at::tensor(ta->indices, at::kLong).to(out.device());                              // [K]
    at::Tensor cols = flashback::linear(hidden, ta->trainable_tokens_delta.to(hidden.scalar_type()));  // [..., K]
    out = out.index_copy(-1, ids, cols.to(out.scalar_type()));                                        // [..., V]
  }
  return out.to(at::kFloat);
}

at::Tensor LlamaModelImpl::forward(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore& cache) {
  return logits(hidden_states(tokens, positions, &cache));
}

at::Tensor LlamaModelImpl::forward(const at::Tensor& tokens, const at::Tensor& positions) {
  return logits(hidden_states(tokens, positions, nullptr));
}

KVCacheStore LlamaModelImpl::make_cache(int64_t batch, int64_t capacity) const {
  if (capacity <= 0) capacity = config_.max_position_embeddings;
  return KVCacheStore(config_.num_hidden_layers, batch, config_.num_key_value_heads, capacity, config_.head_dim,
                      at::TensorOptions().dtype(options_.dtype).device(options_.device));
}

void LlamaModelImpl::init_random(uint64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : named_parameters()) {
    at::Tensor& t = p.value();
    const std::string& name = p.key();
    const bool is_norm = ends_with(name, "norm.weight");
    at::Tensor v = is_norm ? at::ones(t.sizes(), at::kFloat)
                           : at::normal(0.0, 0.02, t.sizes(), gen, at::TensorOptions().dtype(at::kFloat));
    t.copy_(v);
  }
}

void LlamaModelImpl::to(at::Device device, at::ScalarType dtype, bool non_blocking) {
  check_dtype(dtype, device);
  torch::nn::Module::to(device, dtype, non_blocking);
  options_.device = device;
  options_.dtype = dtype;
  rope_ = make_rotary_tables(config_, device);
}

void LlamaModelImpl::to(at::ScalarType dtype, bool non_blocking) {
  check_dtype(dtype, options_.device);
  torch::nn::Module::to(dtype, non_blocking);
  options_.dtype = dtype;
}

void LlamaModelImpl::to(at::Device device, bool non_blocking) {
  check_dtype(options_.dtype, device);
  torch::nn::Module::to(device, non_blocking);
  options_.device = device;
  rope_ = make_rotary_tables(config_, device);
}

}  // namespace flashback
