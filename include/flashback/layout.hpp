// FlashBack's layouts: which token each KV-cache slot holds, per mode. The
// contexts (context.hpp) build their cache from these functions, and the
// training examples (training_layout, bound for Python's data preparation)
// are cut from the same functions, so training and inference cannot disagree.
//
//   append   [input][<MARK_L> docs <MARK_R>][recent]        FlashBack
//   prepend  [BOS][<MARK_L> docs <MARK_R>][input][recent]   In-Context RALM
//   none     [input][recent]                                no documents
//
// "input" is the text before the last retrieval, "recent" the tokens since.
// The input starts as the tokenizer starts a sequence: with BOS (Llama-2) or
// with the text's first token (SmolLM2 adds none). With the marks off the
// block is the documents alone; in mode none there is no block at all.
// Prepending keeps BOS at slot 0 when the input starts with it (the model saw
// BOS first in pretraining); without BOS the documents come first.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/marking_token.hpp"

namespace flashback {

enum class ContextMode { Append, Prepend, None };

inline ContextMode parse_context_mode(const std::string& s) {
  if (s == "append") return ContextMode::Append;
  if (s == "prepend") return ContextMode::Prepend;
  if (s == "none") return ContextMode::None;
  throw InvalidArgument("unknown mode '" + s + "' (append, prepend, none)");
}

inline const char* context_mode_name(ContextMode m) {
  return m == ContextMode::Append ? "append" : m == ContextMode::Prepend ? "prepend" : "none";
}

// "prepend,append" -> {Prepend, Append}.
inline std::vector<ContextMode> parse_context_modes(const std::string& list) {
  std::vector<ContextMode> modes;
  size_t i = 0;
  while (i <= list.size()) {
    size_t c = list.find(',', i);
    if (c == std::string::npos) c = list.size();
    modes.push_back(parse_context_mode(list.substr(i, c - i)));
    i = c + 1;
  }
  return modes;
}

// The block a retrieval places: the documents in order, bracketed by `marks`
// when they are present (pass MarkingToken() for no marks); nothing in mode
// none or when every document is empty.
inline std::vector<int64_t> document_block(ContextMode mode, const std::vector<std::vector<int64_t>>& docs,
                                           const MarkingToken& marks) {
  if (mode == ContextMode::None) return {};
  return marks.wrap(docs);
}

// The layout of `input`, `block` and `recent` in `mode` (see above).
inline std::vector<int64_t> build_layout(ContextMode mode, const std::vector<int64_t>& input,
                                         const std::vector<int64_t>& block, const std::vector<int64_t>& recent,
                                         int64_t bos_id) {
  std::vector<int64_t> l;
  l.reserve(input.size() + block.size() + recent.size());
  switch (mode) {
    case ContextMode::Append:
      l.insert(l.end(), input.begin(), input.end());
      l.insert(l.end(), block.begin(), block.end());
      break;
    case ContextMode::Prepend: {
      const bool bos = !input.empty() && input.front() == bos_id;
      if (bos) l.push_back(input.front());
      l.insert(l.end(), block.begin(), block.end());
      l.insert(l.end(), input.begin() + (bos ? 1 : 0), input.end());
      break;
    }
    case ContextMode::None:
      l.insert(l.end(), input.begin(), input.end());
      break;
  }
  l.insert(l.end(), recent.begin(), recent.end());
  return l;
}

// The first slot a retrieval changes, given the input's length before the
// recent tokens joined it and the layout's length before the retrieval: the
// cache below it stays valid. Append keeps the input's cache; a prepended
// block moves every later position, so prepend starts over; none only adds
// what is new.
inline int64_t first_changed_slot(ContextMode mode, int64_t old_input, int64_t old_layout) {
  switch (mode) {
    case ContextMode::Append: return old_input;
    case ContextMode::Prepend: return 0;
    case ContextMode::None: return old_layout;
  }
  return 0;
}

// One training example as the paper builds it: `input` (BOS + context), the
// documents of one retrieval, then the `targets`, in the layout of `mode`
// (the targets are the recent tokens). target_positions are the slots the
// targets occupy (labels in HF's convention: labels[p] = tokens[p] there,
// ignored elsewhere; the model predicts slot p from slot p - 1).
struct TrainingLayout {
  std::vector<int64_t> tokens;
  std::vector<int64_t> target_positions;
};

inline TrainingLayout training_layout(ContextMode mode, const std::vector<int64_t>& input,
                                      const std::vector<std::vector<int64_t>>& docs,
                                      const std::vector<int64_t>& targets, const MarkingToken& marks,
                                      int64_t bos_id) {
  if (input.empty()) throw InvalidArgument("a training example needs an input (at least BOS)");
  if (targets.empty()) throw InvalidArgument("a training example needs at least one target token");
  TrainingLayout t;
  t.tokens = build_layout(mode, input, document_block(mode, docs, marks), targets, bos_id);
  const int64_t first = static_cast<int64_t>(t.tokens.size() - targets.size());
  for (int64_t i = 0; i < static_cast<int64_t>(targets.size()); ++i) t.target_positions.push_back(first + i);
  return t;
}

}  // namespace flashback
