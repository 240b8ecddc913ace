// Concurrency: one model serves eight sequences at once, each with its own
// context, KV cache and document source, all retrieving from ONE shared BM25
// retriever, and every run gives bit for bit what the same run gives alone:
// the greedy tokens, the NLL sums, and what each retrieval asked and found.
// One intra-op thread (the suite's FLASHBACK_THREADS=1), so the threads are
// ours, not LibTorch's. scripts/test.sh --tsan runs these [threads] tests
// under ThreadSanitizer.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <cstdlib>
#include <exception>
#include <fstream>
#include <iomanip>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "flashback/flashback.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/retrieval/corpus.hpp"
#include "flashback/retrieval/index.hpp"
#include "flashback/retrieval/model_encoder.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::shared;

namespace {

constexpr int kThreads = 8;

const std::string kModel = "models/stories260K/stories260K.bin";

// The first `n` blank-line separated paragraphs of the TinyStories prefix.
std::vector<std::string> paragraphs(size_t n) {
  const std::string all = read_file(shared("data/tinystories/tinystories_val_prefix.txt"));
  std::vector<std::string> out;
  for (size_t pos = 0; pos < all.size() && out.size() < n;) {
    size_t e = all.find("\n\n", pos);
    if (e == std::string::npos) e = all.size();
    if (e > pos) out.push_back(all.substr(pos, e - pos));
    pos = e + 2;
  }
  return out;
}

// 400 paragraphs as 64-token passages (tok512), BM25-indexed once per run.
struct StoriesIndex {
  std::vector<Passage> passages;
  std::string dir;
};
const StoriesIndex& stories_index() {
  static const StoriesIndex s = [] {
    StoriesIndex x;
    const std::string tmp = flashback::test::temp_dir("threads");
    {
      std::ofstream out(tmp + "/corpus.txt", std::ios::binary);
      for (const std::string& p : paragraphs(400)) out << p << "\n\n";
    }
    const Tokenizer tok = Tokenizer::from_file(shared("models/stories260K/tok512.model"));
    x.passages = read_corpus(tmp + "/corpus.txt", CorpusFormat::Paragraphs, tok, 64);
    x.dir = tmp + "/bm25";
    IndexInfo info;
    info.max_tokens = 64;
    build_bm25_index(x.passages, info, x.dir);
    return x;
  }();
  return s;
}

// Runs job(i) for i in [0, n) on n threads released together; rethrows the
// first exception in the calling thread (Catch2's assertions stay there).
template <class F>
void run_together(int n, F job) {
  std::promise<void> go;
  std::shared_future<void> ready = go.get_future().share();
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      ready.wait();
      try {
        job(i);
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    });
  go.set_value();
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// ---------------------------------------------------------------- the RALM runs

// stories260K with the marking tokens and a LoRA adapter on every projection
// plus the two mark rows, moved off zero so that it changes the results.
struct Setup {
  LlamaForCausalLM model{nullptr};
  Tokenizer tok;
  MarkingToken marks;
};
Setup adapted_stories() {
  Checkpoint ck = read_checkpoint(shared(kModel));
  Setup s;
  s.tok = load_tokenizer(ck);
  s.marks = add_marking_tokens(ck, s.tok);
  s.model = load_model(ck);
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0.0;
  c.target_modules = lora_target_names();
  c.trainable_token_indices = {s.marks.left(), s.marks.right()};
  add_lora(*s.model, c);
  s.model->eval();
  at::manual_seed(14);
  at::NoGradGuard g;
  for (auto& item : s.model->named_parameters())
    if (item.key().find("lora_B") != std::string::npos || item.key().find("trainable_tokens_delta") != std::string::npos)
      item.value().add_(at::randn_like(item.value()) * 0.02);  // small: the stories stay stories
  return s;
}

// One sequence's work: a mode, where the documents sit, how many, and the
// texts it generates after and scores.
struct Job {
  ContextMode mode;
  std::string doc_positions;
  int64_t k;
  std::vector<int64_t> prompt;
  std::vector<int64_t> text;
};

// Everything a run produces but the times.
struct Outcome {
  std::vector<int64_t> ids;
  double nll_sum = 0;
  int64_t tokens = 0;
  std::vector<ContextStats> stats;             // generation, evaluation
  std::vector<RetrievalRecord> retrievals;     // both loops', in order
};

bool same_counts(const ContextStats& a, const ContextStats& b) {
  return a.retrievals == b.retrievals && a.tokens_reencoded == b.tokens_reencoded &&
         a.tokens_decoded == b.tokens_decoded && a.window_slides == b.window_slides && a.forwards == b.forwards &&
         a.reencoded_per_place == b.reencoded_per_place;
}

bool same_retrievals(const std::vector<RetrievalRecord>& a, const std::vector<RetrievalRecord>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].position != b[i].position || a[i].query != b[i].query || a[i].passages.size() != b[i].passages.size())
      return false;
    for (size_t j = 0; j < a[i].passages.size(); ++j)
      if (a[i].passages[j].id != b[i].passages[j].id || a[i].passages[j].score != b[i].passages[j].score) return false;
  }
  return true;
}

