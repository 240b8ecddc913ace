// PEFT adapter directories: adapter_config.json + adapter_model.safetensors,
// as HF's PEFT writes and reads them, so adapters move between flashback and
// PEFT both ways.
//
// Keys: base_model.model.<HF name>.lora_A.weight / .lora_B.weight and
// base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.
#pragma once

#include <optional>
#include <string>

#include "flashback/lora.hpp"

namespace flashback {

// Writes the model's adapter as a whole (io/atomic_dir.hpp): a reader sees
// the old adapter or the new one. dtype: the stored tensors' type (unset: the
// parameters'; bf16 halves a shipped adapter, as PEFT saves a bf16 model's).
void save_adapter(const LlamaForCausalLMImpl& model, const std::string& dir, const std::string& base_model = "",
                  std::optional<at::ScalarType> dtype = std::nullopt);
// adapter_config.json's text for `config` (PEFT's LoraConfig fields).
std::string adapter_config_json(const LoraConfig& config, const std::string& base_model = "");
// Reads `dir`/adapter_config.json (FormatError naming the file when it is not
// a LoRA adapter flashback can apply).
LoraConfig read_adapter_config(const std::string& dir);
// Adds the adapter in `dir` to `model` (which must have none) and loads its
// weights; every tensor is checked against the model before the model is
// touched (FormatError naming the file: another architecture, a rank that
// disagrees with the config, token rows outside the vocabulary). merge =
// fold it into the weights.
void load_adapter(LlamaForCausalLMImpl& model, const std::string& dir, bool merge = false);

}  // namespace flashback
