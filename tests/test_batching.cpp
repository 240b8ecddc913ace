// Batched streams: a forward over several sequences must give each one the
// same bits as its own forward (the CPU kernels compute a row the same
// whatever shares the call), and streams generating through shared forwards
// must produce exactly their solo runs.
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "flashback/flashback.hpp"
#include "flashback/kernels.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::greedy;
using flashback::test::max_abs_diff;
using flashback::test::tiny_config;

namespace {

LlamaForCausalLM random_model(at::ScalarType dtype, Kernels kernels, int64_t prefill_chunk, uint64_t seed = 5) {
  LlamaForCausalLMOptions o;
  o.dtype = dtype;
  o.kernels = kernels;
  o.prefill_chunk = prefill_chunk;
  LlamaForCausalLM m(tiny_config(48, 2, 6, 2, 97, 256), o);
  m->init_random(seed);
  return m;
}

at::Tensor ids(int64_t n, int64_t seed) { return at::randint(0, 97, {n}, at::make_generator<at::CPUGeneratorImpl>(seed), at::kLong); }

bool same_cache(const KVCacheStore& a, const KVCacheStore& b) {
  if (a.size() != b.size()) return false;
  for (int64_t l = 0; l < a.num_layers(); ++l)
    if (!at::equal(a.keys(l), b.keys(l)) || !at::equal(a.values(l), b.values(l))) return false;
  return true;
}

}  // namespace

TEST_CASE("a forward over several sequences gives each the bits of its own forward", "[batching][exact]") {
  c10::InferenceMode guard;
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    DYNAMIC_SECTION("dtype " << dtype) {
      // A prefill chunk of 16: the 40-token sequence runs in three rounds.
      LlamaForCausalLM m = random_model(dtype, Kernels::Auto, 16);
      // Decode rows, a short re-encode, a long one, a kernel-sized one; caches already holding 0..30 slots.
      const std::vector<int64_t> lengths = {1, 3, 40, 1, kernels::kMaxKernelRows, kernels::kMaxKernelRows + 1, 1};
      const std::vector<int64_t> held = {5, 0, 30, 1, 12, 7, 20};
      std::vector<KVCacheStore> caches, solo_caches;
      std::vector<LlamaForCausalLMImpl::Sequence> seqs;
      for (size_t i = 0; i < lengths.size(); ++i) {
        caches.push_back(m->make_cache(1, 128));
        if (held[i] > 0) (void)m->hidden_states(ids(held[i], 100 + i).view({1, -1}), {}, &caches.back());
        solo_caches.push_back(caches.back().clone());
      }
      for (size_t i = 0; i < lengths.size(); ++i) {
        LlamaForCausalLMImpl::Sequence s;
        s.tokens = ids(lengths[i], i);
        // Explicit positions for one sequence (a block below the input, as DocPositions::Before places it).
        if (i == 1) s.positions = at::arange(2, 2 + lengths[i], at::kLong);
        s.cache = &caches[i];
        seqs.push_back(s);
      }
      const std::vector<at::Tensor> got = m->hidden_states(seqs);
      REQUIRE(got.size() == lengths.size());
      std::vector<at::Tensor> solo_hidden;
      for (size_t i = 0; i < lengths.size(); ++i) {
        INFO("sequence " << i << " of " << lengths[i] << " rows");
        at::Tensor want = m->hidden_states(seqs[i].tokens.view({1, -1}), seqs[i].positions, &solo_caches[i]);
        CHECK(got[i].sizes() == want.sizes());
        CHECK(at::equal(got[i], want));
        CHECK(same_cache(caches[i], solo_caches[i]));
        solo_hidden.push_back(want.select(1, want.size(1) - 1));  // [1, C]
      }
      // The head over several hidden states: each as alone, including a many-row one.
      solo_hidden.push_back(got[2]);  // [1, 40, C]
      const std::vector<at::Tensor> logits = m->logits(solo_hidden);
      for (size_t i = 0; i < solo_hidden.size(); ++i) CHECK(at::equal(logits[i], m->logits(solo_hidden[i])));
      CHECK(logits.back().sizes() == std::vector<int64_t>{1, 40, 97});
    }
  }
  SECTION("LibTorch's ops: equal up to rounding") {
    LlamaForCausalLM m = random_model(at::kFloat, Kernels::LibTorch, 16);
    KVCacheStore a = m->make_cache(1, 64), b = m->make_cache(1, 64), a1 = m->make_cache(1, 64), b1 = m->make_cache(1, 64);
    const std::vector<at::Tensor> got = m->hidden_states({{ids(1, 1), {}, &a}, {ids(20, 2), {}, &b}});
    CHECK(max_abs_diff(got[0], m->hidden_states(ids(1, 1).view({1, -1}), {}, &a1)) < 1e-5);
    CHECK(max_abs_diff(got[1], m->hidden_states(ids(20, 2).view({1, -1}), {}, &b1)) < 1e-5);
  }
  SECTION("bad input: one clear error, no cache written") {
    LlamaForCausalLM m = random_model(at::kFloat, Kernels::Auto, 16);
    KVCacheStore a = m->make_cache(1, 64), b = m->make_cache(1, 64);
    CHECK_THROWS_WITH(m->hidden_states({{ids(2, 1), {}, &a}, {ids(2, 2), {}, &a}}),
                      Catch::Contains("share one KV cache"));
    CHECK_THROWS_WITH(m->hidden_states({{ids(2, 1), {}, &a}, {at::full({3}, 97, at::kLong), {}, &b}}),
                      Catch::Contains("outside the vocabulary"));
    CHECK_THROWS_WITH(m->hidden_states({{ids(2, 1), {}, &a}, {ids(2, 2), {}, nullptr}}), Catch::Contains("own KV cache"));
    CHECK(a.size() == 0);
    CHECK(b.size() == 0);
  }
}