std::vector<Job> jobs(const Tokenizer& tok) {
  const std::vector<std::string> prompts = {
      "Once upon a time, a little dog", "Lily and Tom went to the park", "The big red ball rolled",
      "One day, a small bird",          "Sue had a box of toys",         "The cat sat in the sun and",
      "Ben wanted to climb the tree",   "Mom baked a cake for"};
  const std::vector<std::string> texts = paragraphs(408);  // the last eight: scored, not in the index
  auto ids = [&](const std::string& s) {
    auto v = tok.encode(s, /*add_bos=*/true);
    return std::vector<int64_t>(v.begin(), v.end());
  };
  std::vector<Job> out;
  for (int i = 0; i < kThreads; ++i) {
    Job j;
    j.mode = i % 2 ? ContextMode::Prepend : ContextMode::Append;
    j.doc_positions = (i / 2) % 2 ? "after" : "before";
    j.k = 1 + i / 4;
    j.prompt = ids(prompts[static_cast<size_t>(i)]);
    j.text = ids(texts[400 + static_cast<size_t>(i)]);
    if (j.text.size() > 120) j.text.resize(120);
    out.push_back(std::move(j));
  }
  return out;
}

// A fresh context, cache and document source over the shared model and
// retriever: greedy generation of 32 tokens, then the text's NLL.
Outcome run(Setup& s, Retriever& retriever, const Job& job) {
  RalmOptions ro;
  ro.stride = 8;
  ro.query_tokens = 16;
  ro.doc_tokens = 24;
  ro.k = job.k;
  ro.marks = true;
  ro.doc_positions = job.doc_positions;
  ro.max_length = 200;  // + the documents' room before the input: <= 256 positions
  KVCacheStore cache = make_context_cache(*s.model, ro);
  auto context = make_context(job.mode, *s.model, cache, s.marks, ro);
  RetrievedDocuments documents(retriever, s.tok, ro);
  documents.keep_history(true);
  GenerateOptions go;
  go.max_new_tokens = 32;
  go.stop_at_eos = false;
  Outcome o;
  GenerateResult g = generate(*context, documents, job.prompt, go);
  EvalResult e = evaluate(*context, documents, job.text);
  o.ids = g.ids;
  o.nll_sum = e.nll_sum;
  o.tokens = e.tokens;
  o.stats = {g.stats, e.stats};
  o.retrievals = documents.history();
  return o;
}

std::string mode_name(const Job& j) {
  return std::string(j.mode == ContextMode::Append ? "append" : "prepend") + " doc positions " + j.doc_positions +
         " k=" + std::to_string(j.k);
}

}  // namespace

TEST_CASE("$FLASHBACK_THREADS sets LibTorch's intra-op threads whatever LibTorch starts with", "[threads]") {
  // catch_main.cpp sets it to 1 unless given. LibTorch 1.x starts with 1 thread, 2.x with every core: under 2.x
  // the eight threads below ran two spinning OpenMP threads each on 2 cores (69.5 s in ctest -j2, 4.4 s
  // under 1.x; here, beside one busy core, 8.6 s with 2 threads against 2.0 s with 1).
  const char* v = std::getenv("FLASHBACK_THREADS");
  REQUIRE(v != nullptr);
  Checkpoint ck = read_checkpoint(shared(kModel));
  LlamaForCausalLM model = load_model(ck);  // applies it, once per process
  CHECK(at::get_num_threads() == std::atoi(v));
}

