// Cutting an article (a title and its paragraphs) into passages of at most
// `max_tokens` tokens. Internal to flashback_retrieval.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashback/retrieval/retriever.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback::detail {

class PassageSplitter {
 public:
  // Appends to `out`; ids continue from out.size().
  PassageSplitter(const Tokenizer& tokenizer, int64_t max_tokens, std::vector<Passage>& out);

  // Whole paragraphs are packed greedily (joined by "\n") while the joined
  // text fits; a paragraph longer than the budget is cut at token boundaries
  // into near-equal chunks (cuts moved to a word start when one is close).
  // Every passage's text re-encodes to at most max_tokens tokens: that is
  // checked, not assumed, since BPE over a joined or cut text can differ from
  // the sum of its parts.
  void add_article(const std::string& title, const std::vector<std::string>& paragraphs);

 private:
  int64_t count(const std::string& text) const;
  void split_long(const std::string& title, const std::vector<int32_t>& ids);
  // The end of a chunk starting at `begin` aiming at `target`: a word start
  // near the target, never inside a UTF-8 character spelt as byte pieces.
  size_t choose_cut(const std::vector<int32_t>& ids, size_t begin, size_t target) const;
  bool starts_word(int32_t id) const;
  bool is_continuation_byte(int32_t id) const;
  void emit(const std::string& title, std::string text);

  const Tokenizer& tok_;
  int64_t budget_;
  std::vector<Passage>& out_;
};

}  // namespace flashback::detail
