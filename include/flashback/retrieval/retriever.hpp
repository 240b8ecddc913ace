// Retrieval: passages (a title and at most N tokens of text) found for a
// query. The RALM loops see only this interface; BM25 (Xapian) and dense
// (Eigen inner product) indexes implement it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace flashback {

struct Passage {
  int64_t id = -1;    // position in the index
  std::string title;  // article title (WikiText " = Title = "), may be empty
  std::string text;
  double score = 0;   // retriever-specific, higher is better

  // What the language model reads: "title\ntext", or the text alone.
  std::string document() const { return title.empty() ? text : title + "\n" + text; }
};

// Titles compare after normalising: WikiText writes "WASP @-@ 44" and
// "women 's" where Wikipedia writes "WASP-44" and "women's"; the forbidden
// list mixes both spellings. Lowercase ASCII, drop everything that is not a
// letter or a digit (non-ASCII bytes are kept as they are).
std::string normalize_title(std::string_view title);

// Titles that must never be retrieved (e.g. the evaluation articles).
class TitleFilter {
 public:
  TitleFilter() = default;
  // One title per line; blank lines ignored. FormatError if unreadable.
  static TitleFilter from_file(const std::string& path);
  void add(std::string_view title) { titles_.insert(normalize_title(title)); }
  bool forbids(std::string_view title) const { return !titles_.empty() && titles_.count(normalize_title(title)) > 0; }
  size_t size() const { return titles_.size(); }
  // The normalised titles (an index may turn them into exclusion terms).
  const std::unordered_set<std::string>& normalized_titles() const { return titles_; }

 private:
  std::unordered_set<std::string> titles_;
};

// Thread-safety: one retriever may serve many sequences at once. retrieve()
// and size() may be called concurrently from any number of threads (the
// library's indexes serialise their searches internally: Xapian objects are
// not thread-safe, and a dense query encodes and scores under one lock; a
// subclass must keep this contract, e.g. a Python retriever takes the GIL).
// set_title_filter() is configuration: call it before the retriever is
// shared, never while a retrieve() may be running. Each sequence keeps its
// own DocumentSource (documents.hpp) over the shared retriever.
class Retriever {
 public:
  virtual ~Retriever() = default;
  // The best `k` passages for `query`, best first, none with a forbidden
  // title. May return fewer, or none (an empty query, no matching term).
  virtual std::vector<Passage> retrieve(const std::string& query, int64_t k) = 0;
  // Number of passages in the index.
  virtual int64_t size() const = 0;

  void set_title_filter(TitleFilter filter) {
    filter_ = std::move(filter);
    ++filter_generation_;
  }
  const TitleFilter& title_filter() const { return filter_; }

 protected:
  TitleFilter filter_;
  // Bumped by set_title_filter: implementations cache what they derive from
  // the filter (exclusion queries, masks) and rebuild it when this changes.
  uint64_t filter_generation_ = 0;
};

}  // namespace flashback
