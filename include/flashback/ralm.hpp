// Retrieval-augmented generation and evaluation, generic over the context
// (AppendingContext, PrependingContext, NoRetrievalContext): prepend and
// append differ in one class, not in two loops.
//
// Every `stride` tokens the last `query_tokens` tokens, decoded to text, are
// the query; the top-k passages, each cut to `doc_tokens` tokens, are placed
// by the context. A retrieval that returns nothing leaves no document.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "flashback/context.hpp"
#include "flashback/error.hpp"
#include "flashback/retrieval/retriever.hpp"
#include "flashback/sampling.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

struct RalmOptions {
  int64_t stride = 16;        // s: tokens between retrievals
  int64_t query_tokens = 32;  // l: the query is the last l tokens
  int64_t doc_tokens = 128;   // each passage is cut to this many tokens
  int64_t k = 1;              // passages per retrieval

  void validate() const {
    if (stride < 1) throw InvalidArgument("stride must be >= 1");
    if (query_tokens < 1) throw InvalidArgument("query tokens must be >= 1");
    if (doc_tokens < 1) throw InvalidArgument("doc tokens must be >= 1");
    if (k < 1) throw InvalidArgument("k must be >= 1");
  }
};

// Turns a query into the documents a context places: retrieval + tokenizing.
class DocumentSource {
 public:
  DocumentSource(Retriever* retriever, const Tokenizer& tokenizer, RalmOptions options)
      : retriever_(retriever), tok_(&tokenizer), options_(options) {
    options_.validate();
  }

  // Documents for the text `ids` seen so far (empty when there is no retriever or no query text).
  std::vector<std::vector<int64_t>> for_text(const std::vector<int64_t>& ids, double* seconds) {
    std::vector<std::vector<int64_t>> docs;
    if (!retriever_) return docs;
    auto t0 = std::chrono::steady_clock::now();
    const size_t l = static_cast<size_t>(options_.query_tokens);
    std::vector<int32_t> q(ids.end() - std::min(l, ids.size()), ids.end());
    const std::string query = tok_->decode(q);
    last_query_ = query;
    last_passages_.clear();
    if (query.find_first_not_of(" \t\n\r") != std::string::npos) {
      last_passages_ = retriever_->retrieve(query, options_.k);
      for (const auto& p : last_passages_) {
        std::vector<int32_t> d = tok_->encode(p.document());
        if (static_cast<int64_t>(d.size()) > options_.doc_tokens) d.resize(static_cast<size_t>(options_.doc_tokens));
        if (!d.empty()) docs.emplace_back(d.begin(), d.end());
      }
    }
    if (seconds) *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return docs;
  }

  bool retrieves() const { return retriever_ != nullptr; }
  const std::string& last_query() const { return last_query_; }
  const std::vector<Passage>& last_passages() const { return last_passages_; }
  const RalmOptions& options() const { return options_; }

 private:
  Retriever* retriever_;
  const Tokenizer* tok_;
  RalmOptions options_;
  std::string last_query_;
  std::vector<Passage> last_passages_;
};

// Fails early when the largest document block (k documents of doc_tokens,
// the marks) plus the stride leaves no room for the input in the window.
template <class Context>
void check_budget(const Context& ctx, const DocumentSource& source) {
  if (!source.retrieves()) return;
  const RalmOptions& o = source.options();
  const int64_t block = o.k * o.doc_tokens + (ctx.options().marks ? 2 : 0);
  const int64_t max_length = ctx.options().max_length;
  if (block + o.stride + 1 > max_length)
    throw InvalidArgument(std::to_string(o.k) + " document(s) of up to " + std::to_string(o.doc_tokens) +
                          " tokens" + (ctx.options().marks ? " with marks" : "") + " plus the stride of " +
                          std::to_string(o.stride) + " leave no room for the input within max length " +
                          std::to_string(max_length));
}

struct RalmResult {
  std::vector<int64_t> ids;  // generated ids only
  ContextStats stats;
};

// Generates up to `max_new_tokens` after `prompt` (BOS first), retrieving
// every stride tokens; marking tokens are never sampled. `on_token` may stop
// generation by returning false.
template <class Context>
RalmResult ralm_generate(Context& ctx, DocumentSource& source, const std::vector<int64_t>& prompt,
                         int64_t max_new_tokens, Sampler& sampler, const std::vector<int64_t>& stop_ids = {},
                         const std::function<bool(int64_t)>& on_token = {}) {
  if (max_new_tokens < 0) throw InvalidArgument("the number of tokens to generate must be >= 0");
  check_budget(ctx, source);
  c10::InferenceMode guard;
  ctx.reset(prompt);
  RalmResult r;
  const int64_t s = source.options().stride;
  at::Tensor logits;
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    if (i % s == 0) {
      auto docs = source.for_text(ctx.text(), &ctx.stats().retrieve_seconds);
      logits = ctx.place(docs);
    }
    const int64_t next = sampler(ctx.marks().strip(logits));
    r.ids.push_back(next);
    const bool stop = (on_token && !on_token(next)) ||
                      std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end();
    if (stop || i + 1 == max_new_tokens) break;
    logits = ctx.append({next}).select(0, 0);
  }
  r.stats = ctx.stats();
  return r;
}

struct EvalResult {
  double nll = 0;      // summed negative log-likelihood (nats)
  int64_t tokens = 0;  // scored tokens
  ContextStats stats;
  double mean_nll() const { return tokens ? nll / double(tokens) : 0.0; }
  double ppl() const { return std::exp(mean_nll()); }
};

// In-Context-RALM style perplexity: `ids` (BOS first) is scored in blocks of
// `stride` tokens; each block's context is the text before it (what the
// window leaves after the documents), its query the last query_tokens before
// it, its documents placed by the context; only block tokens are scored, with
// the marking tokens excluded from the softmax. progress(done, total) is
// called after each block.
template <class Context>
EvalResult ralm_evaluate(Context& ctx, DocumentSource& source, const std::vector<int64_t>& ids,
                         const std::function<void(int64_t, int64_t)>& progress = {}) {
  if (ids.size() < 2) throw InvalidArgument("the text to evaluate has no token to score");
  check_budget(ctx, source);
  c10::InferenceMode guard;
  const int64_t s = source.options().stride, n = static_cast<int64_t>(ids.size());
  ctx.reset({ids[0]});
  EvalResult r;
  for (int64_t b = 1; b < n; b += s) {
    const int64_t e = std::min(b + s, n);
    std::vector<int64_t> block(ids.begin() + b, ids.begin() + e);
    auto docs = source.for_text(ctx.text(), &ctx.stats().retrieve_seconds);
    // place() predicts block[0]; appending the block (it joins the text, as
    // generated tokens do) predicts block[1:] from all rows but the last.
    at::Tensor first = ctx.place(docs).unsqueeze(0);                                   // [1, V]
    at::Tensor rows = ctx.append(block, /*all_rows=*/true);                            // [|block|, V]
    at::Tensor logits = at::cat({first, rows.narrow(0, 0, rows.size(0) - 1)}, 0);      // [|block|, V]
    at::Tensor logp = at::log_softmax(ctx.marks().strip(logits).to(at::kDouble), -1);  // [|block|, V']
    at::Tensor target = at::tensor(block, at::kLong).to(logp.device()).unsqueeze(1);   // [|block|, 1]
    r.nll -= logp.gather(1, target).sum().item<double>();
    r.tokens += e - b;
    if (progress) progress(e - 1, n - 1);
  }
  r.stats = ctx.stats();
  return r;
}

}  // namespace flashback
