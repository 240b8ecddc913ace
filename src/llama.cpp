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
#include "flashback/kernels.hpp"
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

// ---------------------------------------------------------------- row plans
RowPlan RowPlan::packed(const std::vector<int64_t>& lengths, const std::vector<KVCacheStore*>& caches) {
  RowPlan plan;
  int64_t row = 0, open = -1;  // open: the first row of the call short sequences are filling
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int64_t n = lengths[i];
    plan.sequences.push_back({row, n, caches.at(i)});
    if (n > kernels::kMaxKernelRows) {
      if (open >= 0) plan.calls.emplace_back(open, row);
      plan.calls.emplace_back(row, row + n);
      open = -1;
    } else {
      if (open >= 0 && row + n - open > kernels::kMaxKernelRows) {
        plan.calls.emplace_back(open, row);
        open = -1;
      }
      if (open < 0) open = row;
    }
    row += n;
  }
  if (open >= 0) plan.calls.emplace_back(open, row);
  return plan;
}

namespace {
// f(rows) for each call of the plan, concatenated along dim 1 ([B, T, ...]).
template <class F>
std::vector<at::Tensor> by_calls(const at::Tensor& x, const RowPlan& plan, F f) {
  if (plan.calls.size() == 1) return f(x);
  std::vector<std::vector<at::Tensor>> parts;
  for (const auto& [b, e] : plan.calls) parts.push_back(f(x.narrow(1, b, e - b)));
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < parts.front().size(); ++i) {
    std::vector<at::Tensor> col;
    for (const auto& p : parts) col.push_back(p[i]);
    out.push_back(at::cat(col, 1));
  }
  return out;
}

// The same for an f of one output.
template <class F>
at::Tensor by_calls_one(const at::Tensor& x, const RowPlan& plan, F f) {
  return by_calls(x, plan, [&](const at::Tensor& r) { return std::vector<at::Tensor>{f(r)}; })[0];
}
}  // namespace

// ---------------------------------------------------------------- attention
AttentionImpl::AttentionImpl(const LlamaConfig& c, const at::TensorOptions& options)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.head_dim) {
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.q_dim(), options));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.kv_dim(), options));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.kv_dim(), options));
  o_proj = register_module("o_proj", Linear(c.q_dim(), c.hidden_size, options));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                  const RowPlan& plan, int64_t layer, const Ops& ops) const {
  const int64_t B = x.size(0), T = x.size(1);
  const std::vector<at::Tensor> qkv =
      by_calls(x, plan, [&](const at::Tensor& r) { return project(r, {q_proj.get(), k_proj.get(), v_proj.get()}, ops); });
  at::Tensor q = qkv[0].view({B, T, num_heads, head_dim}).transpose(1, 2);     // [B, H, T, D]
  at::Tensor k = qkv[1].view({B, T, num_kv_heads, head_dim}).transpose(1, 2);  // [B, Hkv, T, D]
  at::Tensor v = qkv[2].view({B, T, num_kv_heads, head_dim}).transpose(1, 2);  // [B, Hkv, T, D]
  std::tie(q, k) = ops.rotary(q, k, cos, sin);
  std::vector<at::Tensor> ys;
  for (const RowPlan::Sequence& s : plan.sequences) {
    const bool whole = plan.sequences.size() == 1;
    at::Tensor qs = whole ? q : q.narrow(2, s.begin, s.rows).contiguous();  // [B, H, Ts, D]
    at::Tensor ks = whole ? k : k.narrow(2, s.begin, s.rows);                // [B, Hkv, Ts, D]
    at::Tensor vs = whole ? v : v.narrow(2, s.begin, s.rows);                // [B, Hkv, Ts, D]
    int64_t start = 0;
    if (s.cache) {
      start = s.cache->size();
      std::tie(ks, vs) = s.cache->write(layer, ks, vs);  // [B, Hkv, start + Ts, D] views of the cache
    }
    ys.push_back(ops.attention(qs, ks, vs, start));  // [B, H, Ts, D]
  }
  at::Tensor y = ys.size() == 1 ? ys[0] : at::cat(ys, 2);        // [B, H, T, D]
  y = y.transpose(1, 2).reshape({B, T, num_heads * head_dim});  // [B, T, H*D]
  return by_calls_one(y, plan, [&](const at::Tensor& r) { return o_proj->forward(r, ops); });  // [B, T, C]
}

// ---------------------------------------------------------------- MLP
MLPImpl::MLPImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  gate_proj = register_module("gate_proj", Linear(c.hidden_size, c.intermediate_size, options));
  up_proj = register_module("up_proj", Linear(c.hidden_size, c.intermediate_size, options));
  down_proj = register_module("down_proj", Linear(c.intermediate_size, c.hidden_size, options));
}

