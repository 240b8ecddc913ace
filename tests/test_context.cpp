// FlashBack's contexts and RALM loops: the cache-reusing fast path must give
// exactly what recomputing the same layout from scratch gives, and re-encode
// exactly the tokens the paper's accounting says.
#include <c10/core/InferenceMode.h>

#include <functional>

#include "flashback/flashback.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::greedy;
using flashback::test::max_abs_diff;
using flashback::test::shared;

namespace {

// A deterministic stand-in for BM25: picks passages from a pool by hashing the query.
class PoolRetriever : public Retriever {
 public:
  explicit PoolRetriever(std::vector<std::string> pool) : pool_(std::move(pool)) {}
  std::vector<Passage> retrieve(const std::string& query, int64_t k) override {
    ++calls;
    std::vector<Passage> out;
    size_t h = std::hash<std::string>()(query);
    for (int64_t i = 0; i < k; ++i) {
      Passage p;
      p.id = static_cast<int64_t>((h + 7 * i) % pool_.size());
      p.title = i % 2 ? "Pool" : "";
      p.text = pool_[p.id];
      if (!filter_.forbids(p.title)) out.push_back(p);
    }
    return out;
  }
  int64_t size() const override { return static_cast<int64_t>(pool_.size()); }
  int calls = 0;

 private:
  std::vector<std::string> pool_;
};

const std::vector<std::string> kPool = {
    "The little dog ran to the park and played with a red ball all day long.",
    "Lily had a big box of crayons. She drew a sun, a tree and a happy cat on the wall.",
    "Once there was a tiny bird who wanted to fly over the tall mountain to see the sea.",
    "Tom and his mom baked a cake. It was sweet and soft, and they shared it with their friends.",
    "The old owl lived in a hollow tree. Every night he told stories to the young animals of the forest, "
    "and every morning they came back to hear more about the stars and the moon.",
};

// A model + tokenizer with the marking tokens (mean-initialised rows).
struct Setup {
  LlamaForCausalLM model{nullptr};
  Tokenizer tok;
  MarkingToken marks;
};

Setup stories(bool with_marks) {
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  Setup s;
  s.tok = load_tokenizer(ck);
  if (with_marks) s.marks = add_marking_tokens(ck, s.tok);
  s.model = load_model(ck);
  return s;
}

// A random GQA model over tok512's vocabulary.
Setup random_gqa(uint64_t seed, bool with_marks) {
  LlamaConfig c = flashback::test::tiny_config(48, 2, 6, 2, 512, 256);
  LlamaForCausalLM m(c);
  m->init_random(seed);
  Checkpoint ck;
  ck.path = "random";
  ck.config = c;
  ck.tensors = model_tensors(*m);
  Setup s;
  s.tok = Tokenizer::from_file(shared("models/stories260K/tok512.model"));
  if (with_marks) s.marks = add_marking_tokens(ck, s.tok);
  s.model = load_model(ck);
  return s;
}

std::vector<int64_t> encode(const Tokenizer& tok, const std::string& text) {
  auto ids = tok.encode(text, /*add_bos=*/true);
  return {ids.begin(), ids.end()};
}

// The documents `r` retrieves, or none without a retriever.
std::unique_ptr<DocumentSource> source(Setup& s, Retriever* r, const RalmOptions& ro) {
  if (!r) return std::make_unique<NoDocuments>();
  return std::make_unique<RetrievedDocuments>(*r, s.tok, ro);
}

template <template <class> class Ctx>
GenerateResult run_generate(Setup& s, RalmOptions ro, Retriever* r, const std::vector<int64_t>& prompt, int64_t n,
                            std::vector<int64_t>* layout = nullptr) {
  if (ro.max_length == 0) ro.max_length = 200;  // + the documents' room before the input: <= 256 positions
  KVCacheStore cache = make_context_cache(*s.model, ro);
  Ctx<LlamaForCausalLMImpl> ctx(*s.model, cache, s.marks, ro);
  GenerateResult out = generate(ctx, *source(s, r, ro), prompt, greedy(n));
  if (layout) *layout = ctx.layout();
  return out;
}

template <template <class> class Ctx>
EvalResult run_eval(Setup& s, RalmOptions ro, Retriever* r, const std::vector<int64_t>& ids) {
  if (ro.max_length == 0) ro.max_length = 200;  // + the documents' room before the input: <= 256 positions
  KVCacheStore cache = make_context_cache(*s.model, ro);
  Ctx<LlamaForCausalLMImpl> ctx(*s.model, cache, s.marks, ro);
  return evaluate(ctx, *source(s, r, ro), ids);
}

const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high. Lily's mom said, \"Lily, let's "
    "go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but "
    "I can't find it.\" Her mom smiled and helped her look under the bench, behind the tree and in the sand.";

}  // namespace

