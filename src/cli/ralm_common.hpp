// Shared by `flashback ralm` and `flashback eval`: the model flags, the RALM
// options (the library's one vocabulary, options.hpp), loading, the index.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "flashback/flashback.hpp"
#include "flashback/retrieval/retriever.hpp"

namespace flashback::cli {

struct RalmArgs {
  std::string model, tokenizer, index, mode = "append", dtype, device = "cpu", forbidden_titles, encoder_model, adapter;
  bool adapter_unmerged = false, no_adapter = false, keep_quantized = false;
  RalmOptions options;
  int threads = 0;
  bool json = false;
};

// Adds the flags both commands share: --stride, --query-tokens, ... are the
// fields of RalmOptions, described by ralm_option_docs().
void add_ralm_flags(CLI::App* cmd, RalmArgs& a);

// What a run needs: the model (with the marks any of `modes` uses), and the
// retriever when a mode retrieves (--index is then required).
struct RalmSetup {
  Pretrained pretrained;
  std::unique_ptr<Retriever> retriever;  // null when no mode retrieves
  std::unique_ptr<DocumentSource> documents;
  RetrievedDocuments* retrieved = nullptr;  // `documents` when a mode retrieves
};
RalmSetup setup_ralm(const RalmArgs& a, const std::vector<ContextMode>& modes);

}  // namespace flashback::cli
