// The Llama-2 decoder: each function reads top to bottom like the math.
#include "flashback/llama.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "flashback/error.hpp"
#include "flashback/strings.hpp"

namespace flashback {

// ---------------------------------------------------------------- RMSNorm
RMSNormImpl::RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options) : eps(eps) {
  weight = register_parameter("weight", at::ones({dim}, options));  // [C]
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x, const Ops& ops) const { return ops.rms_norm(x, weight, eps); }

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

// ---------------------------------------------------------------- attention
AttentionImpl::AttentionImpl(const LlamaConfig& c, const at::TensorOptions& options)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.q_dim(), options));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.kv_dim(), options));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.kv_dim(), options));
  o_proj = register_module("o_proj", Linear(c.q_dim(), c.hidden_size, options));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                  KVCacheStore* cache, int64_t layer, const Ops& ops) const {
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor q = q_proj->forward(x, ops).view({B, T, num_heads, head_dim}).transpose(1, 2);     // [B, H, T, D]
  at::Tensor k = k_proj->forward(x, ops).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);  // [B, Hkv, T, D]
  at::Tensor v = v_proj->forward(x, ops).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);  // [B, Hkv, T, D]
  std::tie(q, k) = ops.rotary(q, k, cos, sin);
  int64_t start = 0;
  if (cache) {
    start = cache->size();
    std::tie(k, v) = cache->write(layer, k, v);  // [B, Hkv, start + T, D] views of the cache
  }
  at::Tensor y = ops.attention(q, k, v, start);                 // [B, H, T, D]
  y = y.transpose(1, 2).reshape({B, T, num_heads * head_dim});  // [B, T, H*D]
  return o_proj->forward(y, ops);                                // [B, T, C]
}

// ---------------------------------------------------------------- MLP
MLPImpl::MLPImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  gate_proj = register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, options));
  up_proj = register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, options));
  down_proj = register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x, const Ops& ops) const {
  at::Tensor gate = gate_proj->forward(x, ops), up = up_proj->forward(x, ops);  // [B, T, F]
  return down_proj->forward(ops.silu_mul(gate, up), ops);                       // [B, T, C]
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
                                     KVCacheStore* cache, int64_t layer, const Ops& ops) const {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x, ops), cos, sin, cache, layer, ops);  // [B, T, C]
  return h + mlp->forward(post_attention_layernorm->forward(h, ops), ops);                              // [B, T, C]
}

// ---------------------------------------------------------------- decoder
LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, options));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
}

at::Tensor LlamaModelImpl::forward(const at::Tensor& tokens, const at::Tensor& cos, const at::Tensor& sin,
                                   KVCacheStore* cache, const Ops& ops) const {
  at::Tensor x = embed_tokens->forward(tokens);                     // [B, T, C]
  for (int64_t l = 0; l < num_layers(); ++l) x = layer(l).forward(x, cos, sin, cache, l, ops);  // [B, T, C]
  if (cache) cache->commit(tokens.size(1));
  return norm->forward(x, ops);  // [B, T, C]
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

// The device and dtype a model may compute in here.
void check_compute(at::ScalarType dtype, const at::Device& device) {
  if (device.is_cuda() && !at::hasCUDA())
    throw InvalidArgument("device " + device.str() + ": CUDA is not available to this LibTorch (" TORCH_VERSION
                          "): it was built without CUDA, or no GPU is visible");
  if (!device.is_cpu() && !device.is_cuda())
    throw InvalidArgument("device " + device.str() + ": flashback runs on cpu or cuda");
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    throw InvalidArgument("model dtype must be float32, bfloat16 or float16");
  if (dtype == at::kHalf && !half_matmul_works(device))
    throw InvalidArgument("float16 compute is not supported on this device by this LibTorch; use float32 or bfloat16");
}
}  // namespace

bool supports_dtype(at::ScalarType dtype, const at::Device& device) {
  try {
    check_compute(dtype, device);
    return true;
  } catch (const InvalidArgument&) {
    return false;
  }
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(LlamaConfig config, LlamaForCausalLMOptions options)
    : config_(std::move(config)), options_(options), ops_(options.kernels) {
  config_.validate("LlamaConfig");
  check_compute(options_.dtype, options_.device);
  auto topts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  model = register_module("model", LlamaModel(config_, topts));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(config_.hidden_size, config_.vocab_size, topts));
  rope_ = make_rotary_tables(config_, options_.device);
}

