// The projection every attention and MLP matrix goes through: y = x W^T.
// forward() is virtual so a LoRA wrapper (a subclass that adds B A x scaled
// by alpha/r) can replace a projection through Module::replace_module without
// the attention or MLP code knowing.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "flashback/kernels.hpp"

namespace flashback {

// y = x W^T.   x: [..., in], W: [out, in] -> [..., out]
// One row (decode: B = T = 1) is a matrix-vector product: bf16 weights on an
// AVX2 CPU go through the hand-written gemv (kernels.hpp; LibTorch's bf16
// gemv runs at ~2% of the memory bandwidth), fp32 through BLAS gemv (as fast
// as that kernel here, and several times faster than a 1-row GEMM).
// Several rows on a CPU in bf16 run as an fp32 GEMM: LibTorch 1.13's CPU
// bf16 GEMM is ~100x slower than its fp32 one without AVX-512 BF16.
inline at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
  if (w.scalar_type() == at::kBFloat16 && kernels::gemv_usable(w, x)) return kernels::gemv(w, x);
  if (x.numel() == x.size(-1) && (x.scalar_type() == at::kFloat || !x.is_cpu())) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    return at::mv(w, x.reshape({-1})).view(shape);
  }
  if (x.is_cpu() && x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16)
    return at::linear(x.to(at::kFloat), w.to(at::kFloat)).to(at::kBFloat16);
  return at::linear(x, w);
}

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, const at::TensorOptions& options)
      : in_features(in_features), out_features(out_features) {
    weight = register_parameter("weight", at::empty({out_features, in_features}, options));  // [out, in]
  }
  // Wraps an existing weight [out, in] (the same tensor, not a copy): how a
  // LoRA layer takes over the projection it adapts.
  explicit LinearImpl(const at::Tensor& existing) : in_features(existing.size(1)), out_features(existing.size(0)) {
    weight = register_parameter("weight", existing, existing.requires_grad());  // [out, in]
  }
  ~LinearImpl() override = default;

  // x: [..., in] -> [..., out]
  virtual at::Tensor forward(const at::Tensor& x) { return flashback::linear(x, weight); }

  int64_t in_features;
  int64_t out_features;
  at::Tensor weight;  // [out, in]
};
TORCH_MODULE(Linear);

}  // namespace flashback
