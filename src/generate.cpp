#include "flashback/generate.hpp"

#include <string>

#include "flashback/llama.hpp"

namespace flashback {

GenerateResult generate(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options, const std::function<bool(int64_t)>& on_token,
                        const MarkingToken& marks) {
  if (prompt.empty()) throw InvalidArgument("the prompt is empty (it needs at least one token)");
  if (options.max_new_tokens < 0) throw InvalidArgument("the number of tokens to generate must be >= 0");
  // The last token sampled is never encoded: it needs no slot.
  const int64_t need = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(options.max_new_tokens - 1, 0);
  const int64_t limit = std::min(cache.capacity(), model.config().max_position_embeddings);
  if (need > limit)
    throw InvalidArgument("prompt (" + std::to_string(prompt.size()) + " tokens) + " +
                          std::to_string(options.max_new_tokens) + " new tokens exceed the maximum of " +
                          std::to_string(limit) + " positions");
  // The context keeps one position free after the prompt (the stride below):
  // a prompt that fills every position would slide instead of generating.
  if (static_cast<int64_t>(prompt.size()) >= limit && options.max_new_tokens > 0)
    throw InvalidArgument("the prompt (" + std::to_string(prompt.size()) + " tokens) fills all " +
                          std::to_string(limit) + " positions: no room to generate");
  // No retrieval ever comes, so the room kept for one (the stride) is one token.
  RalmOptions window;
  window.marks = false;
  window.max_length = limit;
  window.stride = 1;
  window.window_keep = 1.0;
  NoRetrievalContext<LlamaForCausalLMImpl> context(model, cache, marks, window);
  NoDocuments none;
  return generate(context, none, prompt, options, on_token);
}

at::Tensor prefill(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& tokens) {
  if (tokens.empty()) throw InvalidArgument("prefill needs at least one token");
  at::Tensor ids = at::tensor(tokens, at::kLong).view({1, -1});  // [1, T], on the host: checked there, copied once
  at::Tensor h = model.hidden_states(ids, {}, &cache);           // [1, T, C]
  return model.logits(h.select(1, h.size(1) - 1)).squeeze(0);    // [V]
}

at::Tensor decode_step(LlamaForCausalLMImpl& model, KVCacheStore& cache, int64_t token) {
  at::Tensor ids = at::full({1, 1}, token, at::kLong);  // [1, 1], on the host (as prefill's)
  return model.forward(ids, {}, cache).view({-1});      // [V]
}

}  // namespace flashback