TEST_CASE("MarkingToken: rows appended with the mean, ids last, stripped from logits", "[marks]") {
  Checkpoint ck = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  Tokenizer tok = load_tokenizer(ck);
  at::Tensor emb = ck.tensors.at("model.embed_tokens.weight").clone();
  MarkingToken m = add_marking_tokens(ck, tok);
  CHECK(m.left() == 512);
  CHECK(m.right() == 513);
  CHECK(ck.config.vocab_size == 514);
  CHECK(tok.vocab_size() == 514);
  CHECK(tok.piece_to_id("<MARK_L>") == 512);
  CHECK(tok.piece_to_id("<MARK_R>") == 513);
  CHECK(tok.encode("<MARK_L>") != std::vector<int32_t>{512});  // text never encodes to a mark
  at::Tensor grown = ck.tensors.at("model.embed_tokens.weight");
  CHECK(at::equal(grown.narrow(0, 0, 512), emb));
  CHECK(max_abs_diff(grown[512], emb.mean(0)) < 1e-6);
  CHECK(at::equal(grown[512], grown[513]));
  CHECK(m.strip(at::zeros({3, 514})).size(1) == 512);
  CHECK(m.wrap({{5, 6}, {7}}) == std::vector<int64_t>{512, 5, 6, 7, 513});
  CHECK(m.wrap({{}, {}}).empty());
  // Adding again finds them instead of growing twice.
  MarkingToken again = add_marking_tokens(ck, tok);
  CHECK(again.left() == 512);
  CHECK(ck.config.vocab_size == 514);

  // A FlashBack checkpoint (vocabulary = tokenizer + 2) keeps its trained rows.
  Checkpoint hf = read_checkpoint(shared("models/hf-fixtures/tiny-llama-gqa-marks"));
  Tokenizer t512 = Tokenizer::from_file(shared("models/stories260K/tok512.model"));
  at::Tensor rows = hf.tensors.at("model.embed_tokens.weight").narrow(0, 512, 2).clone();
  MarkingToken hm = add_marking_tokens(hf, t512);
  CHECK(hm.left() == 512);
  CHECK(hf.config.vocab_size == 514);
  CHECK(at::equal(hf.tensors.at("model.embed_tokens.weight").narrow(0, 512, 2), rows));

  // Any other mismatch is refused.
  Checkpoint other = read_checkpoint(shared("models/stories260K/stories260K.bin"));
  Tokenizer llama = Tokenizer::from_file(shared("models/llama2-tokenizer/tokenizer.model"));
  CHECK_THROWS_WITH(add_marking_tokens(other, llama), Catch::Contains("cannot place marking tokens"));
}

