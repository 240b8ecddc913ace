// The compute the model's math is written in, and the one place that decides
// how each piece runs: the hand-written CPU kernels (kernels.hpp) where they
// apply, LibTorch's ops everywhere else.
//
// The choice belongs to a model (LlamaForCausalLMOptions::kernels, or
// set_kernels() before the model is shared): nothing here is process-wide, so
// two models in one process may differ. Within a model, a kernel is used only
// for calls it supports (CPU, float32/bfloat16, contiguous rows) that need no
// autograd graph (the kernels have no backward); every other call takes the
// LibTorch reference, which computes the same values up to fp32 summation
// order. Thread-safe: an Ops holds its policy and nothing else.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace flashback {

struct QuantizedMatrix;

enum class Kernels {
  Auto,      // hand-written kernels where they apply, LibTorch's ops elsewhere
  LibTorch,  // LibTorch's ops only (the reference, and what a GPU runs)
};
Kernels parse_kernels(const std::string& name);  // "auto" | "libtorch"
const char* kernels_name(Kernels k);

class Ops {
 public:
  explicit Ops(Kernels kernels = Kernels::Auto) : kernels_(kernels) {}
  Kernels kernels() const { return kernels_; }

  // y = x W^T.   x: [..., in], w: [out, in] -> [..., out]
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w) const;
  // Several matrices of one input at once where the kernel applies (one pass over x, one parallel region).
  std::vector<at::Tensor> linear(const at::Tensor& x, const std::vector<const at::Tensor*>& ws) const;

  // y = x W^T for a matrix kept in ggml blocks (quantized.hpp).   x: [..., in] -> [..., out] in x's dtype.
  at::Tensor quantized_linear(const at::Tensor& x, const QuantizedMatrix& w) const;
  // Several matrices of one input at once where the kernel applies (one pass over x, one parallel region).
  std::vector<at::Tensor> quantized_linear(const at::Tensor& x, const std::vector<const QuantizedMatrix*>& ws) const;

  // w * round(x / rms(x)), statistics in fp32.   x: [..., C], w: [C] -> [..., C]
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) const;

  // RoPE in HF's rotate_half layout.   q: [B, H, T, D], k: [B, Hkv, T, D];
  // cos, sin: fp32 [T, D] or [B, T, D], already gathered at the positions.
  std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                           const at::Tensor& sin) const;

  // Scaled dot-product attention with grouped KV heads, causal over slots.
  // q: [B, H, T, D] holds the queries of slots [start, start + T); k, v:
  // [B, Hkv, S, D] hold slots [0, S), S = start + T. Query slot i sees key
  // slots j <= i. Returns [B, H, T, D].
  at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) const;

  // SwiGLU's gate: silu(gate) * up.   gate, up: [..., F] -> [..., F]
  at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) const;

 private:
  bool kernels_on() const;
  Kernels kernels_;
};

// The LibTorch reference of Ops::attention, matmuls and a softmax in blocks of queries (what Ops uses on
// LibTorch 1.13 whenever the decode kernel does not apply).
at::Tensor grouped_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start);

// The same by LibTorch's fused at::scaled_dot_product_attention (LibTorch 2.x only, torch_compat.hpp;
// throws on 1.13): what Ops::attention runs on 2.x, but for one decode row on the CPU.
at::Tensor fused_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start);

}  // namespace flashback
