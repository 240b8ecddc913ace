#include "flashback/marking_token.hpp"

#include "flashback/checkpoint.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

namespace {

bool tokenizer_ends_with_marks(const Tokenizer& tok) {
  const int32_t n = tok.vocab_size();
  return n >= 2 && tok.id_to_piece(n - 2) == MarkingToken::kLeft && tok.id_to_piece(n - 1) == MarkingToken::kRight;
}

// [V, C] -> [V + 2, C]: two copies of the mean row, in the tensor's dtype.
at::Tensor grow_rows(const at::Tensor& w) {
  at::Tensor mean = w.to(at::kFloat).mean(0, /*keepdim=*/true).to(w.scalar_type());  // [1, C]
  return at::cat({w, mean, mean}, 0);                                                // [V + 2, C]
}

}  // namespace

MarkingToken find_marking_tokens(const Checkpoint& ck, const Tokenizer& tok) {
  const int64_t V = ck.config.vocab_size;
  if (tokenizer_ends_with_marks(tok) && tok.vocab_size() == V) return MarkingToken(V);
  if (V == int64_t(tok.vocab_size()) + 2) return MarkingToken(V);
  return {};
}

MarkingToken add_marking_tokens(Checkpoint& ck, Tokenizer& tok) {
  const int64_t V = ck.config.vocab_size;
  if (tokenizer_ends_with_marks(tok)) {
    if (tok.vocab_size() != V)
      throw FormatError(ck.path, "the tokenizer ends with the marking tokens but has " +
                                     std::to_string(tok.vocab_size()) + " pieces for a vocabulary of " + std::to_string(V));
    return MarkingToken(V);
  }
  if (V == int64_t(tok.vocab_size()) + 2) {
    // A FlashBack checkpoint: rows V-2 and V-1 are the trained marks.
    tok.add_piece(MarkingToken::kLeft, PieceType::Control);
    tok.add_piece(MarkingToken::kRight, PieceType::Control);
    return MarkingToken(V);
  }
  if (V != int64_t(tok.vocab_size()))
    throw FormatError(ck.path, "cannot place marking tokens: the model's vocabulary has " + std::to_string(V) +
                                   " rows and the tokenizer " + std::to_string(tok.vocab_size()) +
                                   " pieces (they must be equal, or the model must have exactly 2 more)");
  auto grow = [&](const char* name) {
    auto it = ck.tensors.find(name);
    if (it == ck.tensors.end()) throw FormatError(ck.path, std::string("missing tensor '") + name + "'");
    it->second = grow_rows(it->second);
  };
  grow("model.embed_tokens.weight");
  if (!ck.config.tie_word_embeddings) grow("lm_head.weight");
  ck.config.vocab_size = V + 2;
  tok.add_piece(MarkingToken::kLeft, PieceType::Control);
  tok.add_piece(MarkingToken::kRight, PieceType::Control);
  return MarkingToken(V + 2);
}

}  // namespace flashback