TEST_CASE("generation with marks never emits them", "[marks]") {
  Setup s = stories(true);
  c10::InferenceMode guard;
  // Make the marks irresistible after the prompt: their head rows point along
  // the final hidden state there.
  const std::vector<int64_t> prompt = {1, 403};
  at::Tensor h = s.model->hidden_states(at::tensor(prompt, at::kLong).view({1, -1}), {}, nullptr)[0][1];  // [C]
  s.model->output_weight().narrow(0, 512, 2).copy_((1000.0 * h / h.norm()).unsqueeze(0).expand({2, -1}));
  GenerateOptions go = greedy(20);
  KVCacheStore c1 = s.model->make_cache(1, 64);
  CHECK(generate(*s.model, c1, prompt, go).ids[0] >= 512);  // unmasked, a mark wins
  go.sampling.temperature = 1.0;
  KVCacheStore c2 = s.model->make_cache(1, 64);
  for (int64_t id : generate(*s.model, c2, prompt, go, {}, s.marks).ids) CHECK(id < 512);
}

TEST_CASE("RALM generation and evaluation: KV reuse equals recomputing the layout", "[context][exact]") {
  PoolRetriever pool(kPool);
  for (const bool random : {false, true}) {
    for (const bool marks : {true, false}) {
      Setup s = random ? random_gqa(21, marks) : stories(marks);
      const auto prompt = encode(s.tok, "Once upon a time, Lily went to the park.");
      const auto text = encode(s.tok, kStory);
      for (const int64_t k : {1, 2})
      for (const char* positions : {"before", "after"}) {
        DYNAMIC_SECTION((random ? "random GQA" : "stories260K") << (marks ? " marks" : " no marks") << " k=" << k
                                                                << " doc positions " << positions) {
          RalmOptions fast;
          fast.doc_positions = positions;
          fast.stride = 8;
          fast.query_tokens = 16;
          fast.doc_tokens = 24;
          fast.k = k;
          fast.marks = marks;
          RalmOptions ref = fast;
          ref.kv_reuse = false;

          auto a1 = run_generate<AppendingContext>(s, fast, &pool, prompt, 40);
          auto a2 = run_generate<AppendingContext>(s, ref, &pool, prompt, 40);
          CHECK(a1.ids == a2.ids);
          CHECK(a1.stats.retrievals == 5);
          auto p1 = run_generate<PrependingContext>(s, fast, &pool, prompt, 40);
          auto p2 = run_generate<PrependingContext>(s, ref, &pool, prompt, 40);
          CHECK(p1.ids == p2.ids);

          auto e1 = run_eval<AppendingContext>(s, fast, &pool, text);
          auto e2 = run_eval<AppendingContext>(s, ref, &pool, text);
          CHECK(e1.tokens == static_cast<int64_t>(text.size()) - 1);
          CHECK(std::abs(e1.nll() - e2.nll()) < 1e-5);
          auto f1 = run_eval<PrependingContext>(s, fast, &pool, text);
          auto f2 = run_eval<PrependingContext>(s, ref, &pool, text);
          CHECK(std::abs(f1.nll() - f2.nll()) < 1e-5);
          // The documents matter: both modes score otherwise than without them.
          auto n1 = run_eval<NoRetrievalContext>(s, fast, nullptr, text);
          CHECK(std::abs(e1.nll() - n1.nll()) > 1e-4);
          CHECK(std::abs(f1.nll() - n1.nll()) > 1e-4);
        }
      }
    }
  }
  SECTION("no retrieval") {
    Setup s = stories(false);
    RalmOptions fast, ref;
    ref.kv_reuse = false;  // marks stay on: mode none never places them
    auto text = encode(s.tok, kStory);
    auto n1 = run_eval<NoRetrievalContext>(s, fast, nullptr, text);
    auto n2 = run_eval<NoRetrievalContext>(s, ref, nullptr, text);
    CHECK(std::abs(n1.nll() - n2.nll()) < 1e-5);
    // Without documents, block-wise scoring is plain causal scoring.
    at::Tensor ids = at::tensor(text, at::kLong).view({1, -1});
    at::Tensor logp = at::log_softmax(s.model->forward(ids).squeeze(0).to(at::kDouble), -1);
    double nll = -logp.narrow(0, 0, ids.size(1) - 1).gather(1, ids.squeeze(0).narrow(0, 1, ids.size(1) - 1).unsqueeze(1)).mean().item<double>();
    CHECK(std::abs(n1.nll() - nll) < 1e-5);
  }
}

