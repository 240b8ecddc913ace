// The options of retrieval-augmented generation and evaluation: one
// vocabulary for the C++ API, the CLI (`--stride 16`, `--no-kv-reuse`) and
// Python (`stride=16`, `kv_reuse=False`), with the paper's defaults. The
// meaning of each is written once, in ralm_option_docs(): the CLI's --help and
// Python's help(flashback.RalmOptions) print those lines.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashback/dtype.hpp"
#include "flashback/error.hpp"
#include "flashback/layout.hpp"

namespace flashback {

// The paper's maximum length; the default window wherever the model allows it.
inline constexpr int64_t kDefaultMaxLength = 512;

struct RalmOptions {
  int64_t stride = 16;
  int64_t query_tokens = 32;
  int64_t doc_tokens = 128;
  int64_t k = 1;
  bool marks = true;
  bool kv_reuse = true;
  int64_t max_length = 0;
  double window_keep = 0.5;
  std::string doc_positions = "before";
  std::string kv_dtype;  // "" or "auto": the model's dtype

  void validate() const {
    if (stride < 1) throw InvalidArgument("stride must be >= 1");
    if (query_tokens < 1) throw InvalidArgument("query_tokens must be >= 1");
    if (doc_tokens < 1) throw InvalidArgument("doc_tokens must be >= 1");
    if (k < 1) throw InvalidArgument("k must be >= 1");
    if (max_length < 0) throw InvalidArgument("max_length must be >= 0 (0: the default)");
    if (!(window_keep > 0.0 && window_keep <= 1.0)) throw InvalidArgument("window_keep must be in (0, 1]");
    parse_doc_positions(doc_positions);
    parse_kv_dtype(kv_dtype);
  }

  // kv_dtype's type: nullopt for "" and "auto" (the model's dtype).
  static std::optional<at::ScalarType> parse_kv_dtype(const std::string& s) {
    try {
      return parse_dtype(s);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(std::string("kv_dtype: ") + e.what());
    }
  }
};

struct OptionDoc {
  const char* name;  // the field; the CLI flag is --name with '_' -> '-' (k: -k)
  const char* help;
};

inline const std::vector<OptionDoc>& ralm_option_docs() {
  static const std::vector<OptionDoc> docs = {
      {"stride", "s: tokens between retrievals (also the room kept free after the documents) [16]"},
      {"query_tokens", "l: the query is the last l tokens of the text, decoded [32]"},
      {"doc_tokens", "each retrieved passage is cut to this many tokens [128]"},
      {"k", "passages per retrieval, placed in rank order [1]"},
      {"marks", "bracket the documents with <MARK_L> ... <MARK_R> (never in mode none) [on]"},
      {"kv_reuse", "keep the cache across retrievals; off recomputes the whole layout at every step, "
                   "the exactness reference [on]"},
      {"max_length", "tokens the layout may hold; 0: 512 (the paper's), or fewer when the model's maximum position "
                     "(less the documents' room with doc_positions before) is smaller; the KV cache holds exactly "
                     "this many [0]"},
      {"window_keep", "when the input no longer fits, the fraction of its budget kept (the first token and the newest) "
                      "[0.5]"},
      {"doc_positions", "where RoPE puts appended documents: 'before' the input, at the positions a prepended "
                        "block would take (the token after the block is then predicted from the input's end), or "
                        "'after' it, at their slots (the paper's layout) [before]"},
      {"kv_dtype", "the KV cache's element type: auto (the model's), fp32, bf16 or fp16; bf16 halves an fp32 "
                   "model's cache and the bytes each decode step reads from it (scores and sums stay fp32; kv_reuse "
                   "then agrees with recomputing to bf16's rounding) [auto]"},
  };
  return docs;
}

inline const char* ralm_option_help(const std::string& name) {
  for (const auto& d : ralm_option_docs())
    if (name == d.name) return d.help;
  throw InvalidArgument("no RALM option named '" + name + "'");
}

// What a context of one mode runs with, resolved from RalmOptions. The one
// place of these rules: mode none has no marks; max_length 0 means
// min(512, the model's maximum position); the room kept after the documents
// is the stride; with the block before the input in position, the input
// starts at the position offset k x doc_tokens (+ 2 marks) and the default
// max_length leaves room for it below the model's maximum.
struct ContextOptions {
  ContextMode mode = ContextMode::Append;
  bool marks = true;
  bool kv_reuse = true;
  int64_t max_length = kDefaultMaxLength;
  int64_t stride = 16;
  double window_keep = 0.5;
  DocPositions doc_positions = DocPositions::Before;
  int64_t position_offset = 0;  // the input's first position (before: the largest block)

  bool retrieves() const { return mode != ContextMode::None; }

  static ContextOptions resolve(ContextMode mode, const RalmOptions& o, int64_t max_positions) {
    o.validate();
    ContextOptions c;
    c.mode = mode;
    c.marks = o.marks && mode != ContextMode::None;
    c.kv_reuse = o.kv_reuse;
    c.doc_positions = parse_doc_positions(o.doc_positions);
    c.position_offset = block_before_input(mode, c.doc_positions) ? o.k * o.doc_tokens + (c.marks ? 2 : 0) : 0;
    c.max_length = o.max_length > 0 ? o.max_length
                                    : std::min(kDefaultMaxLength, std::max<int64_t>(1, max_positions - c.position_offset));
    c.stride = o.stride;
    c.window_keep = o.window_keep;
    return c;
  }
};

// Whether any of `modes` places marking tokens with `options` (a model must
// then have them).
inline bool uses_marks(const std::vector<ContextMode>& modes, const RalmOptions& options) {
  return std::any_of(modes.begin(), modes.end(), [&](ContextMode m) {
    return ContextOptions::resolve(m, options, kDefaultMaxLength).marks;
  });
}

}  // namespace flashback
