// Where a retrieval's documents come from. The generation and evaluation
// loops (generate.hpp, evaluate.hpp) ask a DocumentSource at every retrieval
// and never know which one it is:
//
//   RetrievedDocuments  the paper's retrieval: the last query_tokens tokens,
//                       decoded, are the query; the top-k passages, each
//                       encoded and cut to doc_tokens, are the documents
//   RandomDocuments     the paper's speed test: a fresh random document
//   FixedDocuments      given documents, one list per retrieval (tests, replays)
//   NoDocuments         nothing (plain generation)
//
// Thread-safety: a source belongs to one sequence, like its context (it
// remembers the last query, the history, a generator's state, the next
// list): not thread-safe. Many RetrievedDocuments may share one Retriever,
// which is (retriever.hpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/options.hpp"
#include "flashback/retrieval/retriever.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

class DocumentSource {
 public:
  virtual ~DocumentSource() = default;
  // The documents (token lists, possibly none) for a retrieval after `text`,
  // the text so far (BOS first).
  virtual std::vector<std::vector<int64_t>> documents(const std::vector<int64_t>& text) = 0;
  // The most document tokens one retrieval may bring: the loops check before
  // they start that the largest block still leaves the window room.
  virtual int64_t max_tokens() const = 0;
};

// One retrieval of RetrievedDocuments: where, for what, and what came back.
struct RetrievalRecord {
  int64_t position = 0;             // tokens of text before the retrieval
  std::string query;                // the decoded query
  std::vector<Passage> passages;    // best first (the documents are their first doc_tokens tokens)
};

class RetrievedDocuments : public DocumentSource {
 public:
  // Uses options.query_tokens, doc_tokens and k. Retriever and tokenizer must
  // outlive the source.
  RetrievedDocuments(Retriever& retriever, const Tokenizer& tokenizer, const RalmOptions& options)
      : retriever_(&retriever), tok_(&tokenizer), options_(options) {
    options_.validate();
  }

  std::vector<std::vector<int64_t>> documents(const std::vector<int64_t>& text) override {
    const size_t l = static_cast<size_t>(options_.query_tokens);
    std::vector<int32_t> q(text.end() - std::min(l, text.size()), text.end());
    last_query_ = tok_->decode(q);
    last_passages_.clear();
    std::vector<std::vector<int64_t>> docs;
    if (last_query_.find_first_not_of(" \t\n\r") == std::string::npos) return docs;  // nothing to ask
    last_passages_ = retriever_->retrieve(last_query_, options_.k);
    if (keep_history_) history_.push_back({static_cast<int64_t>(text.size()), last_query_, last_passages_});
    for (const auto& p : last_passages_) {
      std::vector<int32_t> d = tok_->encode(p.document());
      if (static_cast<int64_t>(d.size()) > options_.doc_tokens) d.resize(static_cast<size_t>(options_.doc_tokens));
      if (!d.empty()) docs.emplace_back(d.begin(), d.end());
    }
    return docs;
  }

  int64_t max_tokens() const override { return options_.k * options_.doc_tokens; }
  const std::string& last_query() const { return last_query_; }
  const std::vector<Passage>& last_passages() const { return last_passages_; }
  // Every retrieval since the last clear_history(), when keep_history(true)
  // (off by default: an evaluation makes thousands).
  void keep_history(bool on) { keep_history_ = on; }
  const std::vector<RetrievalRecord>& history() const { return history_; }
  void clear_history() { history_.clear(); }

 private:
  Retriever* retriever_;
  const Tokenizer* tok_;
  RalmOptions options_;
  std::string last_query_;
  std::vector<Passage> last_passages_;
  bool keep_history_ = false;
  std::vector<RetrievalRecord> history_;
};

class RandomDocuments : public DocumentSource {
 public:
  // One document of `doc_tokens` ids drawn uniformly from [low, high) per retrieval.
  RandomDocuments(int64_t doc_tokens, int64_t low, int64_t high, uint64_t seed)
      : doc_tokens_(doc_tokens), low_(low), high_(high), gen_(at::make_generator<at::CPUGeneratorImpl>(seed)) {
    if (doc_tokens < 1 || low < 0 || high <= low) throw InvalidArgument("RandomDocuments: bad length or id range");
  }

  std::vector<std::vector<int64_t>> documents(const std::vector<int64_t>&) override {
    at::Tensor t = at::randint(low_, high_, {doc_tokens_}, gen_, at::kLong);  // [doc]
    return {std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + doc_tokens_)};
  }
  int64_t max_tokens() const override { return doc_tokens_; }

 private:
  int64_t doc_tokens_, low_, high_;
  at::Generator gen_;
};

class FixedDocuments : public DocumentSource {
 public:
  // per_retrieval[i]: the documents of the i-th retrieval; later ones get none.
  explicit FixedDocuments(std::vector<std::vector<std::vector<int64_t>>> per_retrieval)
      : lists_(std::move(per_retrieval)) {}

  std::vector<std::vector<int64_t>> documents(const std::vector<int64_t>& text) override {
    texts.push_back(text);
    return next_ < lists_.size() ? lists_[next_++] : std::vector<std::vector<int64_t>>{};
  }
  int64_t max_tokens() const override {
    int64_t m = 0;
    for (const auto& docs : lists_) {
      int64_t n = 0;
      for (const auto& d : docs) n += static_cast<int64_t>(d.size());
      m = std::max(m, n);
    }
    return m;
  }

  std::vector<std::vector<int64_t>> texts;  // the text each retrieval was asked for

 private:
  std::vector<std::vector<std::vector<int64_t>>> lists_;
  size_t next_ = 0;
};

class NoDocuments : public DocumentSource {
 public:
  std::vector<std::vector<int64_t>> documents(const std::vector<int64_t>&) override { return {}; }
  int64_t max_tokens() const override { return 0; }
};

}  // namespace flashback
