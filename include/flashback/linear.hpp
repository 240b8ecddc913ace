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

#include <algorithm>
#include <memory>
#include <vector>

#include "flashback/ops.hpp"
#include "flashback/quantized.hpp"

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
    return adapted(x, quantized ? ops.quantized_linear(x, *quantized) : ops.linear(x, weight), ops);  // [..., out]
  }

  // y = x W^T -> what the projection outputs: y plus the adapter's part.
  at::Tensor adapted(const at::Tensor& x, const at::Tensor& y, const Ops& ops) const {
    return adapter ? adapter->forward(*this, x, y, ops) : y;  // [..., out]
  }

  // Keeps W as ggml blocks (rows x cols must be out x in): `weight` shrinks
  // to [out, 0], so the projection holds no dense copy.
  void keep_quantized(QuantizedMatrix m) {
    quantized = std::make_shared<const QuantizedMatrix>(std::move(m));
    weight.set_data(at::empty({out_features, 0}, weight.options()));
  }

  int64_t in_features;
  int64_t out_features;
  at::Tensor weight;                           // [out, in] ([out, 0] when quantized)
  std::shared_ptr<const QuantizedMatrix> quantized;  // null: W is `weight`
  std::shared_ptr<ProjectionAdapter> adapter;  // null: the plain projection
};
TORCH_MODULE(Linear);

// Several projections of one input (q, k, v; gate, up), each as its forward()
// gives it. With every weight dense, or every weight kept quantized, they
// share one call (one parallel region; x quantized once: at one token per
// step the threads' meetings cost as much as small products).
inline std::vector<at::Tensor> project(const at::Tensor& x, const std::vector<const LinearImpl*>& ls, const Ops& ops) {
  std::vector<at::Tensor> ys;
  std::vector<const QuantizedMatrix*> qs;
  std::vector<const at::Tensor*> ws;
  for (const LinearImpl* l : ls) {
    if (l->quantized) qs.push_back(l->quantized.get());
    else ws.push_back(&l->weight);
  }
  if (qs.size() == ls.size()) {
    ys = ops.quantized_linear(x, qs);
  } else if (ws.size() == ls.size()) {
    ys = ops.linear(x, ws);
  } else {
    for (const LinearImpl* l : ls) ys.push_back(l->forward(x, ops));
    return ys;
  }
  for (size_t i = 0; i < ls.size(); ++i) ys[i] = ls[i]->adapted(x, ys[i], ops);
  return ys;
}

}  // namespace flashback
