// Checkpoints in, checkpoints out. Every format meets the model in one place:
// a reader yields a Checkpoint (config + tensors with HF names and HF's
// rotate_half q/k layout), and the model is built from that alone.
//
//   HF directory (config.json + model.safetensors | sharded index) ─┐
//   llama2.c .bin (v0 / v1, Meta RoPE layout: q/k permuted) ─────────┼─▶ Checkpoint ─▶ LlamaForCausalLM
//   GGUF v2/v3 (F32/F16/BF16, Meta RoPE layout: q/k permuted) ───────┘
//
// and out again: save_hf_directory, save_gguf.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <optional>
#include <string>

#include "flashback/config.hpp"
#include "flashback/llama.hpp"
#include "flashback/quantized.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

struct Checkpoint {
  std::string path;
  std::string format;  // "hf", "llama2c", "gguf"
  LlamaConfig config;
  std::map<std::string, at::Tensor> tensors;  // HF names, CPU, the file's dtype (may alias the mapped file)
  // keep_quantized: the layers' projections in their GGUF blocks instead of in `tensors`; and
  // "lm_head.weight", the head's blocks (the embedding's when tied) beside its dense copy in `tensors`
  // (marking tokens may grow the vocabulary: load_model uses the blocks only while they match it).
  std::map<std::string, QuantizedMatrix> quantized;
  std::optional<Tokenizer> tokenizer;         // a tokenizer embedded in the file (GGUF)
};

// Detects the format from the path (directory, or the file's magic bytes).
// Everything is validated; problems throw FormatError naming the file.
// keep_quantized: a GGUF's layer projections of the types kept in blocks (quantized.hpp) go to
// `quantized` as they are stored (the rest is dequantized as always).
Checkpoint read_checkpoint(const std::string& path, bool keep_quantized = false);

struct LoadOptions {
  std::optional<at::ScalarType> dtype;  // unset: the checkpoint's, float16 -> float32 where unsupported
  at::Device device = at::kCPU;
  // The decoder layers' Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K projections of a GGUF stay in their
  // blocks (quantized.hpp): inference on the CPU, adapters unmerged.
  bool keep_quantized = false;
};

// The compute dtype `options` resolves to for a checkpoint of `config`.
at::ScalarType resolve_dtype(const LlamaConfig& config, const LoadOptions& options);

// Builds the model and copies every weight in, strictly: a missing tensor, a
// shape that disagrees with the config, or an unexpected tensor is an error.
LlamaForCausalLM load_model(const Checkpoint& checkpoint, const LoadOptions& options = {});
LlamaForCausalLM load_model(const std::string& path, const LoadOptions& options = {});
void load_weights(LlamaForCausalLMImpl& model, const std::map<std::string, at::Tensor>& tensors, const std::string& source);

// The model's weights by HF name (the parameters themselves, not copies).
// InvalidArgument for a model that keeps quantized weights (no dense copy to give).
std::map<std::string, at::Tensor> model_tensors(LlamaForCausalLMImpl& model);

// All tensors of one safetensors file (CPU, the file's dtypes; they may alias
// the mapped file), and the atomic writer for such a map.
std::map<std::string, at::Tensor> load_safetensors(const std::string& path);
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes an HF-layout model directory: config.json, generation_config.json,
// model.safetensors and, when a tokenizer is given, tokenizer.model and
// tokenizer_config.json. The directory is replaced as a whole
// (io/atomic_dir.hpp); an existing one must be empty or hold a config.json.
void save_hf_directory(const std::string& dir, const LlamaConfig& config,
                       const std::map<std::string, at::Tensor>& tensors, const Tokenizer* tokenizer);

// Writes the model as one GGUF v3 file in llama.cpp's layout (its tensor names, Q and K rows in Meta's RoPE
// order, norms in F32, the tokenizer's vocabulary embedded), the weight matrices in `dtype`: float32,
// float16 or bfloat16. Atomic. InvalidArgument for what llama.cpp's llama architecture cannot hold (a
// head_dim other than hidden_size / num_attention_heads) or a tokenizer larger than the vocabulary.
void save_gguf(const std::string& path, const LlamaConfig& config, const std::map<std::string, at::Tensor>& tensors,
               const Tokenizer& tokenizer, at::ScalarType dtype);

// The tokenizer that goes with a model: `tokenizer_path` when given, else a
// tokenizer.model or tokenizer.json in the model directory, the tokenizer
// embedded in a GGUF file, or a tokenizer.model / tok<V>.model /
// tokenizer.bin / tok<V>.bin next to the model file. Checked against the
// model's vocabulary size.
Tokenizer load_tokenizer(const Checkpoint& checkpoint, const std::string& tokenizer_path = "");

}  // namespace flashback
