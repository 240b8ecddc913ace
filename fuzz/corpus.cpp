// Retrieval corpora: WikiText (" = Title = " headings), blank-line paragraphs and JSONL; the
// first byte picks the format and the passage budget, the rest is the file. Passages are
// numbered 0..N-1 and keep their article's title; wikitext_articles' spans tile the file (none for
// a file of blank lines).
#include "flashback/retrieval/corpus.hpp"
#include "harness.hpp"

using namespace flashback;

namespace {
// Byte-fallback SentencePiece over 256 byte pieces and a few words: no file needed.
const Tokenizer& tokenizer() {
  static const Tokenizer tok = [] {
    SentencePieceModel m;
    m.pieces.push_back({"<unk>", 0.0f, PieceType::Unknown});
    m.pieces.push_back({"<s>", 0.0f, PieceType::Control});
    m.pieces.push_back({"</s>", 0.0f, PieceType::Control});
    char buf[8];
    for (int c = 0; c < 256; ++c) {
      std::snprintf(buf, sizeof buf, "<0x%02X>", c);
      m.pieces.push_back({buf, 0.0f, PieceType::Byte});
    }
    float score = -1.0f;
    for (const char* p : {"\xE2\x96\x81", "\xE2\x96\x81t", "h", "e", "he", "\xE2\x96\x81the", "a", "n", "d"})
      m.pieces.push_back({p, score -= 1.0f, PieceType::Normal});
    return Tokenizer(std::move(m), "fuzz-bytes");
  }();
  return tok;
}
}  // namespace

FLASHBACK_FUZZ_TARGET(corpus) {
  if (size == 0) return;
  const CorpusFormat format = static_cast<CorpusFormat>(data[0] % 3);
  const int64_t max_tokens = 1 + (data[0] >> 2);  // 1..64
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string path = fuzz::write_input(bytes, "corpus.txt");
  fuzz::expect_clean([&] {
    const std::vector<Passage> passages = read_corpus(path, format, tokenizer(), max_tokens);
    for (size_t i = 0; i < passages.size(); ++i) FUZZ_CHECK(passages[i].id == static_cast<int64_t>(i));
  });
  if (format == CorpusFormat::WikiText) {
    fuzz::expect_clean([&] {
      const std::vector<ArticleSpan> spans = wikitext_articles(path);
      uint64_t at = 0;
      for (const ArticleSpan& a : spans) {
        FUZZ_CHECK(a.begin == at && a.end >= a.begin);
        at = a.end;
      }
      // No article: the file holds no text (blank lines only); else the spans cover it to the end.
      FUZZ_CHECK(spans.empty() ? bytes.find_first_not_of(" \t\r\n") == std::string_view::npos : at == bytes.size());
    });
  }
}
