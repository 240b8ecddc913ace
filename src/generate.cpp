#include "flashback/generate.hpp"

#include <c10/core/InferenceMode.h>

#include <chrono>
#include <string>

#include "flashback/error.hpp"

namespace flashback {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

at::Tensor prefill(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& tokens) {
  if (tokens.empty()) throw InvalidArgument("prefill needs at least one token");
  at::Tensor ids = at::tensor(tokens, at::kLong).view({1, -1}).to(model.device());  // [1, T]
  at::Tensor h = model.hidden_states(ids, {}, &cache);                              // [1, T, C]
  return model.logits(h.select(1, h.size(1) - 1)).squeeze(0);                       // [V]
}

at::Tensor decode_step(LlamaForCausalLMImpl& model, KVCacheStore& cache, int64_t token) {
  at::Tensor ids = at::full({1, 1}, token, at::TensorOptions().dtype(at::kLong).device(model.device()));  // [1, 1]
  return model.forward(ids, {}, cache).view({-1});                                                        // [V]
}

GenerateResult generate(LlamaForCausalLMImpl& model, KVCacheStore& cache, const std::vector<int64_t>& prompt,
                        const GenerateOptions& options, const std::function<bool(int64_t)>& on_token) {
  if (prompt.empty()) throw InvalidArgument("the prompt is empty (it needs at least a BOS token)");
  if (options.max_new_tokens < 0) throw InvalidArgument("the number of tokens to generate must be >= 0");
  const int64_t need = cache.size() + static_cast<int64_t>(prompt.size()) + std::max<int64_t>(options.max_new_tokens - 1, 0);
  const int64_t limit = std::min(cache.capacity(), model.config().max_position_embeddings);
  if (need > limit)
    throw InvalidArgument("prompt (" + std::to_string(prompt.size()) + " tokens) + " +
                          std::to_string(options.max_new_tokens) + " new tokens exceed the maximum of " +
                          std::to_string(limit) + " positions");
  c10::InferenceMode guard;
  Sampler sample(options.sampling);
  GenerateResult r;
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor logits = prefill(model, cache, prompt);  // [V]
  r.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    if (i > 0) logits = decode_step(model, cache, r.ids.back());
    const int64_t next = sample(options.marks.strip(logits));
    r.ids.push_back(next);
    if (on_token && !on_token(next)) break;
    if (options.stop_at_eos && model.config().is_eos(next)) break;
  }
  r.decode_seconds = seconds_since(t0);
  return r;
}

}  // namespace flashback
