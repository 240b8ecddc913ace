// FlashBack's marking tokens: <MARK_L> doc <MARK_R> brackets each retrieved
// document appended after the input. They are the last two rows of the
// vocabulary; their logits never take probability mass (the paper scores
// logits[..., :-2]), so generation never emits them.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashback/error.hpp"

namespace flashback {

struct Checkpoint;
class Tokenizer;

class MarkingToken {
 public:
  static constexpr const char* kLeft = "<MARK_L>";
  static constexpr const char* kRight = "<MARK_R>";

  MarkingToken() = default;  // a model without marks
  // `vocab_size` counts the two marks, which are its last two ids.
  explicit MarkingToken(int64_t vocab_size) : left_(vocab_size - 2), right_(vocab_size - 1) {
    if (vocab_size < 3) throw InvalidArgument("a vocabulary with marking tokens needs more than 2 entries");
  }

  bool present() const { return left_ >= 0; }
  int64_t left() const { return left_; }
  int64_t right() const { return right_; }

  // logits [..., V] -> [..., V - 2] when the marks are present; unchanged otherwise.
  at::Tensor strip(const at::Tensor& logits) const { return present() ? logits.narrow(-1, 0, left_) : logits; }

  // <MARK_L> doc_1 ... doc_k <MARK_R>; nothing at all when every doc is empty.
  std::vector<int64_t> wrap(const std::vector<std::vector<int64_t>>& docs) const {
    std::vector<int64_t> out;
    for (const auto& d : docs) out.insert(out.end(), d.begin(), d.end());
    if (out.empty() || !present()) return out;
    out.insert(out.begin(), left_);
    out.push_back(right_);
    return out;
  }

 private:
  int64_t left_ = -1;
  int64_t right_ = -1;
};

// Gives a checkpoint and its tokenizer the two marking tokens, as the last two
// vocabulary rows:
//  * already there (a FlashBack checkpoint: its vocabulary is the tokenizer's
//    + 2, or the tokenizer already ends with <MARK_L>, <MARK_R>): kept;
//  * otherwise two rows are appended to the embedding (and to an untied
//    head), each the mean of the existing rows, and config.vocab_size += 2.
// The tokenizer gains the two pieces (as control pieces: text never encodes
// to them). Any other vocabulary mismatch is a FormatError.
MarkingToken add_marking_tokens(Checkpoint& checkpoint, Tokenizer& tokenizer);

// The marks a loaded (checkpoint, tokenizer) pair already has, without adding
// any: present iff the checkpoint's vocabulary is the tokenizer's + 2 or the
// tokenizer ends with the two mark pieces.
MarkingToken find_marking_tokens(const Checkpoint& checkpoint, const Tokenizer& tokenizer);

}  // namespace flashback
