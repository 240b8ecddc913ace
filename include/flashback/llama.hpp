// A Llama-2 decoder in the LibTorch module idiom (FooImpl + TORCH_MODULE),
// named as Hugging Face names it: LlamaModel is the decoder, LlamaForCausalLM
// the decoder plus the head.
//
//   tokens [B, T] ─ embed_tokens ─▶ x [B, T, C]
//   for each layer:  x += Attention(RMSNorm(x), positions, cache)
//                    x += MLP(RMSNorm(x))               (SwiGLU)
//   RMSNorm ─ lm_head (or the tied embedding) ─▶ logits [B, T, V]
//
// Parameter names follow HF's LlamaForCausalLM exactly
// ("model.layers.3.self_attn.q_proj.weight", ...), and q/k use HF's
// rotate_half RoPE layout. The module holds weights only: all per-sequence
// state lives in a KVCacheStore passed to forward(), so one model serves many
// sequences, concurrently from several threads (each with its own cache).
// The math is written in Ops (ops.hpp), which the model owns and passes down.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <utility>
#include <vector>

#include "flashback/config.hpp"
#include "flashback/embedding.hpp"
#include "flashback/kv_cache.hpp"
#include "flashback/linear.hpp"
#include "flashback/ops.hpp"

namespace flashback {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  // x: [..., C] -> [..., C]; the statistics are computed in fp32.
  at::Tensor forward(const at::Tensor& x, const Ops& ops) const;
  at::Tensor weight;  // [C]
  double eps;
};
TORCH_MODULE(RMSNorm);

// Rotary position embedding tables for positions [0, max_position): the
// model's only non-weight state, and it is constant.
struct RotaryTables {
  at::Tensor cos;  // [P, D] fp32, halves duplicated (HF rotate_half layout)
  at::Tensor sin;  // [P, D]
};
RotaryTables make_rotary_tables(const LlamaConfig& config, const at::Device& device);

// How the T rows of a forward split. sequences: each its own rows and cache
// (attention never crosses sequences); calls: the row ranges each projection
// call takes. One sequence and one call is the usual forward ([B, T] of one
// cache, or none); a forward over several sequences (B = 1) groups the rows
// of short sequences, at most kernels::kMaxKernelRows to a call, and gives
// each longer one a call of its own, so every row is computed as in its own
// sequence's forward.
struct RowPlan {
  struct Sequence {
    int64_t begin = 0, rows = 0;
    KVCacheStore* cache = nullptr;
  };
  std::vector<Sequence> sequences;
  std::vector<std::pair<int64_t, int64_t>> calls;  // [begin, end) rows

  static RowPlan one(int64_t rows, KVCacheStore* cache) { return {{{0, rows, cache}}, {{0, rows}}}; }
  // Sequences of these lengths, in order, their calls grouped as above.
  static RowPlan packed(const std::vector<int64_t>& lengths, const std::vector<KVCacheStore*>& caches);
};

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const LlamaConfig& config, const at::TensorOptions& options);
  // x: [B, T, C]; cos/sin gathered at the positions; the plan's caches may be null.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const RowPlan& plan,
                     int64_t layer, const Ops& ops) const;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t num_heads, num_kv_heads, head_dim;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  MLPImpl(const LlamaConfig& config, const at::TensorOptions& options);
  // x: [B, T, C] -> down(silu(gate(x)) * up(x)): [B, T, C]
  at::Tensor forward(const at::Tensor& x, const Ops& ops) const;
  // The same, one call per row range of `plan`.
  at::Tensor forward(const at::Tensor& x, const RowPlan& plan, const Ops& ops) const;
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const LlamaConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const RowPlan& plan,
                     int64_t layer, const Ops& ops) const;
  RMSNorm input_layernorm{nullptr};
  Attention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// HF's LlamaModel: embeddings, the layer stack and the final norm.
class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(const LlamaConfig& config, const at::TensorOptions& options);
  // tokens [B, T]; cos/sin [T, D] or [B, T, D] at the tokens' positions ->
  // the final-normed hidden states [B, T, C]. Writes each sequence's rows
  // into its cache (when it has one) and commits them.
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& cos, const at::Tensor& sin, const RowPlan& plan,
                     const Ops& ops) const;

  int64_t num_layers() const { return static_cast<int64_t>(layers->size()); }
  DecoderLayerImpl& layer(int64_t i) const { return *layers->ptr<DecoderLayerImpl>(static_cast<size_t>(i)); }

  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};  // DecoderLayer
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