TEST_CASE("kv_dtype bf16 on an fp32 model: half the cache, KV reuse near recomputing, scores near the fp32 cache's",
          "[context][exact]") {
  PoolRetriever pool(kPool);
  Setup s = random_gqa(21, true);
  const auto prompt = encode(s.tok, "Once upon a time, Lily went to the park.");
  const auto text = encode(s.tok, kStory);
  RalmOptions wide;
  wide.stride = 8;
  wide.query_tokens = 16;
  wide.doc_tokens = 24;
  wide.max_length = 200;
  RalmOptions fast = wide;
  fast.kv_dtype = "bf16";
  RalmOptions ref = fast;
  ref.kv_reuse = false;
  KVCacheStore narrow_cache = make_context_cache(*s.model, fast), wide_cache = make_context_cache(*s.model, wide);
  CHECK(narrow_cache.dtype() == at::kBFloat16);
  CHECK(wide_cache.dtype() == at::kFloat);
  CHECK(2 * narrow_cache.bytes_allocated() == wide_cache.bytes_allocated());
  // Reuse and recomputing store nearly the same values: a key computed in another chunk differs in its last fp32
  // bits and may round to the other bf16 neighbour, so the two agree to bf16's rounding, not to fp32's.
  auto a1 = run_generate<AppendingContext>(s, fast, &pool, prompt, 40);
  auto a2 = run_generate<AppendingContext>(s, ref, &pool, prompt, 40);
  CHECK(a1.ids == a2.ids);
  auto p1 = run_generate<PrependingContext>(s, fast, &pool, prompt, 40);
  auto p2 = run_generate<PrependingContext>(s, ref, &pool, prompt, 40);
  CHECK(p1.ids == p2.ids);
  for (ContextMode mode : {ContextMode::Append, ContextMode::Prepend}) {
    INFO(context_mode_name(mode));
    auto eval = [&](const RalmOptions& ro) {
      return mode == ContextMode::Append ? run_eval<AppendingContext>(s, ro, &pool, text)
                                         : run_eval<PrependingContext>(s, ro, &pool, text);
    };
    const double reused = eval(fast).nll(), recomputed = eval(ref).nll(), fp32 = eval(wide).nll();
    CHECK(std::abs(reused - recomputed) < 1e-3 * fp32);
    // bf16 keys and values (8 bits of mantissa) move the mean NLL a little, and do move it: the cache is bf16.
    CHECK(std::abs(reused - fp32) < 1e-2 * fp32);
    CHECK(reused != fp32);
  }
  RalmOptions bad = wide;
  bad.kv_dtype = "int8";
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("kv_dtype: unknown dtype 'int8'"));
}

