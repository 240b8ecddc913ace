// PEFT adapters against a small model (the shape of ../shared's tiny-llama-gqa-marks: vocab 514,
// hidden 64, 3 layers, 8 heads, 2 KV heads): adapter_config.json and adapter_model.safetensors
// are read, every tensor checked against the model, and the adapter added (merged or not).
// Input: a little-endian u16 w, then n = w & 0x7FFF bytes of adapter_config.json, then the
// safetensors file; w's top bit asks for the adapter merged.
#include "flashback/llama.hpp"
#include "flashback/peft.hpp"
#include "harness.hpp"

using namespace flashback;

FLASHBACK_FUZZ_TARGET(adapter) {
  static const std::string dir = fuzz::scratch_subdir("adapter");
  if (size < 2) return;
  const size_t word = data[0] | (size_t(data[1]) << 8);
  const bool merge = word & 0x8000;
  const size_t n = std::min(word & 0x7FFF, size - 2);
  const char* p = reinterpret_cast<const char*>(data + 2);
  fuzz::write_input({p, n}, "adapter/adapter_config.json");
  fuzz::write_input({p + n, size - 2 - n}, "adapter/adapter_model.safetensors");
  fuzz::expect_clean([&] { read_adapter_config(dir).validate("adapter_config.json"); });
  LlamaConfig c;
  c.vocab_size = 514;
  c.hidden_size = 64;
  c.intermediate_size = 176;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  LlamaForCausalLM model(c);
  fuzz::expect_clean([&] { load_adapter(*model, dir, merge); });
}
