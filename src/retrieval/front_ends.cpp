// Opening and building indexes as the CLI and the Python package both do.
#include <filesystem>

#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/retrieval/model_encoder.hpp"

namespace flashback {

namespace {
std::string absolute_path(const std::string& p) { return std::filesystem::absolute(p).lexically_normal().string(); }

// A dense index's query encoder: the given model, else the one recorded in
// meta.json when that path still exists.
std::shared_ptr<TextEncoder> dense_encoder(const std::string& dir, const IndexInfo& info, const RetrieverOptions& o) {
  std::string path = o.encoder_model;
  if (path.empty()) {
    std::error_code ec;
    if (info.encoder.empty() || !std::filesystem::exists(info.encoder, ec))
      throw InvalidArgument(dir + ": a dense index needs an encoder model (it was built with encoder '" + info.encoder +
                            "')");
    path = info.encoder;
  }
  Checkpoint ck = read_checkpoint(path);
  Tokenizer tok = load_tokenizer(ck, o.encoder_tokenizer);
  LlamaForCausalLM model = load_model(ck);
  ck.tensors.clear();  // release the mapped file
  return std::make_shared<ModelEncoder>(model, std::move(tok), absolute_path(path),
                                        info.max_tokens > 0 ? info.max_tokens : 128);
}
}  // namespace

std::unique_ptr<Retriever> open_index(const std::string& dir, std::shared_ptr<TextEncoder> encoder) {
  IndexInfo info = read_index_info(dir);
  if (info.kind == "bm25") return std::make_unique<BM25Retriever>(dir);
  if (!encoder)
    throw InvalidArgument(dir + ": a dense index needs a text encoder (it was built with '" + info.encoder + "')");
  return std::make_unique<DenseRetriever>(dir, std::move(encoder));
}

std::unique_ptr<Retriever> open_retriever(const std::string& dir, const RetrieverOptions& options) {
  IndexInfo info = read_index_info(dir);
  std::shared_ptr<TextEncoder> encoder;
  if (info.kind == "dense") encoder = dense_encoder(dir, info, options);
  std::unique_ptr<Retriever> r = open_index(dir, encoder);
  if (!options.forbidden_titles.empty()) r->set_title_filter(TitleFilter::from_file(options.forbidden_titles));
  return r;
}

int64_t index_corpus(const std::string& corpus, CorpusFormat format, const Tokenizer& splitter, int64_t max_tokens,
                     const std::string& dir, TextEncoder* encoder, const IndexProgress& progress) {
  std::vector<Passage> passages = read_corpus(corpus, format, splitter, max_tokens, progress.reading);
  IndexInfo info;
  info.max_tokens = max_tokens;
  info.corpus = absolute_path(corpus);
  info.format = corpus_format_name(format);
  if (encoder)
    build_dense_index(passages, *encoder, info, dir, progress.building);
  else
    build_bm25_index(passages, info, dir, progress.building);
  return static_cast<int64_t>(passages.size());
}

}  // namespace flashback
