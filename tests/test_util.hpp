// Helpers shared by the LibTorch tests.
#pragma once

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>

#include "flashback/config.hpp"
#include "flashback/generate.hpp"
#include "flashback/llama.hpp"
#include "flashback/lora.hpp"
#include "shared_path.hpp"

namespace flashback::test {

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// max |a - b| / (|b| + floor): the error in units of the reference's magnitude. A result rounded
// once to bf16 is off by at most 2^-8 of its value, whatever the value, so bf16 bounds are relative.
inline double max_rel_diff(const at::Tensor& a, const at::Tensor& b, double floor) {
  at::Tensor bd = b.to(at::kDouble);
  return ((a.to(at::kDouble) - bd).abs() / (bd.abs() + floor)).max().item<double>();
}

// A fresh empty directory under $TMPDIR, removed by the OS eventually.
inline std::string temp_dir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/flashback-" + tag + "-XXXXXX";
  char* p = ::mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

// Greedy, no EOS stop: every run generates exactly n tokens.
inline GenerateOptions greedy(int64_t n) {
  GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  return g;
}

// A small random Llama config; GQA whenever kv_heads < heads.
inline LlamaConfig tiny_config(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t vocab = 97,
                               int64_t max_pos = 128, bool tied = false) {
  LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = hidden * 2 + 6;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = max_pos;
  c.tie_word_embeddings = tied;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  return c;
}

// LoRA on every target projection (alpha 8, no dropout) and the last two rows of a `vocab`-row embedding
// (the marks) as trainable token rows.
inline LoraConfig lora_all_targets(int64_t vocab, int64_t r = 4) {
  LoraConfig c;
  c.r = r;
  c.alpha = 8;
  c.dropout = 0.0;
  c.target_modules = lora_target_names();
  c.trainable_token_indices = {vocab - 2, vocab - 1};
  return c;
}

// Moves every LoRA B (zero at start) and the token rows, so the adapter does something.
inline void perturb_adapter(LlamaForCausalLMImpl& m, uint64_t seed) {
  at::manual_seed(seed);
  at::NoGradGuard g;
  for (auto& item : m.named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    if (name.find("lora_B") != std::string::npos || name.find("trainable_tokens_delta") != std::string::npos)
      p.add_(at::randn_like(p) * 0.1);
  }
}

}  // namespace flashback::test
