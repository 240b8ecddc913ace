// LoRA (Hu et al. 2021) in PEFT's form, plus PEFT's trainable token rows:
// what FlashBack fine-tunes. Both attach to a base model from outside; the
// base model knows only the two hooks they use (Linear::adapter,
// Embedding::override_rows).
//
//   y = x W^T + (alpha / r) * B (A dropout(x))       A: [r, in], B: [out, r]
//
// A starts Kaiming-uniform (bound 1/sqrt(in), PEFT's default), B starts at
// zero, so a fresh adapter changes nothing. merge() folds the update into W
// (W += scaling * B A) for inference at base-model speed; unmerge() takes it
// out again. A and B are registered on the projection they adapt, so their
// names are PEFT's: "model.layers.0.self_attn.q_proj.lora_A.weight".
//
// Token rows (PEFT's `trainable_token_indices`): a small [K, C] tensor
// `trainable_tokens_delta` whose rows REPLACE the embedding rows of K token
// ids (the marking tokens), in the input embedding and in a tied head. Only
// these rows train; the [V, C] embedding stays frozen, so no optimiser can
// move its other rows. (PEFT calls them a delta but stores replacement rows;
// its saved adapters mean the same thing.) Registered as
// "model.embed_tokens.token_adapter.trainable_tokens_delta".
//
// Thread-safety: forward() of an adapted model mutates nothing; attaching,
// merging, enabling and removing adapters must not overlap a forward.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>
#include <vector>

#include "flashback/embedding.hpp"
#include "flashback/linear.hpp"

namespace flashback {

class LlamaForCausalLMImpl;
class DecoderLayerImpl;

// Which projections may carry LoRA (HF's names, in this canonical order).
const std::vector<std::string>& lora_target_names();

struct LoraConfig {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0.05;
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  std::vector<int64_t> trainable_token_indices;  // embedding rows that train (the marks)
  double scaling() const { return alpha / double(r); }
  // Throws InvalidArgument naming `where` for a bad rank, alpha, dropout or target.
  void validate(const std::string& where = "LoraConfig") const;
};

// LoRA on one projection.
class LoraAdapter : public ProjectionAdapter {
 public:
  // Attaches to `base` (registers lora_A and lora_B on it, in its dtype,
  // device and training mode).
  LoraAdapter(LinearImpl& base, int64_t r, double alpha, double dropout);

  at::Tensor forward(const LinearImpl& base, const at::Tensor& x, const at::Tensor& y, const Ops& ops) const override;

  void reset_parameters();          // A Kaiming-uniform, B zeros
  void merge();                     // W += scaling * B A   (no-op when merged)
  void unmerge();                   // W -= scaling * B A   (no-op when not merged)
  at::Tensor delta_weight() const;  // scaling * B A: [out, in] in W's dtype

  Linear lora_A{nullptr};  // weight [r, in]
  Linear lora_B{nullptr};  // weight [out, r]
  int64_t r;
  double alpha, scaling, dropout;
  bool enabled = true;
  bool merged = false;

 private:
  LinearImpl* base_;  // owns this adapter
};

// Trainable replacement rows of the embedding.
class TokenRowsImpl : public torch::nn::Module, public RowOverride {
 public:
  // Starts as a copy of `embedding`'s rows `indices` (a no-op replacement).
  TokenRowsImpl(EmbeddingImpl& embedding, std::vector<int64_t> indices);

  at::Tensor embed(const at::Tensor& ids, const at::Tensor& x) const override;
  at::Tensor project(const at::Tensor& hidden, const at::Tensor& logits, const Ops& ops) const override;

  void merge();    // copies the rows into the embedding (keeps the originals)
  void unmerge();  // puts the original rows back

  std::vector<int64_t> indices;
  at::Tensor trainable_tokens_delta;  // [K, C], registered under that name (PEFT's key)
  bool enabled = true;
  bool merged = false;

 private:
  EmbeddingImpl* embedding_;  // owns this override
  at::Tensor ids_;            // [K] int64 buffer: `indices`
  at::Tensor slot_of_;        // [V] int64 buffer: row in trainable_tokens_delta, or -1
  at::Tensor original_rows_;  // [K, C] the rows merge() overwrote
};
TORCH_MODULE(TokenRows);

// ---- the adapter of a whole model

// Attaches LoRA to the config's target projections of every layer and, when
// `trainable_token_indices` is set, the token rows. Throws when the model
// already has an adapter or an index is outside the vocabulary.
void add_lora(LlamaForCausalLMImpl& model, const LoraConfig& config);
bool has_lora(const LlamaForCausalLMImpl& model);
// The LoraConfig of the attached adapter (InvalidArgument without one).
LoraConfig lora_config(const LlamaForCausalLMImpl& model);
// Freezes every base parameter and unfreezes the adapter's (LoRA A/B and the
// token rows): after this only those receive gradients.
void mark_only_adapter_trainable(LlamaForCausalLMImpl& model);
void set_adapter_enabled(LlamaForCausalLMImpl& model, bool enabled);
void merge_adapter(LlamaForCausalLMImpl& model);
void unmerge_adapter(LlamaForCausalLMImpl& model);
// Folds the adapter into the base weights for good and removes it.
void merge_and_unload(LlamaForCausalLMImpl& model);

// The projection `name` (q_proj ... down_proj) of a layer, and its HF path
// ("model.layers.3.mlp.down_proj").
Linear& projection(DecoderLayerImpl& layer, const std::string& name);
std::string projection_path(int64_t layer, const std::string& name);
// Every attached LoRA with its projection's HF path, layer by layer in
// canonical target order; the token rows, or null.
std::vector<std::pair<std::string, LoraAdapter*>> lora_layers(const LlamaForCausalLMImpl& model);
TokenRowsImpl* token_rows(const LlamaForCausalLMImpl& model);

}  // namespace flashback