TEST_CASE("doc positions before: the token after a block is predicted as without documents", "[context][positions]") {
  // The block sits below the input in position and the prediction after place()
  // comes from the input's last slot: RoPE sees only relative positions, so it
  // equals the plain model's over the same text (the input shifted by the offset).
  PoolRetriever pool(kPool);
  Setup s = stories(true);
  const auto text = encode(s.tok, kStory);
  RalmOptions ro;
  ro.stride = 8;
  ro.doc_tokens = 24;
  ro.max_length = 300;
  KVCacheStore cache = make_context_cache(*s.model, ro);
  AppendingContext<LlamaForCausalLMImpl> ctx(*s.model, cache, s.marks, ro);
  RetrievedDocuments src(pool, s.tok, ro);
  c10::InferenceMode guard;
  const std::vector<int64_t> input(text.begin(), text.begin() + 20);
  ctx.reset(input);
  at::Tensor first = ctx.place(src.documents(ctx.text()));  // [V]
  REQUIRE(ctx.stats().retrievals == 1);
  at::Tensor plain = s.model->forward(at::tensor(input, at::kLong).view({1, -1}))[0][19];  // [V]
  CHECK(max_abs_diff(first, plain) < 1e-4);
  // After the block, the documents do matter.
  at::Tensor next = ctx.append({text[20]}).select(0, 0);  // [V]
  std::vector<int64_t> longer(text.begin(), text.begin() + 21);
  at::Tensor plain_next = s.model->forward(at::tensor(longer, at::kLong).view({1, -1}))[0][20];  // [V]
  CHECK(max_abs_diff(next, plain_next) > 1e-3);
  // The paper's positions predict that token from <MARK_R>: another distribution.
  ro.doc_positions = "after";
  AppendingContext<LlamaForCausalLMImpl> paper(*s.model, cache, s.marks, ro);
  paper.reset(input);
  CHECK(max_abs_diff(paper.place(src.documents(paper.text())), plain) > 1e-3);
}

TEST_CASE("after many retrievals the cache holds exactly the layout", "[context][exact]") {
  PoolRetriever pool(kPool);
  Setup s = random_gqa(5, true);
  RalmOptions ro;
  ro.stride = 4;
  ro.doc_tokens = 20;
  ro.max_length = 128;  // small enough to force window slides too
  KVCacheStore cache = s.model->make_cache(1, 256);
  AppendingContext<LlamaForCausalLMImpl> ctx(*s.model, cache, s.marks, ro);
  RetrievedDocuments src(pool, s.tok, ro);
  c10::InferenceMode guard;
  GenerateResult r = generate(ctx, src, encode(s.tok, kStory), greedy(150));
  CHECK(r.stats.retrievals >= 30);
  CHECK(r.stats.window_slides >= 1);
  const auto& layout = ctx.layout();
  REQUIRE(cache.size() == static_cast<int64_t>(layout.size()));
  CHECK(cache.size() <= 128);
  // One more token through the cache vs a fresh forward of layout + token.
  std::vector<int64_t> full = layout, positions = ctx.positions();
  REQUIRE(positions.size() == layout.size());
  full.push_back(7);
  positions.push_back(positions.back() + 1);  // the last slot is a recent token: the next follows it
  at::Tensor pos = at::tensor(positions, at::kLong);
  at::Tensor fresh = s.model->forward(at::tensor(full, at::kLong).view({1, -1}), pos);          // [1, n + 1, V]
  at::Tensor cached = s.model->forward(at::full({1, 1}, 7, at::kLong), pos.narrow(0, full.size() - 1, 1), cache);  // [1, 1, V]
  CHECK(max_abs_diff(cached[0][0], fresh[0][full.size() - 1]) < 1e-4);
  // And every cached key equals a fresh cache's.
  KVCacheStore again = s.model->make_cache(1, 256);
  s.model->forward(at::tensor(full, at::kLong).view({1, -1}), pos, again);
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    CHECK(max_abs_diff(cache.keys(l), again.keys(l)) < 1e-4);
    CHECK(max_abs_diff(cache.values(l), again.values(l)) < 1e-4);
  }
}