at::Tensor MLPImpl::forward(const at::Tensor& x, const Ops& ops) const {
  const std::vector<at::Tensor> gate_up = project(x, {gate_proj.get(), up_proj.get()}, ops);  // [B, T, F] x 2
  return down_proj->forward(ops.silu_mul(gate_up[0], gate_up[1]), ops);                      // [B, T, C]
}

at::Tensor MLPImpl::forward(const at::Tensor& x, const RowPlan& plan, const Ops& ops) const {
  return by_calls_one(x, plan, [&](const at::Tensor& r) { return forward(r, ops); });  // [B, T, C]
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
                                     const RowPlan& plan, int64_t layer, const Ops& ops) const {
  at::Tensor h = x + self_attn->forward(input_layernorm->forward(x, ops), cos, sin, plan, layer, ops);  // [B, T, C]
  return h + mlp->forward(post_attention_layernorm->forward(h, ops), plan, ops);                       // [B, T, C]
}

// ---------------------------------------------------------------- decoder
LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c, const at::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, options));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
}

at::Tensor LlamaModelImpl::forward(const at::Tensor& tokens, const at::Tensor& cos, const at::Tensor& sin,
                                   const RowPlan& plan, const Ops& ops) const {
  at::Tensor x = embed_tokens->forward(tokens);                                                 // [B, T, C]
  for (int64_t l = 0; l < num_layers(); ++l) x = layer(l).forward(x, cos, sin, plan, l, ops);  // [B, T, C]
  for (const RowPlan::Sequence& s : plan.sequences)
    if (s.cache) s.cache->commit(s.rows);
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

// "cuda" names the current device: the model keeps it with its index, as every tensor made there reports
// it, so that the inputs' and the cache's devices compare equal to the model's.
at::Device with_index(const at::Device& device) {
  if (device.is_cpu() || device.has_index()) return device;
  return at::empty({0}, at::TensorOptions().device(device)).device();
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
  options_.device = with_index(options_.device);
  auto topts = at::TensorOptions().dtype(options_.dtype).device(options_.device);
  model = register_module("model", LlamaModel(config_, topts));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(config_.hidden_size, config_.vocab_size, topts));
  rope_ = make_rotary_tables(config_, options_.device);
}

at::Tensor LlamaForCausalLMImpl::output_weight() const {
  return config_.tie_word_embeddings ? model->embed_tokens->weight : lm_head->weight;
}

std::vector<std::string> LlamaForCausalLMImpl::quantized_weights() const {
  std::vector<std::string> out;
  for (const auto& m : named_modules("", /*include_self=*/false))
    if (auto l = std::dynamic_pointer_cast<LinearImpl>(m.value()); l && l->quantized) out.push_back(m.key() + ".weight");
  return out;
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

  return model->forward(tokens.to(options_.device), cos, sin, RowPlan::one(T, cache), ops_);  // [B, T, C]
}

std::vector<at::Tensor> LlamaForCausalLMImpl::hidden_states(const std::vector<Sequence>& sequences) {
  if (sequences.empty()) return {};
  std::vector<at::Tensor> tokens, positions;
  std::vector<KVCacheStore*> caches;
  for (const Sequence& s : sequences) {
    if (!s.cache) throw InvalidArgument("hidden_states over several sequences: each needs its own KV cache");
    if (std::find(caches.begin(), caches.end(), s.cache) != caches.end())
      throw InvalidArgument("hidden_states over several sequences: two of them share one KV cache");
    at::Tensor t = s.tokens.defined() ? s.tokens.reshape({1, -1}) : s.tokens;  // [1, T]
    check_inputs(t, s.positions, s.cache);
    if (s.positions.defined() && s.positions.dim() != 1)
      throw InvalidArgument("hidden_states over several sequences: positions must be [T]");
    const int64_t T = t.size(1), start = s.cache->size();
    tokens.push_back(t.to(options_.device));
    positions.push_back(s.positions.defined()
                            ? s.positions.to(rope_.cos.device())
                            : at::arange(start, start + T, at::TensorOptions().dtype(at::kLong).device(rope_.cos.device())));
    caches.push_back(s.cache);
  }
  // Longer than a prefill chunk: rounds of one chunk per sequence, each
  // chunk attending to the cache, as hidden_states() runs a long input alone.
  // A round's pieces go through forwards of at most a chunk's rows (a piece
  // never split): activations stay bounded as alone, and the long pieces,
  // whose products are compute-bound, lose nothing by running apart.
  const int64_t chunk = options_.prefill_chunk;
  std::vector<std::vector<at::Tensor>> outs(sequences.size());
  struct Piece {
    size_t seq;
    int64_t t0, rows;
  };
  auto run = [&](const std::vector<Piece>& pieces) {
    std::vector<at::Tensor> ids, pos;
    std::vector<int64_t> lengths;
    std::vector<KVCacheStore*> piece_caches;
    for (const Piece& pc : pieces) {
      ids.push_back(tokens[pc.seq].narrow(1, pc.t0, pc.rows));
      pos.push_back(positions[pc.seq].narrow(0, pc.t0, pc.rows));
      lengths.push_back(pc.rows);
      piece_caches.push_back(caches[pc.seq]);
    }
    at::Tensor p = at::cat(pos, 0);  // [N]
    at::Tensor h = model->forward(at::cat(ids, 1), rope_.cos.index({p}), rope_.sin.index({p}),
                                  RowPlan::packed(lengths, piece_caches), ops_);  // [1, N, C]
    int64_t row = 0;
    for (const Piece& pc : pieces) {
      outs[pc.seq].push_back(h.narrow(1, row, pc.rows));  // [1, rows, C]
      row += pc.rows;
    }
  };
  for (int64_t t0 = 0;; t0 += chunk) {
    std::vector<Piece> batch;
    int64_t rows = 0;
    bool any = false;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const int64_t T = tokens[i].size(1);
      if (t0 >= T) continue;
      any = true;
      const int64_t n = chunk > 0 ? std::min(chunk, T - t0) : T;
      if (chunk > 0 && !batch.empty() && rows + n > chunk) {
        run(batch);
        batch.clear();
        rows = 0;
      }
      batch.push_back({i, t0, n});
      rows += n;
    }
    if (!batch.empty()) run(batch);
    if (!any || chunk <= 0) break;
  }
  std::vector<at::Tensor> result;
  for (auto& o : outs) result.push_back(o.size() == 1 ? o[0] : at::cat(o, 1));  // [1, T_i, C]
  return result;
}

