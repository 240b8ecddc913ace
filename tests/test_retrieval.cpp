// Retrieval: corpus splitting (WikiText titles and budgets), BM25 on the
// WikiText-103 test split (verbatim queries, forbidden titles, k), dense
// retrieval with the stories260K encoder, atomic index builds, bad input.
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/retrieval/corpus.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/retrieval/model_encoder.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::shared;
namespace fs = std::filesystem;

namespace {

const std::string kWikiTest = "data/wikitext-103/wiki.test.raw";
const std::string kForbidden = "data/wikitext-103/forbidden_titles.txt";

const Tokenizer& llama_tok() {
  static const Tokenizer t = Tokenizer::from_file(shared("models/llama2-tokenizer/tokenizer.model"));
  return t;
}
const Tokenizer& tok512() {
  static const Tokenizer t = Tokenizer::from_file(shared("models/stories260K/tok512.model"));
  return t;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The message of the E thrown by f, or "<no exception>".
template <class E, class F>
std::string thrown(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r") == std::string::npos; }

std::string without_spaces(const std::string& s) {
  std::string out;
  for (char c : s)
    if (c != ' ' && c != '\n' && c != '\t') out.push_back(c);
  return out;
}

// An independent reading of WikiText-103: articles start at " = Title = "
// lines (exactly one '=' each side) standing between blank lines; section
// headings (" = = S = = ") between blank lines are skipped; every other
// line is text. Returns (title, text without whitespace) per article.
std::vector<std::pair<std::string, std::string>> oracle_articles(const std::string& path) {
  std::vector<std::string> lines;
  {
    std::ifstream in(path, std::ios::binary);
    std::string l;
    while (std::getline(in, l)) lines.push_back(l);
  }
  auto heading = [&](size_t i) {
    const std::string& l = lines[i];
    bool boxed = (i == 0 || blank(lines[i - 1])) && (i + 1 == lines.size() || blank(lines[i + 1]));
    return boxed && l.size() > 6 && l.compare(0, 3, " = ") == 0 && l.compare(l.size() - 3, 3, " = ") == 0;
  };
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (blank(lines[i])) continue;
    if (heading(i)) {
      const std::string& l = lines[i];
      if (l[3] != '=' && l[l.size() - 4] != '=') out.emplace_back(l.substr(3, l.size() - 6), "");
      continue;  // a section heading
    }
    if (out.empty()) out.emplace_back("", "");
    out.back().second += without_spaces(lines[i]);
  }
  return out;
}

// A 32-token window from the middle of a passage, decoded: the query text.
std::string middle_window(const Tokenizer& tok, const std::string& text, size_t n = 32) {
  std::vector<int32_t> ids = tok.encode(text);
  size_t start = ids.size() > n ? (ids.size() - n) / 2 : 0;
  size_t end = std::min(ids.size(), start + n);
  return tok.decode(std::vector<int32_t>(ids.begin() + start, ids.begin() + end));
}

// WikiText-103 test split, Llama-2 tokenizer, 128-token passages, BM25:
// built once per run.
struct WikiIndex {
  std::vector<Passage> passages;
  std::string dir;
};
const WikiIndex& wiki_index() {
  static const WikiIndex w = [] {
    WikiIndex x;
    x.passages = read_corpus(shared(kWikiTest), CorpusFormat::WikiText, llama_tok(), 128);
    x.dir = flashback::test::temp_dir("bm25") + "/wiki";
    IndexInfo info;
    info.max_tokens = 128;
    build_bm25_index(x.passages, info, x.dir);
    return x;
  }();
  return w;
}

// ~50 passages spread over the corpus, each long enough for a 32-token
// window from its middle.
std::vector<size_t> sample(const std::vector<Passage>& ps, const Tokenizer& tok, size_t want) {
  std::vector<size_t> out;
  const size_t stride = std::max<size_t>(1, ps.size() / (want * 2));
  for (size_t i = stride / 2; i < ps.size() && out.size() < want; i += stride)
    if (tok.encode(ps[i].text).size() >= 64) out.push_back(i);
  return out;
}

std::vector<std::string> siblings_of(const std::string& dir) {
  std::vector<std::string> out;
  const std::string base = fs::path(dir).filename().string();
  for (const auto& e : fs::directory_iterator(fs::path(dir).parent_path())) {
    std::string name = e.path().filename().string();
    if (name != base && name.rfind(base, 0) == 0) out.push_back(name);
  }
  return out;
}

// A torch-free encoder for tests of the index machinery: hashed bag of
// bytes, L2-normalised. `fail_after` makes encode() throw after that many calls.
class ToyEncoder : public TextEncoder {
 public:
  explicit ToyEncoder(int64_t dim = 16, int fail_after = -1) : dim_(dim), fail_after_(fail_after) {}
  int64_t dim() const override { return dim_; }
  std::vector<float> encode(const std::vector<std::string>& texts) override {
    if (fail_after_ >= 0 && calls_++ >= fail_after_) throw Error("toy encoder: simulated failure");
    std::vector<float> out(texts.size() * static_cast<size_t>(dim_), 0.0f);
    for (size_t i = 0; i < texts.size(); ++i) {
      float* v = &out[i * static_cast<size_t>(dim_)];
      for (unsigned char c : texts[i]) v[(c * 31u) % static_cast<unsigned>(dim_)] += 1.0f;
      float n = 0;
      for (int64_t j = 0; j < dim_; ++j) n += v[j] * v[j];
      if (n > 0)
        for (int64_t j = 0; j < dim_; ++j) v[j] /= std::sqrt(n);
    }
    return out;
  }
  std::string describe() const override { return "toy:" + std::to_string(dim_); }

 private:
  int64_t dim_;
  int fail_after_;
  int calls_ = 0;
};

std::vector<Passage> small_passages() {
  std::vector<Passage> ps;
  const char* texts[][2] = {{"Apples", "Apples grow on trees in orchards."},
                            {"Boats", "Boats sail across the harbour at dawn."},
                            {"Clocks", "Clocks tick and chime every hour."}};
  for (auto& t : texts) {
    Passage p;
    p.id = static_cast<int64_t>(ps.size());
    p.title = t[0];
    p.text = t[1];
    ps.push_back(p);
  }
  return ps;
}

}  // namespace

// ------------------------------------------------------------------ titles
TEST_CASE("retrieval: titles normalise across WikiText and plain spellings", "[retrieval]") {
  CHECK(normalize_title("WASP @-@ 44") == normalize_title("WASP-44"));
  CHECK(normalize_title("Gambia women 's national football team") == normalize_title("Gambia women's national football team"));
  CHECK(normalize_title("USS Atlanta ( 1861 )") == "ussatlanta1861");
  CHECK(normalize_title("Battle of Dürenstein") == "battleofd\xC3\xBCrenstein");  // non-ASCII kept
  CHECK(normalize_title("Battle of Dürenstein") != normalize_title("Battle of Durenstein"));

  TitleFilter f = TitleFilter::from_file(shared(kForbidden));
  CHECK(f.size() > 700);
  // Every article of the test split is forbidden, in either spelling.
  auto articles = oracle_articles(shared(kWikiTest));
  REQUIRE(articles.size() == 60);
  for (const auto& a : articles) CHECK(f.forbids(a.first));
  CHECK(f.forbids("Ise-class battleship"));
  CHECK(f.forbids("WASP-44"));
  CHECK(f.forbids("Kirby's Block Ball"));
  CHECK_FALSE(f.forbids("Apples"));
  CHECK_FALSE(f.forbids(""));

  CHECK_THAT(thrown<FormatError>([] { TitleFilter::from_file("/nonexistent/titles.txt"); }),
             Catch::Matchers::Contains("/nonexistent/titles.txt"));
}

// ------------------------------------------------------------------ corpora
TEST_CASE("retrieval: WikiText splitting keeps titles, text and budgets", "[retrieval]") {
  const auto articles = oracle_articles(shared(kWikiTest));
  SECTION("article spans: the oracle's titles, tiling the file") {
    const std::vector<ArticleSpan> spans = wikitext_articles(shared(kWikiTest));
    REQUIRE(spans.size() == articles.size());
    std::ifstream in(shared(kWikiTest), std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    uint64_t at = 0;
    for (size_t i = 0; i < spans.size(); ++i) {
      CHECK(spans[i].title == articles[i].first);
      CHECK(spans[i].begin == at);
      REQUIRE(spans[i].end > spans[i].begin);
      at = spans[i].end;
      // a span holds its own heading (the first one also the blank line before it)
      CHECK(file.substr(spans[i].begin, spans[i].end - spans[i].begin).find(" = " + spans[i].title + " = ") !=
            std::string::npos);
    }
    CHECK(at == file.size());
  }
  for (auto [tok, budget] : {std::pair<const Tokenizer*, int64_t>{&llama_tok(), 128}, {&tok512(), 64}}) {
    DYNAMIC_SECTION("vocab " << tok->vocab_size() << ", " << budget << " tokens") {
      std::vector<Passage> ps = read_corpus(shared(kWikiTest), CorpusFormat::WikiText, *tok, budget);
      size_t longest = 0;
      for (size_t i = 0; i < ps.size(); ++i) {
        REQUIRE(ps[i].id == static_cast<int64_t>(i));
        size_t n = tok->encode(ps[i].text).size();
        longest = std::max(longest, n);
        REQUIRE(n <= static_cast<size_t>(budget));
        REQUIRE(n > 0);
      }
      CHECK(longest >= static_cast<size_t>(budget) * 9 / 10);  // the budget is used, not wasted

      // Passages, grouped by title in order, are the articles: same titles,
      // same order, and the same characters (nothing lost, nothing repeated,
      // no section heading, whitespace aside).
      std::vector<std::pair<std::string, std::string>> grouped;
      for (const Passage& p : ps) {
        if (grouped.empty() || grouped.back().first != p.title) grouped.emplace_back(p.title, "");
        grouped.back().second += without_spaces(p.text);
      }
      REQUIRE(grouped.size() == articles.size());
      for (size_t a = 0; a < articles.size(); ++a) {
        CHECK(grouped[a].first == articles[a].first);
        CHECK(grouped[a].second == articles[a].second);
      }
    }
  }
}

TEST_CASE("retrieval: WikiText headings, formula lines and paragraph packing", "[retrieval]") {
  std::string dir = flashback::test::temp_dir("corpus");
  write_text(dir + "/w.raw",
             " \n = Alpha = \n \n First paragraph of alpha . \n Second paragraph . \n \n = = History = = \n \n"
             " The value is \n = 1 rad / s and k = \n 1 ohm . \n \n = Beta @-@ 2 = \n \n Beta text . \n");
  std::vector<Passage> ps = read_corpus(dir + "/w.raw", CorpusFormat::WikiText, llama_tok(), 128);
  REQUIRE(ps.size() == 2);
  CHECK(ps[0].title == "Alpha");
  // Paragraphs that fit are packed into one passage, one per line.
  CHECK(ps[0].text == "First paragraph of alpha .\nSecond paragraph .\nThe value is\n= 1 rad / s and k =\n1 ohm .");
  CHECK(ps[1].title == "Beta @-@ 2");
  CHECK(ps[1].text == "Beta text .");
  CHECK(ps[0].document() == "Alpha\n" + ps[0].text);

  // A tight budget cuts the long paragraph into near-equal chunks.
  std::string words;
  for (int i = 0; i < 60; ++i) words += " word" + std::to_string(i);
  write_text(dir + "/long.txt", words + "\n\nshort one\n");
  ps = read_corpus(dir + "/long.txt", CorpusFormat::Paragraphs, llama_tok(), 50);
  const size_t total = llama_tok().encode(words).size();
  REQUIRE(ps.size() >= 4);
  for (const Passage& p : ps) {
    CHECK(p.title.empty());
    CHECK(llama_tok().encode(p.text).size() <= 50);
  }
  CHECK(ps.back().text == "short one");  // paragraphs are never merged in this format
  CHECK(llama_tok().encode(ps[0].text).size() >= total / 4 - 8);
}

TEST_CASE("retrieval: JSONL and paragraph corpora", "[retrieval]") {
  std::string dir = flashback::test::temp_dir("corpus");
  write_text(dir + "/c.jsonl",
             "{\"title\": \"One\", \"text\": \"First line.\\nSecond line.\"}\n\n"
             "{\"text\": \"No title here.\"}\r\n"
             "{\"title\": null, \"text\": \"\"}\n");
  std::vector<Passage> ps = read_corpus(dir + "/c.jsonl", CorpusFormat::Jsonl, tok512(), 64);
  REQUIRE(ps.size() == 2);
  CHECK(ps[0].title == "One");
  CHECK(ps[0].text == "First line.\nSecond line.");
  CHECK(ps[1].title.empty());

  std::vector<Passage> stories =
      read_corpus(shared("data/tinystories/tinystories_val_prefix.txt"), CorpusFormat::Paragraphs, tok512(), 128);
  CHECK(stories.size() > 2000);
  for (const Passage& p : stories) REQUIRE(tok512().encode(p.text).size() <= 128);

  // Progress reaches the end of the file.
  uint64_t last = 0, total = 1;
  read_corpus(shared(kWikiTest), CorpusFormat::WikiText, tok512(), 128, [&](uint64_t d, uint64_t t) {
    CHECK(d >= last);
    last = d;
    total = t;
  });
  CHECK(last == total);
  CHECK(total == fs::file_size(shared(kWikiTest)));
}

TEST_CASE("retrieval: bad corpora are clear errors", "[retrieval]") {
  std::string dir = flashback::test::temp_dir("corpus");
  auto read = [&](const std::string& name, CorpusFormat f) { return read_corpus(dir + "/" + name, f, tok512(), 64); };

  CHECK_THAT(thrown<FormatError>([&] { read("missing.txt", CorpusFormat::WikiText); }),
             Catch::Matchers::Contains(dir + "/missing.txt") && Catch::Matchers::Contains("cannot open"));
  write_text(dir + "/empty.txt", "");
  CHECK_THAT(thrown<FormatError>([&] { read("empty.txt", CorpusFormat::Paragraphs); }),
             Catch::Matchers::Contains("empty.txt") && Catch::Matchers::Contains("empty corpus"));
  write_text(dir + "/headings.raw", " \n = Only A Title = \n \n = = Section = = \n \n");
  CHECK_THAT(thrown<FormatError>([&] { read("headings.raw", CorpusFormat::WikiText); }), Catch::Matchers::Contains("empty corpus"));
  CHECK_THAT(thrown<FormatError>([&] { read_corpus(dir, CorpusFormat::Paragraphs, tok512(), 64); }),
             Catch::Matchers::Contains("directory"));

  write_text(dir + "/bad.jsonl", "{\"title\": \"a\", \"text\": \"fine\"}\n{\"title\": \"b\", \"text\": \n");
  CHECK_THAT(thrown<FormatError>([&] { read("bad.jsonl", CorpusFormat::Jsonl); }),
             Catch::Matchers::Contains(dir + "/bad.jsonl:2:") && Catch::Matchers::Contains("malformed JSON"));
  write_text(dir + "/notext.jsonl", "{\"title\": \"a\"}\n");
  CHECK_THAT(thrown<FormatError>([&] { read("notext.jsonl", CorpusFormat::Jsonl); }),
             Catch::Matchers::Contains("notext.jsonl:1:") && Catch::Matchers::Contains("\"text\""));
  write_text(dir + "/array.jsonl", "\n\n[1, 2]\n");
  CHECK_THAT(thrown<FormatError>([&] { read("array.jsonl", CorpusFormat::Jsonl); }), Catch::Matchers::Contains("array.jsonl:3:"));
  write_text(dir + "/title.jsonl", "{\"title\": 5, \"text\": \"x\"}\n");
  CHECK_THAT(thrown<FormatError>([&] { read("title.jsonl", CorpusFormat::Jsonl); }), Catch::Matchers::Contains("title.jsonl:1:"));

  write_text(dir + "/ok.txt", "some text\n");
  CHECK_THROWS_AS(read_corpus(dir + "/ok.txt", CorpusFormat::Paragraphs, tok512(), 0), InvalidArgument);
  CHECK_THROWS_AS(parse_corpus_format("xml"), InvalidArgument);
  CHECK(parse_corpus_format("jsonl") == CorpusFormat::Jsonl);
}

// ------------------------------------------------------------------ BM25
TEST_CASE("retrieval: BM25 finds a passage from a verbatim 32-token window", "[retrieval][bm25]") {
  const WikiIndex& w = wiki_index();
  BM25Retriever r(w.dir);
  REQUIRE(r.size() == static_cast<int64_t>(w.passages.size()));
  const std::vector<size_t> picks = sample(w.passages, llama_tok(), 50);
  REQUIRE(picks.size() == 50);
  size_t hits = 0;
  for (size_t i : picks) {
    const Passage& p = w.passages[i];
    std::string q = middle_window(llama_tok(), p.text);
    std::vector<Passage> got = r.retrieve(q, 3);
    REQUIRE_FALSE(got.empty());
    if (got[0].id == p.id) {
      ++hits;
      CHECK(got[0].title == p.title);
      CHECK(got[0].text == p.text);
    } else {
      UNSCOPED_INFO("miss: passage " << p.id << " [" << p.title << "] query \"" << q << "\" -> " << got[0].id);
    }
    for (size_t j = 1; j < got.size(); ++j) CHECK(got[j - 1].score >= got[j].score);
  }
  std::printf("BM25 verbatim-window hit rate on %s: %zu/%zu\n", kWikiTest.c_str(), hits, picks.size());
  CHECK(hits == picks.size());
}

TEST_CASE("retrieval: forbidden titles never come back, k results still do", "[retrieval][bm25]") {
  const WikiIndex& w = wiki_index();
  BM25Retriever r(w.dir);
  const std::vector<size_t> picks = sample(w.passages, llama_tok(), 20);

  // The real list forbids every article of the test split: nothing comes
  // back, even for queries copied from them.
  r.set_title_filter(TitleFilter::from_file(shared(kForbidden)));
  for (size_t i : picks) CHECK(r.retrieve(middle_window(llama_tok(), w.passages[i].text), 10).empty());
  CHECK(r.retrieve("the history of the city", 10).empty());

  // Forbid every other article, spelt the plain way ("Ise-class", "'s").
  std::vector<std::string> titles;
  for (const Passage& p : w.passages)
    if (titles.empty() || titles.back() != p.title) titles.push_back(p.title);
  TitleFilter half;
  std::set<std::string> forbidden_raw;
  for (size_t t = 0; t < titles.size(); t += 2) {
    std::string plain = titles[t];
    for (auto [from, to] : {std::pair<std::string, std::string>{" @-@ ", "-"}, {" 's", "'s"}, {" , ", ", "}}) {
      for (size_t pos; (pos = plain.find(from)) != std::string::npos;) plain.replace(pos, from.size(), to);
    }
    half.add(plain);
    forbidden_raw.insert(titles[t]);
  }
  r.set_title_filter(half);
  size_t from_forbidden = 0;
  for (size_t i : picks) {
    const Passage& p = w.passages[i];
    std::vector<Passage> got = r.retrieve(middle_window(llama_tok(), p.text), 10);
    CHECK(got.size() == 10);
    for (const Passage& g : got) CHECK(forbidden_raw.count(g.title) == 0);
    if (forbidden_raw.count(p.title)) {
      ++from_forbidden;
    } else {
      CHECK(got[0].id == p.id);  // allowed passages are still found first
    }
  }
  CHECK(from_forbidden > 0);

  // k results whenever that many allowed passages match; fewer otherwise.
  CHECK(r.retrieve("the history of the city", 50).size() == 50);
  r.set_title_filter({});
  CHECK(r.retrieve("the history of the city", 50).size() == 50);
  std::vector<Passage> rare = r.retrieve("Intramuros", 1000);
  CHECK(!rare.empty());
  CHECK(rare.size() < 100);
}

TEST_CASE("retrieval: BM25 queries that match nothing, odd syntax, bad k", "[retrieval][bm25]") {
  BM25Retriever r(wiki_index().dir);
  CHECK(r.retrieve("", 5).empty());
  CHECK(r.retrieve("   \n ", 5).empty());
  CHECK(r.retrieve("the of and to is", 5).empty());  // Lucene stopwords only
  CHECK(r.retrieve("@-@ , . ( ) \" ;", 5).empty());
  CHECK(r.retrieve("qzxqzxv", 5).empty());
  CHECK_NOTHROW(r.retrieve("title:\"Du Fu AND (OR NOT \" * ~ -poet", 5));
  CHECK(r.retrieve("title:\"Du Fu AND (OR NOT \" * ~ -poet", 5).size() == 5);
  CHECK(r.retrieve(std::string(5000, 'a') + " \xFF\xFE invalid utf8 Du Fu", 3).size() == 3);
  CHECK_THROWS_AS(r.retrieve("Du Fu", 0), InvalidArgument);
  CHECK_THROWS_AS(r.retrieve("Du Fu", -3), InvalidArgument);
  // Stemming: "poems" finds "poem", at query and index time alike.
  std::vector<Passage> got = r.retrieve("Du Fu poems", 1);
  REQUIRE(got.size() == 1);
  CHECK(got[0].title == "Du Fu");
}

// ------------------------------------------------------------------ dense
TEST_CASE("retrieval: dense index with the stories260K encoder finds a passage from its own text",
          "[retrieval][dense]") {
  const std::string model_path = shared("models/stories260K/stories260K.bin");
  Checkpoint ck = read_checkpoint(model_path);
  Tokenizer tok = load_tokenizer(ck);
  auto encoder = std::make_shared<ModelEncoder>(load_model(ck), tok, model_path, 128);
  REQUIRE(encoder->dim() == 64);

  // Unit vectors; an empty text is zero; batching does not change a text's vector.
  std::vector<std::string> texts = {"Once upon a time there was a cat.", "", "Tom ran to the park and played."};
  std::vector<float> batch = encoder->encode(texts);
  REQUIRE(batch.size() == 3 * 64);
  for (int r : {0, 2}) {
    double n = 0;
    for (int j = 0; j < 64; ++j) n += batch[r * 64 + j] * batch[r * 64 + j];
    CHECK(std::abs(n - 1.0) < 1e-5);
    std::vector<float> one = encoder->encode({texts[r]});
    for (int j = 0; j < 64; ++j) CHECK(std::abs(one[j] - batch[r * 64 + j]) < 1e-5);
  }
  for (int j = 0; j < 64; ++j) CHECK(batch[64 + j] == 0.0f);

  // 200 TinyStories paragraphs as titled JSONL documents.
  std::string dir = flashback::test::temp_dir("dense");
  {
    std::string all = read_file(shared("data/tinystories/tinystories_val_prefix.txt"));
    std::ofstream out(dir + "/stories.jsonl");
    size_t pos = 0;
    for (int i = 0; i < 200 && pos < all.size(); ++i) {
      size_t e = all.find("\n\n", pos);
      if (e == std::string::npos) e = all.size();
      out << nlohmann::json({{"title", "Story " + std::to_string(i)}, {"text", all.substr(pos, e - pos)}}).dump() << "\n";
      pos = e + 2;
    }
  }
  std::vector<Passage> ps = read_corpus(dir + "/stories.jsonl", CorpusFormat::Jsonl, tok, 64);
  REQUIRE(ps.size() >= 200);
  IndexInfo info;
  info.max_tokens = 64;
  int calls = 0;
  build_dense_index(ps, *encoder, info, dir + "/index", [&](uint64_t, uint64_t) { ++calls; });
  CHECK(calls > 0);
  IndexInfo read = read_index_info(dir + "/index");
  CHECK(read.kind == "dense");
  CHECK(read.encoder == model_path);
  CHECK(read.passages == static_cast<int64_t>(ps.size()));

  DenseRetriever r(dir + "/index", encoder);
  size_t hits = 0, tried = 0;
  for (size_t i = 0; i < ps.size(); i += 7) {
    std::vector<Passage> got = r.retrieve(ps[i].document(), 3);
    REQUIRE(got.size() == 3);
    ++tried;
    if (got[0].id == static_cast<int64_t>(i)) ++hits;
    CHECK(got[0].score >= got[1].score);
  }
  std::printf("dense (stories260K) own-text hit rate: %zu/%zu\n", hits, tried);
  CHECK(hits == tried);

  // The filter applies here too, and k results still come back.
  TitleFilter f;
  f.add(ps[0].title);
  r.set_title_filter(f);
  std::vector<Passage> got = r.retrieve(ps[0].document(), 5);
  REQUIRE(got.size() == 5);
  for (const Passage& g : got) CHECK(g.title != ps[0].title);
  CHECK(r.retrieve("", 5).empty());
  CHECK_THROWS_AS(r.retrieve("cat", 0), InvalidArgument);

  // open_index picks the kind from meta.json; a dense index needs an encoder.
  CHECK(open_index(dir + "/index", encoder)->size() == static_cast<int64_t>(ps.size()));
  CHECK_THAT(thrown<InvalidArgument>([&] { open_index(dir + "/index"); }), Catch::Matchers::Contains(model_path));
  CHECK_THROWS_AS(DenseRetriever(dir + "/index", std::make_shared<ToyEncoder>(16)), InvalidArgument);  // wrong dim
}

// ------------------------------------------------------------------ index directories
TEST_CASE("retrieval: index builds are atomic", "[retrieval][atomic]") {
  std::string root = flashback::test::temp_dir("atomic");
  std::string dir = root + "/idx";
  std::vector<Passage> ps = small_passages();
  build_bm25_index(ps, {}, dir);
  REQUIRE(open_index(dir)->size() == 3);

  // A BM25 build that fails part-way (here: its progress callback throws)...
  std::vector<Passage> more = wiki_index().passages;
  int ticks = 0;
  CHECK_THROWS_WITH(build_bm25_index(more, {}, dir,
                                     [&](uint64_t, uint64_t) {
                                       if (++ticks == 30) throw Error("interrupted");
                                     }),
                    "interrupted");
  // ...and a dense build whose encoder fails after two batches, over the same directory.
  CHECK_THROWS_WITH(build_dense_index(more, *std::make_shared<ToyEncoder>(16, 2), {}, dir), Catch::Matchers::Contains("simulated"));
  // A corpus that fails mid-way never reaches the index.
  write_text(root + "/bad.jsonl", "{\"title\": \"a\", \"text\": \"x\"}\nnot json\n");
  CHECK_THROWS_AS(read_corpus(root + "/bad.jsonl", CorpusFormat::Jsonl, tok512(), 64), FormatError);

  // The old index is intact and no staging directory is left behind.
  auto r = open_index(dir);
  CHECK(r->size() == 3);
  CHECK(r->retrieve("harbour boats", 1).at(0).title == "Boats");
  CHECK(siblings_of(dir).empty());

  // A successful rebuild replaces it (dense over BM25 here), leaving nothing else.
  auto toy = std::make_shared<ToyEncoder>(16);
  build_dense_index(more, *toy, {}, dir);
  CHECK(read_index_info(dir).kind == "dense");
  CHECK(open_index(dir, toy)->size() == static_cast<int64_t>(more.size()));
  CHECK(siblings_of(dir).empty());
  CHECK(!fs::exists(dir + "/xapian"));  // nothing of the old index survives inside

  // A directory that is not an index is never replaced.
  std::string other = root + "/precious";
  fs::create_directories(other);
  write_text(other + "/keep.txt", "data");
  CHECK_THAT(thrown<Error>([&] { build_bm25_index(ps, {}, other); }), Catch::Matchers::Contains("not an index"));
  CHECK(read_file(other + "/keep.txt") == "data");
  write_text(root + "/file", "x");
  CHECK_THROWS_AS(build_bm25_index(ps, {}, root + "/file"), Error);
  CHECK(siblings_of(other).empty());

  // Parents are created; an empty directory may be built into.
  build_bm25_index(ps, {}, root + "/a/b/c");
  fs::create_directories(root + "/emptydir");
  build_bm25_index(ps, {}, root + "/emptydir/");
  CHECK(open_index(root + "/emptydir")->size() == 3);
}

TEST_CASE("retrieval: missing, empty and corrupt index directories", "[retrieval]") {
  std::string root = flashback::test::temp_dir("badidx");
  auto open_msg = [](const std::string& d) { return thrown<FormatError>([&] { open_index(d); }); };

  CHECK_THAT(open_msg(root + "/missing"), Catch::Matchers::Contains(root + "/missing"));
  fs::create_directories(root + "/empty");
  CHECK_THAT(open_msg(root + "/empty"), Catch::Matchers::Contains(root + "/empty") && Catch::Matchers::Contains("meta.json"));
  write_text(root + "/afile", "x");
  CHECK_THAT(open_msg(root + "/afile"), Catch::Matchers::Contains("not an index directory"));

  fs::create_directories(root + "/garbage");
  write_text(root + "/garbage/meta.json", "{not json");
  CHECK_THAT(open_msg(root + "/garbage"), Catch::Matchers::Contains(root + "/garbage") && Catch::Matchers::Contains("corrupt"));
  write_text(root + "/garbage/meta.json", "{\"kind\": \"faiss\", \"passages\": 3}");
  CHECK_THAT(open_msg(root + "/garbage"), Catch::Matchers::Contains("unknown kind"));
  write_text(root + "/garbage/meta.json", "{\"kind\": \"bm25\", \"passages\": -1}");
  CHECK_THAT(open_msg(root + "/garbage"), Catch::Matchers::Contains("passages"));

  // Real indexes with a part removed or damaged.
  std::vector<Passage> ps = small_passages();
  build_bm25_index(ps, {}, root + "/bm25");
  fs::remove_all(root + "/bm25/xapian");
  CHECK_THAT(open_msg(root + "/bm25"), Catch::Matchers::Contains(root + "/bm25") && Catch::Matchers::Contains("corrupt"));

  auto toy = std::make_shared<ToyEncoder>(8);
  build_dense_index(ps, *toy, {}, root + "/dense");
  CHECK(read_index_info(root + "/dense").encoder == "toy:8");
  CHECK_THROWS_AS(open_index(root + "/dense"), InvalidArgument);  // no encoder
  write_text(root + "/dense/passages.jsonl", "{\"title\": \"a\", \"text\": \"b\"}\n");
  CHECK_THAT(thrown<FormatError>([&] { open_index(root + "/dense", toy); }), Catch::Matchers::Contains("passages"));
  write_text(root + "/dense/embeddings.safetensors", "truncated");
  CHECK_THAT(thrown<FormatError>([&] { open_index(root + "/dense", toy); }), Catch::Matchers::Contains(root + "/dense"));
  CHECK_THROWS_AS(DenseRetriever(root + "/bm25x", toy), FormatError);
  CHECK_THROWS_AS(build_bm25_index({}, {}, root + "/none"), InvalidArgument);
  CHECK_FALSE(fs::exists(root + "/none"));
}
