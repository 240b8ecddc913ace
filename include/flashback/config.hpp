// Model hyper-parameters, read from a Hugging Face config.json (or derived from
// a llama2.c / GGUF header) and validated once, up front.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashback {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;  // HF default: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::string rope_type = "default";  // "default" or "linear"
  double rope_factor = 1.0;           // linear scaling: positions / factor
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  std::string torch_dtype = "float32";  // "float32" | "float16" | "bfloat16"

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t eos_token_id() const { return eos_token_ids.empty() ? -1 : eos_token_ids.front(); }
  bool is_eos(int64_t id) const;

  // Throws InvalidArgument(source + ": ...") naming the first bad field.
  void validate(const std::string& source = "config") const;

  // Parses HF config.json text. Reads both spellings transformers uses
  // (top-level rope_theta / torch_dtype and v5's rope_parameters / dtype).
  // Unsupported architectures (biases, other activations, unknown RoPE
  // scaling) are refused with a clear FormatError.
  static LlamaConfig from_json(const std::string& text, const std::string& source);
  static LlamaConfig from_file(const std::string& path);
  // A config from a compact spec for benchmarks and tests, e.g.
  // "hidden=768,layers=12,heads=12,kv_heads=12,ffn=2048,vocab=32000,max_pos=4096".
  // Unlisted fields keep Llama-2-7B's values; head_dim = hidden / heads.
  static LlamaConfig from_spec(const std::string& spec);
  // HF-compatible config.json text.
  std::string to_json() const;
  // Count of parameters of the model this config describes.
  int64_t num_parameters() const;
};

}  // namespace flashback