TEST_CASE("batched streams generate exactly their solo runs", "[batching][exact]") {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    DYNAMIC_SECTION("dtype " << dtype) {
      LlamaForCausalLM m = random_model(dtype, Kernels::Auto, 512, 11);
      // Four streams: FlashBack twice (different prompts and documents), In-Context RALM, no retrieval.
      const std::vector<ContextMode> modes = {ContextMode::Append, ContextMode::Append, ContextMode::Prepend,
                                              ContextMode::None};
      RalmOptions ro;
      ro.stride = 4;
      ro.doc_tokens = 12;
      ro.marks = false;
      ro.max_length = 160;
      const int64_t n = static_cast<int64_t>(modes.size());
      std::vector<std::vector<int64_t>> prompts;
      for (int64_t i = 0; i < n; ++i) {
        at::Tensor p = ids(10 + 7 * i, 50 + i);
        prompts.emplace_back(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
      }
      // Solo runs on the model itself.
      std::vector<GenerateResult> solo;
      for (int64_t i = 0; i < n; ++i) {
        KVCacheStore cache = make_context_cache(*m, ro);
        auto ctx = make_context(modes[i], *m, cache, MarkingToken(), ro);
        RandomDocuments docs(12, 0, 97, 900 + i);
        solo.push_back(generate(*ctx, docs, prompts[i], greedy(30)));
      }
      StreamBatcher batcher(*m, n);
      std::vector<KVCacheStore> caches;
      std::vector<std::unique_ptr<ContextBase<StreamBatcher::Stream>>> contexts;
      std::vector<std::unique_ptr<RandomDocuments>> docs;
      for (int64_t i = 0; i < n; ++i) caches.push_back(make_context_cache(batcher.stream(i), ro));
      std::vector<ContextBase<StreamBatcher::Stream>*> ctx_ptrs;
      std::vector<DocumentSource*> doc_ptrs;
      for (int64_t i = 0; i < n; ++i) {
        contexts.push_back(make_context(modes[i], batcher.stream(i), caches[i], MarkingToken(), ro));
        docs.push_back(std::make_unique<RandomDocuments>(12, 0, 97, 900 + i));
        ctx_ptrs.push_back(contexts.back().get());
        doc_ptrs.push_back(docs.back().get());
      }
      const std::vector<GenerateResult> got = generate_streams(batcher, ctx_ptrs, doc_ptrs, prompts, greedy(30));
      int64_t solo_forwards = 0;
      for (int64_t i = 0; i < n; ++i) {
        INFO("stream " << i);
        CHECK(got[i].ids == solo[i].ids);
        CHECK(got[i].stats.tokens_reencoded == solo[i].stats.tokens_reencoded);
        CHECK(got[i].stats.tokens_decoded == solo[i].stats.tokens_decoded);
        CHECK(got[i].stats.retrievals == solo[i].stats.retrievals);
        solo_forwards += solo[i].stats.forwards;
      }
      CHECK(solo[0].stats.retrievals == 8);  // 30 tokens at stride 4: tokens 0, 4, ..., 28
      // Batched: every forward carried all four streams while they all ran.
      const StreamBatcher::Stats st = batcher.stats();
      CHECK(st.max_sequences == n);
      CHECK(st.forwards <= solo_forwards / n + 2);
    }
  }
}