// Whether the model can compute in `dtype` on `device` (float16 needs a
// LibTorch with fp16 matmul there: not LibTorch 1.13 on CPU).
bool supports_dtype(at::ScalarType dtype, const at::Device& device);

struct LlamaForCausalLMOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // A forward of more tokens than this into a KV cache runs in chunks of
  // this many (each through all layers, attending to the cache): activations
  // stay bounded by the chunk, results equal one pass up to fp32 rounding.
  // 0: never chunk.
  int64_t prefill_chunk = 512;
  Kernels kernels = Kernels::Auto;  // see ops.hpp
};

// HF's LlamaForCausalLM: "model" (the decoder) and "lm_head" (absent when the
// head is tied to the embedding).
class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised; load weights (checkpoint.hpp) or
  // call init_random().
  explicit LlamaForCausalLMImpl(LlamaConfig config, LlamaForCausalLMOptions options = {});

  // Logits for every input position: [B, T, V] fp32.
  //   tokens:    [B, T] int64 ids in [0, V)
  //   positions: [T] or [B, T] int64 RoPE positions in [0, max_position);
  //              undefined = cache.size() + [0, T) (or [0, T) without a cache)
  //   cache:     T new slots are appended to it
  // Works under autograd (training) and in inference mode.
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore& cache);
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& positions = {});

  // The final-normed hidden states [B, T, C] (cache may be null), and the
  // head applied to them: hidden [..., C] -> logits [..., V] fp32. Splitting
  // the two lets callers score only the positions they need.
  at::Tensor hidden_states(const at::Tensor& tokens, const at::Tensor& positions, KVCacheStore* cache);
  at::Tensor logits(const at::Tensor& hidden);

  // Several sequences in one forward: the weights are read once for all of
  // them (several streams' decode steps cost little more than one). Each
  // sequence has its own cache (all distinct); returns its hidden states
  // [1, T_i, C]. With the CPU kernels (Kernels::Auto) each result is the
  // same bits as hidden_states() of that sequence alone: rows of sequences
  // longer than kernels::kMaxKernelRows take projection calls of their own,
  // shorter ones share calls of at most that many rows, whose kernels compute
  // every row as alone. Elsewhere (LibTorch's ops, a GPU): equal up to
  // rounding.
  struct Sequence {
    at::Tensor tokens;     // [T] or [1, T] int64
    at::Tensor positions;  // [T] int64; undefined = cache->size() + [0, T)
    KVCacheStore* cache = nullptr;  // batch 1, required
  };
  std::vector<at::Tensor> hidden_states(const std::vector<Sequence>& sequences);
  // The head over several hidden states at once (rows grouped as above).
  std::vector<at::Tensor> logits(const std::vector<at::Tensor>& hiddens);

  // A cache for this model: [B, Hkv, capacity, D] per layer on its device, in
  // kv_dtype (default: the model's dtype). capacity 0 = max_position_embeddings.
  KVCacheStore make_cache(int64_t batch = 1, int64_t capacity = 0,
                          std::optional<at::ScalarType> kv_dtype = std::nullopt) const;

  // Fills every parameter like HF's _init_weights (normal(0, 0.02), norms 1).
  void init_random(uint64_t seed);

  const LlamaConfig& config() const { return config_; }
  at::ScalarType dtype() const { return options_.dtype; }
  at::Device device() const { return options_.device; }
  // Which kernels the forward uses (ops.hpp). Set it before the model is
  // shared between threads.
  Kernels kernels() const { return ops_.kernels(); }
  void set_kernels(Kernels kernels) { ops_ = Ops(kernels); }
  // The output projection [V, C]: lm_head.weight, or the embedding when tied.
  at::Tensor output_weight() const;
  // The parameter names ("model.layers.0.self_attn.q_proj.weight", ...) of
  // the projections kept in ggml blocks (quantized.hpp; LoadOptions::keep_quantized).
  std::vector<std::string> quantized_weights() const;
  bool keeps_quantized() const { return !quantized_weights().empty(); }

  // Module::to, keeping the rotary tables (fp32) and dtype()/device() in step.
  void to(at::Device device, at::ScalarType dtype, bool non_blocking = false) override;
  void to(at::ScalarType dtype, bool non_blocking = false) override;
  void to(at::Device device, bool non_blocking = false) override;

  LlamaModel model{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings

 private:
  void check_inputs(const at::Tensor& tokens, const at::Tensor& positions, const KVCacheStore* cache) const;

  LlamaConfig config_;
  LlamaForCausalLMOptions options_;
  Ops ops_;
  RotaryTables rope_;
};
TORCH_MODULE(LlamaForCausalLM);

}  // namespace flashback
