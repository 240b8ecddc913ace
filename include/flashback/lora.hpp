// LoRA (Hu et al. 2021) in PEFT's form, plus PEFT's trainable token rows:
// what FlashBack fine-tunes.
//
//   y = x W^T + (alpha / r) * B (A dropout(x))       A: [r, in], B: [out, r]
//
// A starts Kaiming-uniform (bound 1/sqrt(in), PEFT's default), B starts at
// zero, so a fresh adapter changes nothing. merge() folds the update into W
// (W += scaling * B A) for inference at base-model speed; unmerge() takes it
// out again. The wrapper shares the base layer's weight tensor, so it slots in
// where the plain Linear was (Module::replace_module) and the attention/MLP
// code never knows.
//
// Token rows (PEFT's `trainable_token_indices`): a small [K, C] tensor
// `trainable_tokens_delta` whose rows REPLACE the embedding rows of K token
// ids (the marking tokens). Only these rows train; the [V, C] embedding stays
// frozen, so no optimiser can move its other rows. (PEFT calls them a delta
// but stores replacement rows; its saved adapters mean the same thing.)
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "flashback/linear.hpp"

namespace flashback {

class LlamaModelImpl;

// Which projections may carry LoRA (HF's names).
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

class LoraLinearImpl : public LinearImpl {
 public:
  // Takes over `base`'s weight (same tensor); A, B in its dtype and device.
  LoraLinearImpl(const LinearImpl& base, int64_t r, double alpha, double dropout);

  // x: [..., in] -> [..., out]
  at::Tensor forward(const at::Tensor& x) override;

  void reset_parameters();  // A Kaiming-uniform, B zeros
  void merge();             // W += scaling * B A   (no-op when merged)
  void unmerge();           // W -= scaling * B A   (no-op when not merged)
  at::Tensor delta_weight() const;  // scaling * B A: [out, in] in W's dtype

  Linear lora_A{nullptr};  // weight [r, in]
  Linear lora_B{nullptr};  // weight [out, r]
  int64_t r;
  double alpha, scaling, dropout;
  bool enabled = true;
  bool merged = false;
};
TORCH_MODULE(LoraLinear);

class TokenAdapterImpl : public torch::nn::Module {
 public:
  // Starts as a copy of `embedding`'s rows `indices` (a no-op replacement).
  TokenAdapterImpl(const at::Tensor& embedding, std::vector<int64_t> indices);

  // x: [B, T, C] embeddings of ids [B, T] -> x with the adapted rows replaced.
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& x);

  void merge(at::Tensor& embedding);    // copies the rows into the embedding (keeps the originals)
  void unmerge(at::Tensor& embedding);  // puts the original rows back

  std::vector<int64_t> indices;
  at::Tensor trainable_tokens_delta;  // [K, C], registered under that name (PEFT's key)
  bool enabled = true;
  bool merged = false;

 private:
  at::Tensor original_rows_;  // [K, C] the rows merge() overwrote
  at::Tensor slot_of_;        // [V] int64: row in trainable_tokens_delta, or -1
};
TORCH_MODULE(TokenAdapter);

// Wraps the config's target projections of every layer in LoRA and, when
// `trainable_token_indices` is set, adds the token rows. Throws when the model
// already has an adapter or an index is outside the vocabulary.
void add_lora(LlamaModelImpl& model, const LoraConfig& config);
bool has_lora(const LlamaModelImpl& model);
// The LoraConfig add_lora was given (InvalidArgument without an adapter).
const LoraConfig& lora_config(const LlamaModelImpl& model);
// Freezes every base parameter and unfreezes the adapter's (LoRA A/B and the
// token rows): after this only those receive gradients.
void mark_only_adapter_trainable(LlamaModelImpl& model);
void set_adapter_enabled(LlamaModelImpl& model, bool enabled);
void merge_adapter(LlamaModelImpl& model);
void unmerge_adapter(LlamaModelImpl& model);
// Folds the adapter into the base weights for good and removes the wrappers.
void merge_and_unload(LlamaModelImpl& model);

// ---- PEFT adapter directories: adapter_config.json + adapter_model.safetensors
// Keys: base_model.model.<HF name>.lora_A.weight / .lora_B.weight and
// base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.

// Writes the adapter atomically: the files go to a temporary directory that
// replaces `dir` by rename, so a reader sees the old adapter or the new one.
void save_adapter(const LlamaModelImpl& model, const std::string& dir, const std::string& base_model = "");
// Reads `dir`/adapter_config.json (FormatError naming the file when it is not
// a LoRA adapter flashback can apply).
LoraConfig read_adapter_config(const std::string& dir);
// Adds the adapter in `dir` to `model` (which must have none) and loads its
// weights; every tensor is checked against the model (FormatError naming the
// file: another architecture, a rank that disagrees with the config, token
// rows outside the vocabulary). merge = fold it into the weights.
void load_adapter(LlamaModelImpl& model, const std::string& dir, bool merge = false);

}  // namespace flashback
