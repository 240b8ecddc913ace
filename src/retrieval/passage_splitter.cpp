#include "passage_splitter.hpp"

#include <algorithm>

namespace flashback::detail {

namespace {
constexpr size_t kWordSearch = 8;  // how far (in tokens) a cut may move to reach a word start
const std::string kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's word-start marker
}  // namespace

PassageSplitter::PassageSplitter(const Tokenizer& tokenizer, int64_t max_tokens, std::vector<Passage>& out)
    : tok_(tokenizer), budget_(max_tokens), out_(out) {}

int64_t PassageSplitter::count(const std::string& text) const {
  return static_cast<int64_t>(tok_.encode(text).size());
}

bool PassageSplitter::starts_word(int32_t id) const {
  PieceType t = tok_.piece_type(id);
  if (t != PieceType::Normal && t != PieceType::UserDefined) return false;
  return tok_.id_to_piece(id).compare(0, kSpaceMark.size(), kSpaceMark) == 0;
}

bool PassageSplitter::is_continuation_byte(int32_t id) const {
  if (tok_.piece_type(id) != PieceType::Byte) return false;
  const std::string& p = tok_.id_to_piece(id);  // "<0xXX>", validated by the tokenizer
  unsigned v = static_cast<unsigned>(std::stoul(p.substr(3, 2), nullptr, 16));
  return (v & 0xC0) == 0x80;
}

void PassageSplitter::emit(const std::string& title, std::string text) {
  if (text.find_first_not_of(" \t\n") == std::string::npos) return;
  Passage p;
  p.id = static_cast<int64_t>(out_.size());
  p.title = title;
  p.text = std::move(text);
  out_.push_back(std::move(p));
}

size_t PassageSplitter::choose_cut(const std::vector<int32_t>& ids, size_t begin, size_t target) const {
  const size_t hard = std::min(ids.size(), begin + static_cast<size_t>(budget_));
  for (size_t d = 0; d <= kWordSearch; ++d) {
    if (target >= d && target - d > begin && starts_word(ids[target - d])) return target - d;
    if (target + d <= hard && target + d < ids.size() && starts_word(ids[target + d])) return target + d;
  }
  size_t end = target;
  while (end > begin + 1 && end < ids.size() && is_continuation_byte(ids[end])) --end;
  return end;
}

void PassageSplitter::split_long(const std::string& title, const std::vector<int32_t>& ids) {
  const size_t n = ids.size(), budget = static_cast<size_t>(budget_);
  size_t pos = 0;
  while (pos < n) {
    size_t end = n;
    const size_t rest = n - pos;
    if (rest > budget) {
      // Near-equal chunks: 130 tokens at budget 128 become 65 + 65, not 128 + 2.
      size_t chunks = (rest + budget - 1) / budget;
      end = choose_cut(ids, pos, pos + (rest + chunks - 1) / chunks);
    }
    for (;;) {
      std::string text = tok_.decode(std::vector<int32_t>(ids.begin() + pos, ids.begin() + end));
      int64_t m = count(text);
      if (m <= budget_) {
        emit(title, std::move(text));
        break;
      }
      if (end - pos == 1) break;  // one token that re-encodes past a tiny budget: dropped, never over budget
      size_t over = static_cast<size_t>(m - budget_);
      end = pos + std::max<size_t>(1, end - pos > over ? end - pos - over : 1);
      while (end > pos + 1 && is_continuation_byte(ids[end])) --end;
    }
    pos = end;
  }
}

void PassageSplitter::add_article(const std::string& title, const std::vector<std::string>& paragraphs) {
  std::string cur;
  int64_t cur_n = 0;
  auto flush = [&] {
    if (!cur.empty()) emit(title, std::move(cur));
    cur.clear();
    cur_n = 0;
  };
  for (const std::string& para : paragraphs) {
    std::vector<int32_t> ids = tok_.encode(para);
    const auto n = static_cast<int64_t>(ids.size());
    if (n == 0) continue;
    if (n > budget_) {
      flush();
      split_long(title, ids);
      continue;
    }
    // "\n" costs a token and the paragraph's dummy-prefix space may merge
    // away, so the sum is only an estimate: the joined text is counted.
    if (!cur.empty() && cur_n + n <= budget_ + 1) {
      std::string joined = cur + "\n" + para;
      int64_t m = count(joined);
      if (m <= budget_) {
        cur = std::move(joined);
        cur_n = m;
        continue;
      }
    }
    flush();
    cur = para;
    cur_n = n;
  }
  flush();
}

}  // namespace flashback::detail
