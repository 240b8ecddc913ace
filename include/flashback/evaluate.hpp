// Retrieval-augmented perplexity, as In-Context RALM and FlashBack measure it.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "flashback/context.hpp"
#include "flashback/documents.hpp"
#include "flashback/error.hpp"
#include "flashback/generate.hpp"

namespace flashback {

struct EvalResult {
  double nll_sum = 0;  // summed negative log-likelihood of the scored tokens (nats)
  int64_t tokens = 0;  // scored tokens
  ContextStats stats;
  double nll() const { return tokens ? nll_sum / double(tokens) : 0.0; }  // per token
  double ppl() const { return std::exp(nll()); }
};

// `ids` (BOS first) is scored in blocks of `stride` tokens. Before each block
// the context places the documents retrieved for the text before it (when
// its mode retrieves); place() predicts the block's first token and
// appending the block predicts the rest, so the block joins the text exactly
// as generated tokens do. Only block tokens are scored, with the marking
// tokens excluded from the softmax. progress(done, total) after each block.
template <class Model>
EvalResult evaluate(ContextBase<Model>& context, DocumentSource& documents, const std::vector<int64_t>& ids,
                    const std::function<void(int64_t, int64_t)>& progress = {}) {
  if (ids.size() < 2) throw InvalidArgument("the text to evaluate has no token to score");
  context.check_documents_fit(documents.max_tokens());
  c10::InferenceMode guard;
  const int64_t s = context.options().stride, n = static_cast<int64_t>(ids.size());
  context.reset({ids[0]});
  EvalResult r;
  for (int64_t b = 1; b < n; b += s) {
    const int64_t e = std::min(b + s, n);
    std::vector<int64_t> block(ids.begin() + b, ids.begin() + e);
    at::Tensor first = context.place(retrieve(context, documents)).unsqueeze(0);           // [1, V]
    at::Tensor rows = context.append(block, /*all_rows=*/true);                            // [|block|, V]
    at::Tensor logits = at::cat({first, rows.narrow(0, 0, rows.size(0) - 1)}, 0);          // [|block|, V]
    at::Tensor logp = at::log_softmax(context.marks().strip(logits).to(at::kDouble), -1);  // [|block|, V']
    at::Tensor target = at::tensor(block, at::kLong).to(logp.device()).unsqueeze(1);       // [|block|, 1]
    r.nll_sum -= logp.gather(1, target).sum().item<double>();
    r.tokens += e - b;
    if (progress) progress(e - 1, n - 1);
  }
  r.stats = context.stats();
  return r;
}

}  // namespace flashback
