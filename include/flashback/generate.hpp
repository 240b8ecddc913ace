// Generation: the one loop, for retrieval-augmented and plain generation
// alike, and the two primitives under plain decoding.
//
//   generate(context, documents, prompt, options)   every `stride` tokens the
//     context asks `documents` for a retrieval (when its mode retrieves) and
//     places them; between retrievals each sampled token is appended (the
//     last one before a retrieval is held for the placement to encode). The
//     CLI's ralm and generate commands, Python's flashback.generate and the
//     `bench ralm` speed test all run this loop.
//   prefill / decode_step   one forward into a cache: what a context does
//     underneath, for callers that manage positions themselves.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "flashback/context.hpp"
#include "flashback/documents.hpp"
#include "flashback/error.hpp"
#include "flashback/kv_cache.hpp"
#include "flashback/marking_token.hpp"
#include "flashback/sampling.hpp"

namespace flashback {

class LlamaForCausalLMImpl;

// The documents `context` places next: asked of `documents` for the text so
// far when the context's mode retrieves (the time goes to retrieve_seconds),
// none otherwise. Shared by the generation and evaluation loops.
template <class Model>
std::vector<std::vector<int64_t>> retrieve(ContextBase<Model>& context, DocumentSource& documents) {
  if (!context.retrieves()) return {};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::vector<int64_t>> docs = documents.documents(context.text());
  context.stats().retrieve_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return docs;
}

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;  // greedy by default
  bool stop_at_eos = true;   // stop after sampling one of the model's EOS ids (config eos_token_id)
};

struct GenerateResult {
  std::vector<int64_t> ids;  // generated ids only (an EOS that stopped generation included)
  ContextStats stats;        // the first place() encodes the prompt: reencode_seconds is the prefill
};

// Generates up to max_new_tokens after `prompt` (BOS first) in `context`;
// marking tokens are never sampled. `on_token` sees each id as it is chosen
// and may stop generation by returning false.
template <class Model>
GenerateResult generate(ContextBase<Model>& context, DocumentSource& documents, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options, const std::function<bool(int64_t)>& on_token = {}) {
  if (options.max_new_tokens < 0) throw InvalidArgument("the number of tokens to generate must be >= 0");
  context.check_documents_fit(documents.max_tokens());
  c10::InferenceMode guard;
  context.reset(prompt);
  Sampler sample(options.sampling);
  const int64_t stride = context.options().stride;
  GenerateResult r;
  at::Tensor logits;  // [V] for the next token
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    if (i == 0 || (context.retrieves() && i % stride == 0)) logits = context.place(retrieve(context, documents));
    const int64_t next = sample(context.marks().strip(logits));
    r.ids.push_back(next);
    const bool stop = (on_token && !on_token(next)) || (options.stop_at_eos && context.model().config().is_eos(next));
    if (stop || i + 1 == options.max_new_tokens) break;
    if (context.retrieves() && (i + 1) % stride == 0)
      context.hold({next});  // the retrieval next encodes it with the recent tokens
    else
      logits = context.append({next}).select(0, 0);
  }
  r.stats = context.stats();
  return r;
}

// Plain generation into `cache` (cleared first): the loop above over a
// no-retrieval context. The prompt plus the new tokens must fit the cache and
// the model's positions. `marks`: rows never to sample (a model with marking
// tokens).
GenerateResult generate(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options, const std::function<bool(int64_t)>& on_token = {},
                        const MarkingToken& marks = {});

// Encodes `tokens` (appended to the cache at the next positions) and returns
// the logits of the last one: [V] fp32.
at::Tensor prefill(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& tokens);
// One decode step for `token` at the next position: [V] fp32.
at::Tensor decode_step(LlamaForCausalLMImpl& model, KVCacheStore& cache, int64_t token);

}  // namespace flashback