std::vector<at::Tensor> LlamaForCausalLMImpl::logits(const std::vector<at::Tensor>& hiddens) {
  std::vector<int64_t> rows;
  std::vector<at::Tensor> flat;
  for (const at::Tensor& h : hiddens) {
    if (!h.defined() || h.dim() < 1 || h.size(-1) != config_.hidden_size)
      throw InvalidArgument("logits: hidden states must be [..., " + std::to_string(config_.hidden_size) + "]");
    flat.push_back(h.reshape({-1, config_.hidden_size}));  // [n_i, C]
    rows.push_back(flat.back().size(0));
  }
  const RowPlan plan = RowPlan::packed(rows, std::vector<KVCacheStore*>(rows.size(), nullptr));
  at::Tensor all = at::cat(flat, 0);  // [N, C]
  std::vector<at::Tensor> parts;
  for (const auto& [b, e] : plan.calls) parts.push_back(logits(all.narrow(0, b, e - b)));  // [n, V]
  at::Tensor out = parts.size() == 1 ? parts[0] : at::cat(parts, 0);                        // [N, V]
  std::vector<at::Tensor> result;
  for (size_t i = 0; i < hiddens.size(); ++i) {
    std::vector<int64_t> shape = hiddens[i].sizes().vec();
    shape.back() = out.size(1);
    result.push_back(out.narrow(0, plan.sequences[i].begin, rows[i]).reshape(shape));  // [..., V]
  }
  return result;
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

KVCacheStore LlamaForCausalLMImpl::make_cache(int64_t batch, int64_t capacity,
                                              std::optional<at::ScalarType> kv_dtype) const {
  if (capacity <= 0) capacity = config_.max_position_embeddings;
  return KVCacheStore(config_.num_hidden_layers, batch, config_.num_key_value_heads, capacity, config_.head_dim,
                      at::TensorOptions().dtype(kv_dtype.value_or(options_.dtype)).device(options_.device));
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
  if (!device.is_cpu() && keeps_quantized())
    throw InvalidArgument("quantized weights run on the CPU only: load the model without keep_quantized for " + device.str());
  torch::nn::Module::to(device, dtype, non_blocking);
  options_.device = with_index(device);
  options_.dtype = dtype;
  rope_ = make_rotary_tables(config_, options_.device);
}

void LlamaForCausalLMImpl::to(at::ScalarType dtype, bool non_blocking) {
  check_compute(dtype, options_.device);
  torch::nn::Module::to(dtype, non_blocking);
  options_.dtype = dtype;
}

void LlamaForCausalLMImpl::to(at::Device device, bool non_blocking) {
  check_compute(options_.dtype, device);
  if (!device.is_cpu() && keeps_quantized())
    throw InvalidArgument("quantized weights run on the CPU only: load the model without keep_quantized for " + device.str());
  torch::nn::Module::to(device, non_blocking);
  options_.device = with_index(device);
  rope_ = make_rotary_tables(config_, options_.device);
}

}  // namespace flashback