TEST_CASE("batched streams: a failing stream leaves the others to finish", "[batching]") {
  LlamaForCausalLM m = random_model(at::kFloat, Kernels::Auto, 512);
  RalmOptions ro;
  ro.stride = 4;
  ro.doc_tokens = 8;
  ro.marks = false;
  ro.max_length = 100;
  StreamBatcher batcher(*m, 3);
  std::vector<KVCacheStore> caches;
  std::vector<std::unique_ptr<ContextBase<StreamBatcher::Stream>>> contexts;
  for (int64_t i = 0; i < 3; ++i) caches.push_back(make_context_cache(batcher.stream(i), ro));
  for (int64_t i = 0; i < 3; ++i)
    contexts.push_back(make_context(ContextMode::Append, batcher.stream(i), caches[i], MarkingToken(), ro));
  // Stream 1's documents hold ids past the vocabulary: its first retrieval fails.
  RandomDocuments good0(8, 0, 97, 1), bad(8, 90, 200, 2), good2(8, 0, 97, 3);
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}};
  CHECK_THROWS_WITH(generate_streams(batcher, {contexts[0].get(), contexts[1].get(), contexts[2].get()},
                                     {&good0, &bad, &good2}, prompts, greedy(20)),
                    Catch::Contains("outside the vocabulary"));
  // The others ran to the end.
  CHECK(contexts[0]->text().size() == 3 + 19);  // the prompt and every token but the last
  CHECK(contexts[2]->text().size() == 3 + 19);
  CHECK_THROWS_WITH(StreamBatcher(*m, 0), Catch::Contains("at least one stream"));
}

TEST_CASE("generate_batch: one call, a context per prompt, stream i sampling with seed + i", "[batching][exact]") {
  LlamaForCausalLM m = random_model(at::kFloat, Kernels::Auto, 512, 13);
  RalmOptions ro;
  ro.stride = 4;
  ro.doc_tokens = 10;
  ro.marks = false;
  ro.max_length = 120;
  GenerateOptions g = greedy(24);
  g.sampling.temperature = 1.0;
  g.sampling.top_k = 20;
  g.sampling.seed = 40;
  // Prompts 0 and 1 are equal; 2 is longer; all retrieve from their own sources.
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4}, {1, 2, 3, 4}, {5, 6, 7, 8, 9, 10, 11, 12, 13}};
  std::vector<std::unique_ptr<RandomDocuments>> docs;
  std::vector<DocumentSource*> doc_ptrs;
  for (int i = 0; i < 3; ++i) {
    docs.push_back(std::make_unique<RandomDocuments>(10, 0, 97, 70));  // the same documents for all three
    doc_ptrs.push_back(docs.back().get());
  }
  const BatchGeneration got = generate_batch(*m, ContextMode::Append, MarkingToken(), ro, doc_ptrs, prompts, g);
  REQUIRE(got.results.size() == 3);
  for (int64_t i = 0; i < 3; ++i) {
    INFO("prompt " << i);
    KVCacheStore cache = make_context_cache(*m, ro);
    auto ctx = make_context(ContextMode::Append, *m, cache, MarkingToken(), ro);
    RandomDocuments solo_docs(10, 0, 97, 70);
    GenerateOptions solo = g;
    solo.sampling.seed = 40 + static_cast<uint64_t>(i);
    CHECK(got.results[i].ids == generate(*ctx, solo_docs, prompts[i], solo).ids);
  }
  CHECK(got.results[0].ids != got.results[1].ids);  // equal prompts, different seeds
  CHECK(got.stats.max_sequences == 3);

  SECTION("bad input: one clear error") {
    CHECK_THROWS_WITH(generate_batch(*m, ContextMode::Append, MarkingToken(), ro, {doc_ptrs[0], doc_ptrs[0]},
                                     {{1, 2}, {3, 4}}, g),
                      Catch::Contains("share a document source"));
    CHECK_THROWS_WITH(generate_batch(*m, ContextMode::Append, MarkingToken(), ro, {doc_ptrs[0]}, {{1, 2}, {3, 4}}, g),
                      Catch::Contains("2 prompts but 1 document sources"));
    std::vector<KVCacheStore> one;
    one.push_back(make_context_cache(*m, ro));
    CHECK_THROWS_WITH(generate_batch(*m, ContextMode::Append, MarkingToken(), ro, {doc_ptrs[0], doc_ptrs[1]},
                                     {{1, 2}, {3, 4}}, g, &one),
                      Catch::Contains("2 prompts but 1 caches"));
    CHECK(generate_batch(*m, ContextMode::Append, MarkingToken(), ro, {}, {}, g).results.empty());
  }
}
