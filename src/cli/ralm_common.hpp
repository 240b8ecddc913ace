// Shared by `flashback ralm` and `flashback eval`: model + tokenizer + marks
// loading, the retriever, the RALM flags, and the stats as JSON.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "flashback/flashback.hpp"
#include "flashback/retrieval/retriever.hpp"

namespace flashback::cli {

struct RalmArgs {
  std::string model, tokenizer, index, mode = "append", dtype, forbidden_titles, encoder_model, adapter;
  bool adapter_unmerged = false;
  bool marks = true;
  bool no_kv_reuse = false;
  int64_t stride = 16, query_tokens = 32, doc_tokens = 128, k = 1, max_length = 0;
  double window_keep = 0.5;
  int threads = 0;
  bool json = false;
};

// Adds the flags both commands share.
void add_ralm_flags(CLI::App* cmd, RalmArgs& a);

// The model, its tokenizer and marking tokens as the flags ask: with marks
// on, a model without them gets two mean-initialised rows.
struct RalmModel {
  LlamaForCausalLM model{nullptr};
  Tokenizer tokenizer;
  MarkingToken marks;
};
RalmModel load_ralm_model(const RalmArgs& a);

// The index in `dir` (BM25, or dense with its encoder model: `encoder_model`,
// else the one recorded in the index), with the forbidden titles applied.
std::unique_ptr<Retriever> open_retriever(const std::string& dir, const std::string& encoder_model,
                                          const std::string& forbidden_titles);

ContextOptions context_options(const RalmArgs& a);
RalmOptions ralm_options(const RalmArgs& a);
nlohmann::ordered_json stats_json(const ContextStats& s);

// Runs `fn` with the context type the mode names: fn(AppendingContext<...>&) etc.
template <class Fn>
auto with_context(ContextMode mode, LlamaForCausalLMImpl& model, KVCacheStore& cache, const MarkingToken& marks,
                  const ContextOptions& co, Fn&& fn) {
  switch (mode) {
    case ContextMode::Append: {
      AppendingContext<LlamaForCausalLMImpl> ctx(model, cache, marks, co);
      return fn(ctx);
    }
    case ContextMode::Prepend: {
      PrependingContext<LlamaForCausalLMImpl> ctx(model, cache, marks, co);
      return fn(ctx);
    }
    default: {
      ContextOptions none = co;
      none.marks = false;
      NoRetrievalContext<LlamaForCausalLMImpl> ctx(model, cache, marks, none);
      return fn(ctx);
    }
  }
}

}  // namespace flashback::cli