// The generation loop holds the last token before a retrieval instead of
// appending it: the retrieval must see it and encode it exactly as if it had
// been appended (and truncated away again).
template <template <class> class Ctx>
void check_hold_equals_append(Setup& s) {
  RalmOptions ro;
  ro.stride = 8;
  ro.doc_tokens = 12;
  ro.max_length = 200;
  KVCacheStore ca = make_context_cache(*s.model, ro), cb = make_context_cache(*s.model, ro);
  Ctx<LlamaForCausalLMImpl> a(*s.model, ca, s.marks, ro), b(*s.model, cb, s.marks, ro);
  const std::vector<int64_t> prompt = encode(s.tok, "Once upon a time, Lily went to the park.");
  const std::vector<std::vector<int64_t>> doc1 = {{30, 31, 32, 33, 34, 35}}, doc2 = {{40, 41, 42, 43, 44}};
  c10::InferenceMode guard;
  a.reset(prompt);
  b.reset(prompt);
  CHECK_THROWS_AS(b.hold({9}), InvalidArgument);  // nothing is encoded yet
  a.place(doc1);
  b.place(doc1);
  a.append({9});
  b.append({9});
  a.append({10});
  b.hold({10});
  CHECK(a.text() == b.text());
  CHECK_THROWS_AS(b.append({11}), InvalidArgument);  // only place() may follow a hold
  const at::Tensor la = a.place(doc2), lb = b.place(doc2);
  CHECK(a.layout() == b.layout());
  CHECK(a.positions() == b.positions());
  CHECK(ca.size() == cb.size());
  CHECK(at::equal(la, lb));
  CHECK(a.stats().reencoded_per_place == b.stats().reencoded_per_place);
  CHECK(a.stats().tokens_decoded == 2);
  CHECK(b.stats().tokens_decoded == 1);
  // Both caches go on alike.
  CHECK(at::equal(a.append({12}), b.append({12})));
}

TEST_CASE("hold: a token held before a retrieval is encoded by place() exactly as if appended", "[context][exact]") {
  Setup s = stories(true);
  SECTION("append") { check_hold_equals_append<AppendingContext>(s); }
  SECTION("prepend") { check_hold_equals_append<PrependingContext>(s); }
}

TEST_CASE("accounting: what each retrieval re-encodes", "[context][accounting]") {
  PoolRetriever pool(kPool);
  Setup s = stories(true);
  RalmOptions ro;
  ro.stride = 16;
  ro.doc_tokens = 20;  // every pool passage is longer: each doc is exactly 20 tokens
  const auto prompt = encode(s.tok, "Once upon a time, Lily went to the park with her mom and dad.");
  const int64_t P = static_cast<int64_t>(prompt.size()), s_ = ro.stride, doc = 20;
  for (const bool marks : {true, false}) {
    ro.marks = marks;
    const int64_t m = marks ? 2 : 0;
    auto a = run_generate<AppendingContext>(s, ro, &pool, prompt, 64);
    REQUIRE(a.stats.reencoded_per_place.size() == 4);
    CHECK(a.stats.reencoded_per_place[0] == P + doc + m);  // the first place() encodes the prompt too
    for (size_t i = 1; i < 4; ++i) CHECK(a.stats.reencoded_per_place[i] == s_ + doc + m);
    // 63 tokens follow the first, less the 3 held for a retrieval (place() encodes them): 60 decode steps.
    CHECK(a.stats.tokens_decoded == 60);
    CHECK(a.stats.retrievals == 4);

    auto p = run_generate<PrependingContext>(s, ro, &pool, prompt, 64);
    REQUIRE(p.stats.reencoded_per_place.size() == 4);
    for (size_t i = 0; i < 4; ++i) CHECK(p.stats.reencoded_per_place[i] == doc + m + P + int64_t(i) * s_);
    CHECK(p.stats.tokens_decoded == 60);
  }
  auto n = run_generate<NoRetrievalContext>(s, ro, nullptr, prompt, 64);
  CHECK(n.stats.retrievals == 0);
  CHECK(n.stats.tokens_reencoded == P);
  CHECK(n.stats.tokens_decoded == 63);
}

