// flashback index: split a corpus into passages and build a BM25 or dense
// retrieval index directory (atomically replacing an existing one).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>

#include "commands.hpp"
#include "flashback/checkpoint.hpp"
#include "flashback/error.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/retrieval/model_encoder.hpp"
#include "flashback/runtime.hpp"

namespace flashback::cli {

namespace {
struct IndexArgs {
  std::string corpus, format, tokenizer, out, kind = "bm25", model;
  int64_t max_tokens = 128;
  int threads = 0;
  bool quiet = false;
};

// "<label>  42%" on stderr, rewritten in place with \r; only on a terminal
// (a log file or a test's captured stderr keeps the one-line error contract).
class Progress {
 public:
  Progress(const char* label, bool enabled) : label_(label), enabled_(enabled) {}
  ~Progress() { finish(); }
  void operator()(uint64_t done, uint64_t total) {
    if (!enabled_) return;
    int pct = total ? static_cast<int>(done * 100 / total) : 100;
    if (pct == last_) return;
    last_ = pct;
    std::fprintf(stderr, "\r%s %3d%%", label_, pct);
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_ && last_ >= 0) std::fprintf(stderr, "\n");
    last_ = -1;
  }

 private:
  const char* label_;
  bool enabled_;
  int last_ = -1;
};

std::string absolute_path(const std::string& p) { return std::filesystem::absolute(p).lexically_normal().string(); }

void run(const IndexArgs& a) {
  const auto start = std::chrono::steady_clock::now();
  if (a.kind != "bm25" && a.kind != "dense") throw InvalidArgument("unknown index kind '" + a.kind + "' (bm25, dense)");
  if (a.kind == "dense" && a.model.empty()) throw InvalidArgument("--kind dense needs --model (the encoder)");
  if (a.kind == "bm25" && !a.model.empty()) throw InvalidArgument("--model is only used by --kind dense");
  if (a.kind == "bm25" && a.tokenizer.empty())
    throw InvalidArgument("--tokenizer is required (it measures the passages' --max-tokens)");
  const CorpusFormat format = parse_corpus_format(a.format);
  const bool show = !a.quiet && ::isatty(2);

  // Dense: the model, its own tokenizer for the encoder (or --tokenizer if
  // none is found with it), loaded before the corpus so a bad model fails fast.
  std::unique_ptr<ModelEncoder> encoder;
  Tokenizer splitter;
  if (a.kind == "dense") {
    init_threads(a.threads);
    Checkpoint ck = read_checkpoint(a.model);
    Tokenizer own;
    try {
      own = load_tokenizer(ck);
    } catch (const Error&) {
      if (a.tokenizer.empty()) throw;
      own = load_tokenizer(ck, a.tokenizer);
    }
    LlamaForCausalLM model = load_model(ck);
    ck.tensors.clear();  // release the mapped file
    splitter = a.tokenizer.empty() ? own : Tokenizer::from_file(a.tokenizer);
    encoder = std::make_unique<ModelEncoder>(model, own, absolute_path(a.model), a.max_tokens);
  } else {
    splitter = Tokenizer::from_file(a.tokenizer);
  }

  Progress reading("reading corpus", show), building(a.kind == "dense" ? "embedding" : "indexing", show);
  IndexProgress progress;
  progress.reading = [&](uint64_t done, uint64_t total) { reading(done, total); };
  progress.building = [&](uint64_t done, uint64_t total) {
    reading.finish();
    building(done, total);
  };
  const int64_t n = index_corpus(a.corpus, format, splitter, a.max_tokens, a.out, encoder.get(), progress);
  building.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("indexed %lld passages (<= %lld tokens) from %s into %s (%s) in %.2f s\n", static_cast<long long>(n),
              static_cast<long long>(a.max_tokens), a.corpus.c_str(), a.out.c_str(), a.kind.c_str(), secs);
}
}  // namespace

void add_index(CLI::App& app) {
  auto a = std::make_shared<IndexArgs>();
  CLI::App* cmd = app.add_subcommand("index", "Split a corpus into passages and build a retrieval index");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--corpus", a->corpus, "corpus file")->required();
  cmd->add_option("--format", a->format, "wikitext, paragraphs or jsonl ({\"title\",\"text\"} per line)")->required();
  cmd->add_option("--tokenizer,-t", a->tokenizer, "tokenizer that measures passages: tokenizer.model, tokenizer.json, tokenizer.bin or a .gguf (dense: default the model's)");
  cmd->add_option("--out,-o", a->out, "index directory (replaced atomically if it holds an index)")->required();
  cmd->add_option("--max-tokens", a->max_tokens, "passage length budget in tokens")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--kind", a->kind, "bm25 or dense");
  cmd->add_option("--model,-m", a->model, "dense: the model whose hidden states embed passages");
  cmd->add_option("--threads", a->threads, "dense: intra-op threads (default: all cores)");
  cmd->add_flag("--quiet,-q", a->quiet, "no progress on stderr");
  cmd->callback([a] { run(*a); });
}

}  // namespace flashback::cli
