// BM25 over Xapian. Each passage is one Xapian document: its data is the
// text, value slot 0 the title, and a boolean term "XT<normalised title>"
// lets forbidden titles be excluded inside the matcher (OP_AND_NOT), so the
// top k are the best k *allowed* passages without guessing an over-fetch.
#include <xapian.h>

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "flashback/error.hpp"
#include "flashback/strings.hpp"
#include "flashback/retrieval/index.hpp"
#include "index_dir.hpp"

namespace flashback {

namespace {

constexpr const char* kDbDir = "/xapian";
constexpr Xapian::valueno kTitleSlot = 0;
// Recorded in meta.json: an index built with another analysis would silently
// mismatch its queries, so opening it is refused instead.
constexpr const char* kAnalyzer = "xapian-english-stem/lucene-stopwords/v1";

// Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (what Pyserini removes).
const char* const kLuceneStopwords[] = {"a",    "an",    "and",  "are",  "as",   "at",   "be",    "but",  "by",
                                        "for",  "if",    "in",   "into", "is",   "it",   "no",    "not",  "of",
                                        "on",   "or",    "such", "that", "the",  "their", "then", "there", "these",
                                        "they", "this",  "to",   "was",  "will", "with"};

// The one analysis, used to index passages and to read queries: Xapian's
// word splitting and lowercasing, Lucene's English stopwords dropped, the
// English (Snowball Porter2) stemmer on every term, no positions (no phrase
// search is needed, and the index stays smaller).
class Analyzer {
 public:
  Analyzer() : stem_("english"), stopper_(std::begin(kLuceneStopwords), std::end(kLuceneStopwords)) {
    tg_.set_stemmer(stem_);
    tg_.set_stopper(&stopper_);
    tg_.set_stemming_strategy(Xapian::TermGenerator::STEM_ALL);
    tg_.set_stopper_strategy(Xapian::TermGenerator::STOP_ALL);
  }
  Analyzer(const Analyzer&) = delete;
  Analyzer& operator=(const Analyzer&) = delete;

  // Adds the analysed terms of `text` to `doc` (wdf = occurrences).
  void index(Xapian::Document& doc, const std::string& text) {
    tg_.set_document(doc);
    tg_.index_text_without_positions(text);
  }

 private:
  Xapian::Stem stem_;
  Xapian::SimpleStopper stopper_;
  Xapian::TermGenerator tg_;
};

// Xapian terms are limited to ~245 bytes: long titles keep a prefix and a
// hash. A collision could only exclude an allowed passage, never let a
// forbidden one through (results are checked against the filter as well).
std::string title_term(const std::string& normalized) {
  if (normalized.size() <= 160) return "XT" + normalized;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a(normalized)));
  return "XT" + normalized.substr(0, 140) + "#" + hex;
}

}  // namespace

void build_bm25_index(const std::vector<Passage>& passages, const IndexInfo& info_in, const std::string& dir,
                      const ProgressFn& progress) {
  if (passages.empty()) throw InvalidArgument(dir + ": no passages to index");
  StagedDirectory stage(dir, detail::kIndexMarker, "an index");
  IndexInfo info = info_in;
  info.kind = "bm25";
  info.passages = static_cast<int64_t>(passages.size());
  try {
    Xapian::WritableDatabase db(stage.path() + kDbDir, Xapian::DB_CREATE | Xapian::DB_BACKEND_GLASS);
    Analyzer analyzer;
    const size_t n = passages.size(), step = std::max<size_t>(1, n / 100);
    for (size_t i = 0; i < n; ++i) {
      const Passage& p = passages[i];
      Xapian::Document doc;
      doc.set_data(p.text);
      doc.add_value(kTitleSlot, p.title);
      doc.add_boolean_term(title_term(normalize_title(p.title)));
      analyzer.index(doc, p.document());  // the title's words count, as in Pyserini's "title\ntext" contents
      db.replace_document(static_cast<Xapian::docid>(i + 1), doc);
      if (progress && (i + 1) % step == 0) progress(i + 1, n);
    }
    db.commit();
    db.close();
  } catch (const Xapian::Error& e) {
    throw Error(dir + ": building the BM25 index failed: " + e.get_description());
  }
  if (progress) progress(passages.size(), passages.size());
  detail::write_index_info(stage.path(), info, {{"analyzer", kAnalyzer}});
  stage.commit();
}

struct BM25Retriever::Impl {
  std::string dir;
  BM25Params params;
  Xapian::Database db;
  Analyzer analyzer;
  std::unique_ptr<Xapian::Enquire> enquire;
  int64_t passages = 0;     // read at open: size() never touches the database
  uint64_t exclusion_generation = ~uint64_t{0};
  Xapian::Query exclusion;  // OR of the forbidden title terms present in the index
  std::mutex mu;            // held by every use of the Xapian objects above: they are not thread-safe
};

