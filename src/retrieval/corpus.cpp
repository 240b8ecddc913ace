// Corpus readers: WikiText-103 raw, blank-line paragraphs, JSONL. Each turns
// the file into articles (a title and its paragraphs) for PassageSplitter.
#include "flashback/retrieval/corpus.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <functional>
#include <optional>

#include "flashback/error.hpp"
#include "passage_splitter.hpp"

namespace flashback {

CorpusFormat parse_corpus_format(const std::string& name) {
  if (name == "wikitext") return CorpusFormat::WikiText;
  if (name == "paragraphs") return CorpusFormat::Paragraphs;
  if (name == "jsonl") return CorpusFormat::Jsonl;
  throw InvalidArgument("unknown corpus format '" + name + "' (wikitext, paragraphs, jsonl)");
}

const char* corpus_format_name(CorpusFormat format) {
  switch (format) {
    case CorpusFormat::WikiText: return "wikitext";
    case CorpusFormat::Paragraphs: return "paragraphs";
    case CorpusFormat::Jsonl: return "jsonl";
  }
  return "?";
}

namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Lines of the corpus with progress in bytes, reported every 1 MiB.
class LineReader {
 public:
  LineReader(const std::string& path, const ProgressFn& progress) : path_(path), progress_(progress) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      throw FormatError(path, std::string("cannot open corpus: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) throw FormatError(path, "is a directory, not a corpus file");
    total_ = static_cast<uint64_t>(st.st_size);
    in_.open(path, std::ios::binary);
    if (!in_) throw FormatError(path, std::string("cannot open corpus: ") + std::strerror(errno));
  }

  bool next(std::string& line) {
    if (!std::getline(in_, line)) {
      if (in_.bad()) throw FormatError(path_, "read error");
      if (progress_) progress_(total_, total_);
      return false;
    }
    ++line_no_;
    start_ = done_;
    done_ += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (progress_ && done_ - reported_ >= (1u << 20)) {
      reported_ = done_;
      progress_(std::min(done_, total_), total_);
    }
    return true;
  }
  int64_t line_no() const { return line_no_; }
  uint64_t line_start() const { return start_; }  // byte offset of the last line read

 private:
  std::string path_;
  const ProgressFn& progress_;
  std::ifstream in_;
  uint64_t total_ = 0, done_ = 0, reported_ = 0, start_ = 0;
  int64_t line_no_ = 0;
};

// " = Title = " -> {1, "Title"}, " = = Section = = " -> {2, "Section"}.
std::optional<std::pair<int, std::string>> parse_heading(const std::string& trimmed) {
  int level = 0;
  size_t b = 0, e = trimmed.size();
  while (e - b >= 2 && trimmed[b] == '=' && trimmed[b + 1] == ' ' && trimmed[e - 1] == '=' &&
         trimmed[e - 2] == ' ') {
    ++level;
    b += 2;
    e -= 2;
  }
  if (level == 0 || b >= e || trimmed[b] == '=' || trimmed[e - 1] == '=') return std::nullopt;
  return std::make_pair(level, trim(trimmed.substr(b, e - b)));
}

// WikiText-103: one paragraph per line, blank lines around headings. A
// " = T = " line is an article heading only between blank lines: the dump
// also has formula lines such as " = 1 rad / s and a nominal impedance k = "
// inside paragraphs. Section headings are dropped: they are structure, not
// prose (DPR-style passages keep only the article title), and a lone
// "Career" line packed into a passage only adds noise.
// emit(title, paragraphs, offset of the article's heading line) per article.
using ArticleFn = std::function<void(const std::string&, const std::vector<std::string>&, uint64_t)>;
void read_wikitext(LineReader& in, const ArticleFn& emit) {
  std::string title;
  std::vector<std::string> paras;
  std::string line;
  bool prev_blank = true;
  uint64_t begin = 0, pending_at = 0;
  std::optional<std::string> pending;  // a heading-shaped line waiting for its next line
  auto resolve = [&](bool next_blank) {
    if (!pending) return;
    auto h = parse_heading(*pending);
    if (next_blank && h) {
      if (h->first == 1) {
        emit(title, paras, begin);
        title = h->second;
        paras.clear();
        begin = pending_at;
      }
    } else {
      paras.push_back(*pending);
    }
    pending.reset();
  };
  while (in.next(line)) {
    std::string t = trim(line);
    if (t.empty()) {
      resolve(true);
      prev_blank = true;
      continue;
    }
    resolve(false);
    if (prev_blank && parse_heading(t)) {
      pending = t;
      pending_at = in.line_start();
    } else {
      paras.push_back(t);
    }
    prev_blank = false;
  }
  resolve(true);
  emit(title, paras, begin);
}

// Blank-line separated paragraphs, each its own untitled document (the
// format marks no article boundaries, so nothing is packed across them).
void read_paragraphs(LineReader& in, detail::PassageSplitter& split) {
  std::string para, line;
  auto flush = [&] {
    std::string t = trim(para);
    if (!t.empty()) split.add_article("", {t});
    para.clear();
  };
  while (in.next(line)) {
    if (trim(line).empty()) {
      flush();
    } else {
      if (!para.empty()) para += '\n';
      para += line;
    }
  }
  flush();
}

// {"title": "...", "text": "..."} per line; "title" may be absent or null.
// The text's lines are its paragraphs.
void read_jsonl(LineReader& in, const std::string& path, detail::PassageSplitter& split) {
  std::string line;
  while (in.next(line)) {
    if (trim(line).empty()) continue;
    auto where = [&] { return path + ":" + std::to_string(in.line_no()); };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(where(), std::string("malformed JSON: ") + e.what());
    }
    if (!j.is_object()) throw FormatError(where(), "expected a JSON object {\"title\", \"text\"}");
    auto text = j.find("text");
    if (text == j.end() || !text->is_string()) throw FormatError(where(), "missing string field \"text\"");
    std::string title;
    if (auto t = j.find("title"); t != j.end() && !t->is_null()) {
      if (!t->is_string()) throw FormatError(where(), "field \"title\" is not a string");
      title = trim(t->get<std::string>());
    }
    std::vector<std::string> paras;
    const std::string& s = text->get_ref<const std::string&>();
    size_t b = 0;
    while (b <= s.size()) {
      size_t e = s.find('\n', b);
      if (e == std::string::npos) e = s.size();
      std::string p = trim(s.substr(b, e - b));
      if (!p.empty()) paras.push_back(std::move(p));
      b = e + 1;
    }
    split.add_article(title, paras);
  }
}

}  // namespace

