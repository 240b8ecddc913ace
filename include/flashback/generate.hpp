// Plain autoregressive generation (no retrieval): prefill once, then decode
// one token at a time against the cache.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "flashback/kv_cache.hpp"
#include "flashback/llama.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/sampling.hpp"

namespace flashback {

// Encodes `tokens` (appended to the cache at the next positions) and returns
// the logits of the last one: [V] fp32.
at::Tensor prefill(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& tokens);
// One decode step for `token` at the next position: [V] fp32.
at::Tensor decode_step(LlamaForCausalLMImpl& model, KVCacheStore& cache, int64_t token);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  bool stop_at_eos = true;
  MarkingToken marks;  // when present, the two mark rows are never sampled
};

struct GenerateResult {
  std::vector<int64_t> ids;  // generated ids only (an EOS that stopped generation included)
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Generates after `prompt` (which must be non-empty and fit in the cache with
// the new tokens). `on_token` sees each id as it is chosen; returning false
// stops generation.
GenerateResult generate(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options, const std::function<bool(int64_t)>& on_token = {});

}  // namespace flashback
