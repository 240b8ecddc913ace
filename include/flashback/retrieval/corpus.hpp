// Corpora split into passages of at most `max_tokens` tokens that keep their title.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "flashback/retrieval/retriever.hpp"
#include "flashback/tokenizer.hpp"

namespace flashback {

enum class CorpusFormat {
  WikiText,    // " = Title = " lines start articles (" = = Section = = " lines do not)
  Paragraphs,  // blank-line separated paragraphs (TinyStories); no titles
  Jsonl,       // one {"title": ..., "text": ...} object per line
};

// "wikitext" | "paragraphs" | "jsonl"; InvalidArgument otherwise.
CorpusFormat parse_corpus_format(const std::string& name);
const char* corpus_format_name(CorpusFormat format);

// Progress: bytes of the corpus consumed so far, and its total size.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

// Reads the corpus and splits every article / paragraph into passages of at
// most `max_tokens` tokens of `tokenizer` (split at token boundaries; text is
// the detokenized span), each carrying its article's title. Ids are 0..N-1.
// FormatError (naming the file and line) for a missing or empty corpus or a
// malformed JSONL line.
std::vector<Passage> read_corpus(const std::string& path, CorpusFormat format, const Tokenizer& tokenizer,
                                 int64_t max_tokens, const ProgressFn& progress = {});

// The articles of a WikiText file where they stand in it, by the heading rule
// read_corpus uses: the title and the byte span [begin, end) from the
// article's heading line to the next one's (text before the first heading is
// an untitled article, or, when blank, the first article's). The spans tile
// the file. For splitting a dump by article.
struct ArticleSpan {
  std::string title;
  uint64_t begin = 0, end = 0;
};
std::vector<ArticleSpan> wikitext_articles(const std::string& path);

}  // namespace flashback