at::Tensor LlamaForCausalLMImpl::output_weight() const {
  return config_.tie_word_embeddings ? model->embed_tokens->weight : lm_head->weight;
}

void LlamaForCausalLMImpl::check_inputs(const at::Tensor& tokens, const at::Tensor& positions,
                                  const KVCacheStore* cache) const {
  if (!tokens.defined() || tokens.dim() != 2 || tokens.size(1) == 0)
    throw InvalidArgument("tokens must be a non-empty [B, T] tensor");
  if (tokens.scalar_type() != at::kLong) throw InvalidArgument("tokens must be int64");
  // Ids may come from the host (validated there, copied once) or already sit on the model's device.
  for (const at::Tensor* t : {&tokens, &positions})
    if (t->defined() && !t->is_cpu() && t->device() != options_.device)
      throw InvalidArgument(std::string(t == &tokens ? "tokens" : "positions") + " are on " + t->device().str() +
                            " but the model is on " + options_.device.str() + ": move them with .to(model.device)");
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
    if (cache->options().device() != options_.device)
      throw InvalidArgument("the KV cache is on " + cache->options().device().str() + " but the model is on " +
                            options_.device.str() + ": make the cache after moving the model (make_cache)");
    if (cache->batch() != tokens.size(0))
      throw InvalidArgument("the KV cache holds batch " + std::to_string(cache->batch()) + " but tokens have batch " +
                            std::to_string(tokens.size(0)));
    cache->check_room(T);
  }
}

at::Tensor LlamaForCausalLMImpl::hidden_states(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore* cache) {
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

  return model->forward(tokens.to(options_.device), cos, sin, cache, ops_);  // [B, T, C]
}

at::Tensor LlamaForCausalLMImpl::logits(const at::Tensor& hidden) {
  at::Tensor out = config_.tie_word_embeddings ? model->embed_tokens->project(hidden, ops_)
                                               : lm_head->forward(hidden, ops_);  // [..., V]
  return out.to(at::kFloat);
}

at::Tensor LlamaForCausalLMImpl::forward(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore& cache) {
  return logits(hidden_states(tokens, positions, &cache));
}

at::Tensor LlamaForCausalLMImpl::forward(const at::Tensor& tokens, const at::Tensor& positions) {
  return logits(hidden_states(tokens, positions, nullptr));
}

KVCacheStore LlamaForCausalLMImpl::make_cache(int64_t batch, int64_t capacity) const {
  if (capacity <= 0) capacity = config_.max_position_embeddings;
  return KVCacheStore(config_.num_hidden_layers, batch, config_.num_key_value_heads, capacity, config_.head_dim,
                      at::TensorOptions().dtype(options_.dtype).device(options_.device));
}

void LlamaForCausalLMImpl::init_random(uint64_t seed) {
  at::NoGradGuard no_grad;
  if (!options_.device.is_cpu()) {
    // On the device, by the device's generator: a 7B model is drawn in a second, not a minute of host
    // sampling and copying (other values than the CPU's for the same seed).
    at::Generator gen = at::globalContext().defaultGenerator(options_.device).clone();
    gen.set_current_seed(seed);
    for (auto& p : named_parameters()) {
      if (ends_with(p.key(), "norm.weight"))
        p.value().fill_(1.0);
      else
        p.value().normal_(0.0, 0.02, gen);
    }
    return;
  }
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

void LlamaForCausalLMImpl::to(at::Device device, at::ScalarType dtype, bool non_blocking) {
  check_compute(dtype, device);
  torch::nn::Module::to(device, dtype, non_blocking);
  options_.device = device;
  options_.dtype = dtype;
  rope_ = make_rotary_tables(config_, device);
}

void LlamaForCausalLMImpl::to(at::ScalarType dtype, bool non_blocking) {
  check_compute(dtype, options_.device);
  torch::nn::Module::to(dtype, non_blocking);
  options_.dtype = dtype;
}

void LlamaForCausalLMImpl::to(at::Device device, bool non_blocking) {
  check_compute(options_.dtype, device);
  torch::nn::Module::to(device, non_blocking);
  options_.device = device;
  rope_ = make_rotary_tables(config_, device);
}

}  // namespace flashback
