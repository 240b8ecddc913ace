// The projection every attention and MLP matrix goes through: y = x W^T.
// forward() is virtual so a LoRA wrapper (a subclass that adds B A x scaled
// by alpha/r) can replace a projection through Module::replace_module without
// the attention or MLP code knowing.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace flashback {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, const at::TensorOptions& options)
      : in_features(in_features), out_features(out_features) {
    weight = register_parameter("weight", at::empty({out_features, in_features}, options));  // [out, in]
  }
  ~LinearImpl() override = default;

  // x: [..., in] -> [..., out]
  virtual at::Tensor forward(const at::Tensor& x) { return at::linear(x, weight); }

  int64_t in_features;
  int64_t out_features;
  at::Tensor weight;  // [out, in]
};
TORCH_MODULE(Linear);

}  // namespace flashback