BM25Retriever::BM25Retriever(const std::string& dir, BM25Params params) : impl_(std::make_unique<Impl>()) {
  nlohmann::json meta = detail::read_index_meta(dir);
  if (meta["kind"] != "bm25") throw FormatError(dir, "not a BM25 index (kind '" + meta["kind"].get<std::string>() + "')");
  if (meta.value("analyzer", std::string()) != kAnalyzer)
    throw FormatError(dir, "BM25 index built with another text analysis ('" + meta.value("analyzer", std::string()) +
                               "', expected '" + kAnalyzer + "'): rebuild it");
  impl_->dir = dir;
  impl_->params = params;
  try {
    impl_->db = Xapian::Database(dir + kDbDir);
  } catch (const Xapian::Error& e) {
    throw FormatError(dir, "corrupt BM25 index: " + e.get_description());
  }
  const auto n = static_cast<int64_t>(impl_->db.get_doccount());
  impl_->passages = n;
  if (n != meta["passages"].get<int64_t>())
    throw FormatError(dir, "corrupt BM25 index: meta.json says " + meta["passages"].dump() + " passages, the database holds " +
                               std::to_string(n));
  impl_->enquire = std::make_unique<Xapian::Enquire>(impl_->db);
  // k2 = 0: plain Robertson BM25 as Lucene computes it (k2 is Xapian's extra
  // query-length correction). k3 = 0: wqf is ignored and repeated query
  // terms are weighted by OP_SCALE_WEIGHT instead, exactly Anserini's
  // bag-of-words query (one clause per distinct term, boosted by its count).
  impl_->enquire->set_weighting_scheme(Xapian::BM25Weight(params.k1, 0.0, 0.0, params.b, params.min_normlen));
}

BM25Retriever::~BM25Retriever() = default;

int64_t BM25Retriever::size() const { return impl_->passages; }

std::vector<Passage> BM25Retriever::retrieve(const std::string& query, int64_t k) {
  if (k <= 0) throw InvalidArgument("retrieve: k must be positive (got " + std::to_string(k) + ")");
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& m = *impl_;
  std::vector<Passage> out;
  try {
    // The query is analysed exactly like a passage, then its terms are ORed:
    // arbitrary text never meets a query parser.
    Xapian::Document scratch;
    m.analyzer.index(scratch, query);
    std::vector<Xapian::Query> terms;
    for (auto t = scratch.termlist_begin(); t != scratch.termlist_end(); ++t) {
      Xapian::Query q(*t);
      Xapian::termcount count = t.get_wdf();
      terms.push_back(count > 1 ? Xapian::Query(Xapian::Query::OP_SCALE_WEIGHT, q, count) : q);
    }
    if (terms.empty()) return out;
    Xapian::Query q(Xapian::Query::OP_OR, terms.begin(), terms.end());

    if (m.exclusion_generation != filter_generation_) {
      std::vector<Xapian::Query> ex;
      for (const std::string& t : filter_.normalized_titles()) {
        std::string term = title_term(t);
        if (m.db.term_exists(term)) ex.emplace_back(term);
      }
      m.exclusion = Xapian::Query(Xapian::Query::OP_OR, ex.begin(), ex.end());
      m.exclusion_generation = filter_generation_;
    }
    if (!m.exclusion.empty()) q = Xapian::Query(Xapian::Query::OP_AND_NOT, q, m.exclusion);
    m.enquire->set_query(q);

    // The exclusion already removed forbidden titles; the filter is checked
    // again per result, and should it drop any, more are fetched.
    const Xapian::doccount total = m.db.get_doccount();
    const auto want = static_cast<Xapian::doccount>(std::min<int64_t>(k, total));
    Xapian::doccount first = 0, batch = want;
    while (static_cast<int64_t>(out.size()) < k && first < total) {
      Xapian::MSet mset = m.enquire->get_mset(first, batch);
      for (auto it = mset.begin(); it != mset.end() && static_cast<int64_t>(out.size()) < k; ++it) {
        Xapian::Document doc = it.get_document();
        std::string title = doc.get_value(kTitleSlot);
        if (filter_.forbids(title)) continue;
        Passage p;
        p.id = static_cast<int64_t>(*it) - 1;
        p.title = std::move(title);
        p.text = doc.get_data();
        p.score = it.get_weight();
        out.push_back(std::move(p));
      }
      if (mset.size() < batch) break;
      first += mset.size();
      batch = std::min<Xapian::doccount>(batch * 2, total);
    }
  } catch (const Xapian::Error& e) {
    throw Error(m.dir + ": BM25 search failed: " + e.get_description());
  }
  return out;
}

}  // namespace flashback