TEST_CASE("eight threads of RALM contexts on one model and one BM25 retriever equal the same runs in sequence",
          "[context][retrieval][threads]") {
  INFO("LibTorch intra-op threads: " << at::get_num_threads());
  Setup s = adapted_stories();
  BM25Retriever retriever(stories_index().dir);
  const std::vector<Job> js = jobs(s.tok);
  for (const bool merged : {false, true}) {
    // Merging writes the weights: between runs, never during one (lora.hpp).
    if (merged) merge_adapter(*s.model);
    std::vector<Outcome> sequential, concurrent(kThreads);
    for (const Job& j : js) sequential.push_back(run(s, retriever, j));
    run_together(kThreads, [&](int i) {
      concurrent[static_cast<size_t>(i)] = run(s, retriever, js[static_cast<size_t>(i)]);
    });
    for (int i = 0; i < kThreads; ++i) {
      const Outcome &a = sequential[static_cast<size_t>(i)], &b = concurrent[static_cast<size_t>(i)];
      INFO((merged ? "merged" : "unmerged") << " LoRA, thread " << i << ": " << mode_name(js[static_cast<size_t>(i)])
                                            << ", NLL sums " << std::setprecision(17) << a.nll_sum << " / " << b.nll_sum);
      CHECK(a.ids.size() == 32);
      CHECK(b.ids == a.ids);
      CHECK(b.tokens == a.tokens);
      CHECK(b.nll_sum == a.nll_sum);  // bit for bit: the same ops on the same data, one thread each
      CHECK(same_counts(b.stats[0], a.stats[0]));
      CHECK(same_counts(b.stats[1], a.stats[1]));
      CHECK(same_retrievals(b.retrievals, a.retrievals));
      // The shared retriever was really asked at every retrieval (each of the 4 generation strides,
      // each evaluation block but the first: after BOS alone there is no query), and answered
      // most of them with k passages (a generated stride may hold no indexed word).
      CHECK(static_cast<int64_t>(a.retrievals.size()) == 4 + (a.tokens + 7) / 8 - 1);
      int64_t answered = 0;
      for (const RetrievalRecord& r : a.retrievals)
        if (!r.passages.empty()) {
          ++answered;
          CHECK(static_cast<int64_t>(r.passages.size()) == js[static_cast<size_t>(i)].k);
        }
      CHECK(answered == a.stats[0].retrievals + a.stats[1].retrievals);
      CHECK(answered * 4 >= static_cast<int64_t>(a.retrievals.size()) * 3);
    }
  }
}

TEST_CASE("one BM25 and one dense retriever answer concurrent queries as they answer them in sequence",
          "[retrieval][threads]") {
  const StoriesIndex& idx = stories_index();
  BM25Retriever bm25(idx.dir);
  Checkpoint ck = read_checkpoint(shared(kModel));
  auto encoder = std::make_shared<ModelEncoder>(load_model(ck), load_tokenizer(ck), shared(kModel), 64);
  const std::string dense_dir = flashback::test::temp_dir("threads-dense") + "/index";
  IndexInfo info;
  info.max_tokens = 64;
  build_dense_index(std::vector<Passage>(idx.passages.begin(), idx.passages.begin() + 120), *encoder, info, dense_dir);
  DenseRetriever dense(dense_dir, encoder);

  // Each thread asks its own 12 queries: windows of the passages' text.
  std::vector<std::vector<std::string>> queries(kThreads);
  for (size_t q = 0; q < kThreads * 12; ++q) {
    const std::string& t = idx.passages[(q * 37) % idx.passages.size()].text;
    queries[q % kThreads].push_back(t.substr(t.size() / 4, 80));
  }
  for (Retriever* r : std::vector<Retriever*>{&bm25, &dense}) {
    const char* name = r == &bm25 ? "bm25" : "dense";
    using Answers = std::vector<std::vector<Passage>>;
    std::vector<Answers> sequential(kThreads), concurrent(kThreads);
    for (int i = 0; i < kThreads; ++i)
      for (const std::string& q : queries[static_cast<size_t>(i)])
        sequential[static_cast<size_t>(i)].push_back(r->retrieve(q, 3));
    std::vector<int64_t> sizes(kThreads);
    run_together(kThreads, [&](int i) {
      for (const std::string& q : queries[static_cast<size_t>(i)]) {
        concurrent[static_cast<size_t>(i)].push_back(r->retrieve(q, 3));
        sizes[static_cast<size_t>(i)] = r->size();
      }
    });
    for (int i = 0; i < kThreads; ++i) {
      INFO(name << " thread " << i);
      CHECK(sizes[static_cast<size_t>(i)] == r->size());
      const Answers &a = sequential[static_cast<size_t>(i)], &b = concurrent[static_cast<size_t>(i)];
      REQUIRE(b.size() == a.size());
      for (size_t q = 0; q < a.size(); ++q) {
        CHECK(a[q].size() == 3);
        REQUIRE(b[q].size() == a[q].size());
        for (size_t j = 0; j < a[q].size(); ++j) {
          CHECK(b[q][j].id == a[q][j].id);
          CHECK(b[q][j].score == a[q][j].score);
          CHECK(b[q][j].text == a[q][j].text);
        }
      }
    }
  }
}
