// The projection every attention and MLP matrix goes through: y = x W^T,
// computed by the model's Ops.
//
// An adapter (LoRA, lora.hpp) attaches to a projection instead of replacing
// it: the Linear keeps its weight and its place in the module tree, and its
// forward adds what the adapter contributes. The attention and MLP code never
// know whether a projection is adapted.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>

#include "flashback/ops.hpp"

namespace flashback {

class LinearImpl;

// What an adapter adds to a projection's output.
class ProjectionAdapter {
 public:
  virtual ~ProjectionAdapter() = default;
  // x: the projection's input [..., in]; y = x W^T: [..., out]. Returns the
  // adapted output [..., out].
  virtual at::Tensor forward(const LinearImpl& base, const at::Tensor& x, const at::Tensor& y, const Ops& ops) const = 0;
};

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, const at::TensorOptions& options)
      : in_features(in_features), out_features(out_features) {
    weight = register_parameter("weight", at::empty({out_features, in_features}, options));  // [out, in]
  }

  // x: [..., in] -> [..., out]
  at::Tensor forward(const at::Tensor& x, const Ops& ops) const {
    at::Tensor y = ops.linear(x, weight);                // [..., out]
    return adapter ? adapter->forward(*this, x, y, ops) : y;  // [..., out]
  }

  int64_t in_features;
  int64_t out_features;
  at::Tensor weight;                           // [out, in]
  std::shared_ptr<ProjectionAdapter> adapter;  // null: the plain projection
};
TORCH_MODULE(Linear);

}  // namespace flashback