std::vector<Passage> read_corpus(const std::string& path, CorpusFormat format, const Tokenizer& tokenizer,
                                 int64_t max_tokens, const ProgressFn& progress) {
  if (max_tokens < 1) throw InvalidArgument("max_tokens must be at least 1 (got " + std::to_string(max_tokens) + ")");
  if (tokenizer.vocab_size() == 0) throw InvalidArgument("read_corpus: the tokenizer is empty");
  LineReader in(path, progress);
  std::vector<Passage> passages;
  detail::PassageSplitter split(tokenizer, max_tokens, passages);
  switch (format) {
    case CorpusFormat::WikiText:
      read_wikitext(in, [&](const std::string& t, const std::vector<std::string>& p, uint64_t) { split.add_article(t, p); });
      break;
    case CorpusFormat::Paragraphs: read_paragraphs(in, split); break;
    case CorpusFormat::Jsonl: read_jsonl(in, path, split); break;
  }
  if (passages.empty()) throw FormatError(path, "empty corpus: no text to index");
  return passages;
}

std::vector<ArticleSpan> wikitext_articles(const std::string& path) {
  const ProgressFn no_progress;  // LineReader keeps a reference
  LineReader in(path, no_progress);
  std::vector<ArticleSpan> out;
  read_wikitext(in, [&](const std::string& title, const std::vector<std::string>& paras, uint64_t begin) {
    if (title.empty() && paras.empty()) return;  // no text before the first heading
    out.push_back({title, begin, 0});
  });
  struct stat st {};
  ::stat(path.c_str(), &st);
  if (!out.empty()) out.front().begin = 0;  // blank lines before the first heading belong to it
  for (size_t i = 0; i < out.size(); ++i)
    out[i].end = i + 1 < out.size() ? out[i + 1].begin : static_cast<uint64_t>(st.st_size);
  return out;
}

}  // namespace flashback