TEST_CASE("the window slides instead of overflowing, and stays exact", "[context][window]") {
  PoolRetriever pool(kPool);
  Setup s = stories(true);
  const auto text = encode(s.tok, std::string(kStory) + " " + kStory + " " + kStory);
  RalmOptions ro;
  ro.stride = 8;
  ro.doc_tokens = 30;
  for (const double keep : {1.0, 0.5}) {
    RalmOptions fast = ro;
    fast.max_length = 96;
    fast.window_keep = keep;
    RalmOptions ref = fast;
    ref.kv_reuse = false;
    auto e1 = run_eval<AppendingContext>(s, fast, &pool, text);
    auto e2 = run_eval<AppendingContext>(s, ref, &pool, text);
    CHECK(e1.stats.window_slides > 0);
    CHECK(std::abs(e1.nll() - e2.nll()) < 1e-5);
    auto p1 = run_eval<PrependingContext>(s, fast, &pool, text);
    auto p2 = run_eval<PrependingContext>(s, ref, &pool, text);
    CHECK(std::abs(p1.nll() - p2.nll()) < 1e-5);
    // keep = 1.0 slides at (almost) every block; 0.5 much less often.
    if (keep == 1.0) CHECK(e1.stats.window_slides > 10);
  }
  // Long generation without retrieval slides too.
  RalmOptions none;
  none.max_length = 40;
  none.stride = 16;
  auto n = run_generate<NoRetrievalContext>(s, none, nullptr, encode(s.tok, "Once upon a time"), 120);
  CHECK(n.ids.size() == 120);
  CHECK(n.stats.window_slides > 0);
}

TEST_CASE("RALM bad input", "[context][bad]") {
  PoolRetriever pool(kPool);
  Setup s = stories(true);
  Setup plain = stories(false);
  KVCacheStore cache = s.model->make_cache(1, 64);
  RalmOptions ro;
  ro.max_length = 600;
  CHECK_THROWS_WITH(AppendingContext<LlamaForCausalLMImpl>(*s.model, cache, s.marks, ro), Catch::Contains("exceeds"));
  ro.max_length = 0;  // the default, 512, exceeds this cache of 64 as well
  CHECK_THROWS_WITH(AppendingContext<LlamaForCausalLMImpl>(*s.model, cache, s.marks, ro), Catch::Contains("exceeds"));
  ro.max_length = 64;
  ro.stride = 64;
  CHECK_THROWS_WITH(AppendingContext<LlamaForCausalLMImpl>(*s.model, cache, s.marks, ro), Catch::Contains("stride"));
  ro.stride = 8;
  KVCacheStore pc = plain.model->make_cache(1, 64);
  CHECK_THROWS_WITH(AppendingContext<LlamaForCausalLMImpl>(*plain.model, pc, plain.marks, ro),
                    Catch::Contains("no marking tokens"));
  // Mode none never needs them.
  CHECK_NOTHROW(NoRetrievalContext<LlamaForCausalLMImpl>(*plain.model, pc, plain.marks, ro));
  RalmOptions zero;
  zero.stride = 0;
  CHECK_THROWS_AS(RetrievedDocuments(pool, s.tok, zero), InvalidArgument);
  ro.doc_tokens = 60;  // 60 + 2 marks + stride 8 > 64 positions
  AppendingContext<LlamaForCausalLMImpl> ctx(*s.model, cache, s.marks, ro);
  RetrievedDocuments src(pool, s.tok, ro);
  CHECK_THROWS_WITH(generate(ctx, src, {1, 403}, greedy(10)), Catch::Contains("leave no room for the input"));
  // A retriever that finds nothing: generation goes on without a document.
  PoolRetriever empty(kPool);
  TitleFilter all;
  all.add("");
  all.add("Pool");
  empty.set_title_filter(all);
  ro.doc_tokens = 16;
  RetrievedDocuments none_found(empty, s.tok, ro);
  AppendingContext<LlamaForCausalLMImpl> ctx2(*s.model, cache, s.marks, ro);
  GenerateResult r = generate(ctx2, none_found, {1, 403}, greedy(20));
  CHECK(r.ids.size() == 20);
  CHECK(r.stats.retrievals == 0);
  CHECK(empty.calls == 3);
  CHECK(ctx2.layout().size() == 2 + 19);  // no mark block at all
}
