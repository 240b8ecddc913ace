// The token embedding, which a tied head also reads: x = E[ids], and
// logits = h E^T when the output projection is tied to it.
//
// Some rows may be overridden by other rows (PEFT's trainable token rows,
// lora.hpp: FlashBack trains the two marking-token rows and nothing else of
// E). An override replaces those rows wherever E is read, as input embedding
// and as tied head, without touching E itself.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>

#include "flashback/ops.hpp"
#include "flashback/quantized.hpp"

namespace flashback {

class RowOverride {
 public:
  virtual ~RowOverride() = default;
  // x = E[ids]: [B, T, C] for ids [B, T] -> x with the overridden rows' embeddings replaced.
  virtual at::Tensor embed(const at::Tensor& ids, const at::Tensor& x) const = 0;
  // logits = h E^T: [..., V] for hidden [..., C] -> with the overridden rows' columns replaced.
  virtual at::Tensor project(const at::Tensor& hidden, const at::Tensor& logits, const Ops& ops) const = 0;
};

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t dim, const at::TensorOptions& options) {
    weight = register_parameter("weight", at::empty({num_embeddings, dim}, options));  // [V, C]
  }

  // ids: [B, T] -> [B, T, C]
  at::Tensor forward(const at::Tensor& ids) const {
    at::Tensor x = at::embedding(weight, ids);  // [B, T, C]
    return override_rows ? override_rows->embed(ids, x) : x;
  }

  // The tied head: hidden [..., C] -> logits [..., V].
  at::Tensor project(const at::Tensor& hidden, const Ops& ops) const {
    at::Tensor logits = head_quantized ? ops.quantized_linear(hidden, *head_quantized) : ops.linear(hidden, weight);  // [..., V]
    return override_rows ? override_rows->project(hidden, logits, ops) : logits;
  }

  at::Tensor weight;                            // [V, C]
  std::shared_ptr<RowOverride> override_rows;  // null: E as it is
  // E in the GGUF's blocks for the head alone (keep_quantized; lookups read
  // `weight`): decode reads 8.5 bits per head weight instead of 16 or 32.
  std::shared_ptr<const QuantizedMatrix> head_quantized;
};
TORCH_MODULE(Embedding);

}  // namespace flashback
