// On-disk retrieval indexes. An index is a directory holding meta.json
// ({"kind": "bm25" | "dense", ...}) and the kind's own files; builds write a
// temporary directory and swap it in atomically, so a crash leaves the old
// index or none, never half of one.
//
//   bm25:  meta.json, xapian/ (glass database: data = text, value 0 = title)
//   dense: meta.json ("dim"), embeddings.safetensors ("embeddings" F32 [N, dim]),
//          passages.jsonl ({"title","text"}, line i = passage i)
//
// A build refuses (Error) to replace a target that exists and is not an
// index: a file, or a non-empty directory without meta.json. Parent
// directories are created.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashback/retrieval/corpus.hpp"
#include "flashback/retrieval/retriever.hpp"

namespace flashback {

struct IndexInfo {
  std::string kind;      // "bm25" | "dense"
  int64_t passages = 0;
  int64_t max_tokens = 0;
  std::string corpus;    // where the passages came from (informational)
  std::string format;    // corpus format name
  std::string encoder;   // dense: the encoder's description (e.g. the model path)
};

// meta.json of an index directory; FormatError naming the directory if absent or malformed.
IndexInfo read_index_info(const std::string& dir);

// ---- BM25 over Xapian (Pyserini's defaults: k1 = 0.9, b = 0.4), English
// stemming and Lucene's English stopwords, the same analysis for passages and
// queries.
struct BM25Params {
  double k1 = 0.9;
  double b = 0.4;
  // Xapian clamps a document's length / average length to at least this,
  // so that a tiny passage (the last few tokens of an article) cannot win
  // on one shared term. Lucene has no clamp; with b = 0.4 the clamp changes
  // a short passage's term weight by at most ~12%.
  double min_normlen = 0.5;
};

void build_bm25_index(const std::vector<Passage>& passages, const IndexInfo& info, const std::string& dir,
                      const ProgressFn& progress = {});

// Thread-safe as Retriever states: one Xapian database handle, its searches
// serialised by a mutex (a Xapian::Database may not be used from two threads
// at once). Searches are short next to a forward pass; a caller that wants
// them in parallel opens one BM25Retriever per thread on the same directory.
class BM25Retriever : public Retriever {
 public:
  explicit BM25Retriever(const std::string& dir, BM25Params params = {});
  ~BM25Retriever() override;
  std::vector<Passage> retrieve(const std::string& query, int64_t k) override;
  int64_t size() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- Dense: passages and queries embedded by a pluggable encoder; exact
// inner-product top-k over the memory-mapped [N, dim] fp32 matrix (Eigen).
// DenseRetriever is thread-safe as Retriever states: a query is encoded and
// scored under one lock, so its encoder is only ever called from one thread
// at a time by this retriever (an encoder shared with other code must be
// thread-safe itself; ModelEncoder is: a forward of a shared model).
class TextEncoder {
 public:
  virtual ~TextEncoder() = default;
  virtual int64_t dim() const = 0;
  // Row-major [texts.size(), dim()] embeddings.
  virtual std::vector<float> encode(const std::vector<std::string>& texts) = 0;
  // Recorded in meta.json so a reader can tell which encoder built an index.
  virtual std::string describe() const = 0;
};

void build_dense_index(const std::vector<Passage>& passages, TextEncoder& encoder, const IndexInfo& info,
                       const std::string& dir, const ProgressFn& progress = {});

class DenseRetriever : public Retriever {
 public:
  DenseRetriever(const std::string& dir, std::shared_ptr<TextEncoder> encoder);
  ~DenseRetriever() override;
  std::vector<Passage> retrieve(const std::string& query, int64_t k) override;
  int64_t size() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Opens the index in `dir` by its meta.json kind. A dense index needs
// `encoder` (InvalidArgument without one); a BM25 index ignores it.
std::unique_ptr<Retriever> open_index(const std::string& dir, std::shared_ptr<TextEncoder> encoder = nullptr);

// ---- What the front ends (CLI, Python) do with indexes, in one place.

struct RetrieverOptions {
  std::string encoder_model;      // dense: the query encoder ("": the model recorded in meta.json)
  std::string encoder_tokenizer;  // dense: its tokenizer ("": found with the model)
  std::string forbidden_titles;   // a file of titles never to retrieve ("": none)
};

// Opens the index in `dir`; a dense index gets its encoder model loaded.
std::unique_ptr<Retriever> open_retriever(const std::string& dir, const RetrieverOptions& options = {});

struct IndexProgress {
  ProgressFn reading;   // corpus bytes read
  ProgressFn building;  // passages indexed or embedded
};

// Splits `corpus` into passages of at most `max_tokens` tokens of `splitter`
// and builds an index in `dir` (atomically): dense with `encoder`, BM25
// without one. Returns the passage count.
int64_t index_corpus(const std::string& corpus, CorpusFormat format, const Tokenizer& splitter, int64_t max_tokens,
                     const std::string& dir, TextEncoder* encoder = nullptr, const IndexProgress& progress = {});

}  // namespace flashback
