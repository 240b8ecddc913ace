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
//
// Slots are not always positions. Where RoPE puts an appended block is
// DocPositions (append only; prepend and none always use position = slot):
//   after   the paper's: position = slot; the token after the block is
//           predicted from <MARK_R>.
//   before  the block takes the positions a prepended block would: the input
//           starts at position `offset` (the largest block the options allow,
//           so the input's positions never change and its cache survives
//           retrievals as with after), the block is right-aligned just below
//           it, in [offset - |block|, offset), and the recent tokens continue
//           the input's positions. The recent tokens thus see the input and
//           the documents at the distances prepending gives them. <MARK_R>
//           now sits before the input in position, so the token after the
//           block is predicted from the input's last slot: the block
//           conditions the tokens after that one (measured on SmolLM2-135M:
//           docs/results_attempts.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/marking_token.hpp"

namespace flashback {

enum class ContextMode { Append, Prepend, None };
enum class DocPositions { After, Before };

inline DocPositions parse_doc_positions(const std::string& s) {
  if (s == "after") return DocPositions::After;
  if (s == "before") return DocPositions::Before;
  throw InvalidArgument("unknown doc positions '" + s + "' (before, after)");
}

inline const char* doc_positions_name(DocPositions p) { return p == DocPositions::After ? "after" : "before"; }

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

// Whether `mode` with `positions` moves the block below the input in position.
inline bool block_before_input(ContextMode mode, DocPositions positions) {
  return mode == ContextMode::Append && positions == DocPositions::Before;
}

// The RoPE position of the j-th recent token after `input` + `block` slots:
// after the block's slots, or with the block before the input, after the input.
inline int64_t recent_position(ContextMode mode, DocPositions positions, int64_t offset, int64_t input, int64_t block,
                               int64_t j) {
  return block_before_input(mode, positions) ? offset + input + j : input + block + j;
}

// The RoPE position of every slot of a layout of `input`, `block` and `recent`
// tokens in `mode` (see DocPositions above; `offset` matters only for before).
inline std::vector<int64_t> layout_positions(ContextMode mode, DocPositions positions, int64_t offset, int64_t input,
                                             int64_t block, int64_t recent) {
  std::vector<int64_t> p(static_cast<size_t>(input + block + recent));
  if (!block_before_input(mode, positions)) {
    for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<int64_t>(i);
    return p;
  }
  if (block > offset)
    throw InvalidArgument("a block of " + std::to_string(block) + " tokens does not fit below the input (" +
                          std::to_string(offset) + " positions: k x doc_tokens + marks)");
  size_t s = 0;
  for (int64_t i = 0; i < input; ++i) p[s++] = offset + i;                // [input]
  for (int64_t i = 0; i < block; ++i) p[s++] = offset - block + i;        // [block], just below the input
  for (int64_t i = 0; i < recent; ++i) p[s++] = recent_position(mode, positions, offset, input, block, i);
  return p;
}

// The slot whose logits predict the token after a layout of `input` + `block`
// (+ no recent tokens yet): the last slot, except with the block before the
// input in position, where it is the input's last slot.
inline int64_t predicting_slot(ContextMode mode, DocPositions positions, int64_t input, int64_t block) {
  if (block_before_input(mode, positions) && block > 0) return input - 1;
  return input + block - 1;
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
// ignored elsewhere; the model predicts slot p from slot p - 1), position_ids
// the RoPE position of every token. With the block before the input in
// position, the first target is predicted from the input's last slot, which
// sees no document, as in inference: it is no target of this layout (labels
// cannot say "predicted from elsewhere"; the block has nothing to teach there).
struct TrainingLayout {
  std::vector<int64_t> tokens;
  std::vector<int64_t> target_positions;
  std::vector<int64_t> position_ids;
};

inline TrainingLayout training_layout(ContextMode mode, const std::vector<int64_t>& input,
                                      const std::vector<std::vector<int64_t>>& docs,
                                      const std::vector<int64_t>& targets, const MarkingToken& marks,
                                      int64_t bos_id, DocPositions positions = DocPositions::After,
                                      int64_t offset = 0) {
  if (input.empty()) throw InvalidArgument("a training example needs an input (at least BOS)");
  if (targets.empty()) throw InvalidArgument("a training example needs at least one target token");
  TrainingLayout t;
  const std::vector<int64_t> block = document_block(mode, docs, marks);
  t.tokens = build_layout(mode, input, block, targets, bos_id);
  const int64_t n_in = static_cast<int64_t>(input.size()), n_block = static_cast<int64_t>(block.size());
  const int64_t n_targets = static_cast<int64_t>(targets.size());
  t.position_ids = layout_positions(mode, positions, offset, n_in, n_block, n_targets);
  const int64_t first = n_in + n_block;
  const int64_t skip = predicting_slot(mode, positions, n_in, n_block) == first - 1 ? 0 : 1;
  if (skip && n_targets < 2)
    throw InvalidArgument("with the block before the input a training example needs at least two targets");
  for (int64_t i = skip; i < n_targets; ++i) t.target_positions.push_back(first + i);
  return t;
}

}  // namespace flashback
