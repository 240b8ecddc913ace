// KVCacheStore and the model's cached forward: reusing the cache must give the
// same logits as recomputing the whole sequence, however the sequence was fed.
#include <c10/core/InferenceMode.h>

#include <stdexcept>
#include <thread>

#include "flashback/flashback.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::max_abs_diff;
using flashback::test::tiny_config;

namespace {

struct Shape {
  int64_t hidden, layers, heads, kv_heads;
  bool tied;
};
const Shape kShapes[] = {
    {64, 2, 8, 2, false},  // GQA, 4 query heads per KV head
    {48, 3, 6, 6, true},   // multi-head, tied head
    {32, 2, 4, 1, false},  // multi-query
    {96, 2, 12, 4, false}, // GQA 3:1
};

LlamaForCausalLM random_model(const Shape& s, uint64_t seed, int64_t max_pos = 128) {
  LlamaForCausalLM m(tiny_config(s.hidden, s.layers, s.heads, s.kv_heads, 97, max_pos, s.tied));
  m->init_random(seed);
  return m;
}

// Feeds tokens [B, T] through the cache in pieces of the given sizes; returns the logits [B, T, V].
// No Catch2 assertion in here: it runs on worker threads too, and Catch2's are not thread-safe
// (ThreadSanitizer reports them).
at::Tensor feed(LlamaForCausalLMImpl& m, KVCacheStore& cache, const at::Tensor& tokens, const std::vector<int64_t>& pieces) {
  std::vector<at::Tensor> outs;
  int64_t at_ = 0;
  for (int64_t n : pieces) {
    outs.push_back(m.forward(tokens.narrow(1, at_, n), {}, cache));
    at_ += n;
  }
  if (at_ != tokens.size(1)) throw std::logic_error("feed: the pieces do not cover the tokens");
  return at::cat(outs, 1);
}

}  // namespace

TEST_CASE("KVCacheStore bookkeeping", "[cache]") {
  KVCacheStore c(2, 1, 2, 16, 4, at::kFloat);
  CHECK(c.size() == 0);
  CHECK(c.capacity() == 16);
  CHECK(c.dtype() == at::kFloat);
  CHECK(KVCacheStore(1, 1, 1, 1, 1, at::kBFloat16).dtype() == at::kBFloat16);
  CHECK(KVCacheStore().dtype() == at::ScalarType::Undefined);
  CHECK(c.bytes_allocated() == 16 * 2 * 2 * 1 * 2 * 4 * 4);
  at::Tensor k = at::randn({1, 2, 5, 4}), v = at::randn({1, 2, 5, 4});
  for (int l = 0; l < 2; ++l) {
    auto [ks, vs] = c.write(l, k, v);
    CHECK(ks.size(2) == 5);
    CHECK(at::equal(ks, k));
  }
  c.commit(5);
  CHECK(c.size() == 5);
  CHECK(c.bytes_used() == 5 * c.bytes_per_slot());
  CHECK(at::equal(c.values(1), v));
  // The buffer is written in place: no reallocation across writes.
  const void* before = c.keys(0).data_ptr();
  c.truncate(2);
  CHECK(c.size() == 2);
  auto [ks, vs] = c.write(0, k.narrow(2, 0, 3), v.narrow(2, 0, 3));
  CHECK(ks.data_ptr() == before);
  CHECK_THROWS_AS(c.truncate(3), InvalidArgument);  // only 2 committed
  CHECK_THROWS_AS(c.truncate(-1), InvalidArgument);
  CHECK_THROWS_AS(c.check_room(15), InvalidArgument);
  CHECK_THROWS_WITH(c.commit(15), Catch::Contains("KV cache overflow"));
  CHECK_THROWS_AS(KVCacheStore(0, 1, 1, 1, 1, at::kFloat), InvalidArgument);
}

TEST_CASE("cached forward equals a full forward", "[cache]") {
  c10::InferenceMode guard;
  uint64_t seed = 1;
  for (const Shape& s : kShapes) {
    DYNAMIC_SECTION("hidden " << s.hidden << " heads " << s.heads << "/" << s.kv_heads << (s.tied ? " tied" : "")) {
      LlamaForCausalLM m = random_model(s, seed++);
      const int64_t T = 37;
      at::Tensor tokens = at::randint(0, 97, {1, T}, at::kLong);
      at::Tensor full = m->forward(tokens);  // [1, T, V]

      KVCacheStore one = m->make_cache(1, 64);
      CHECK(max_abs_diff(feed(*m, one, tokens, {T}), full) < 1e-4);
      CHECK(one.size() == T);

      KVCacheStore chunks = m->make_cache(1, 64);
      CHECK(max_abs_diff(feed(*m, chunks, tokens, {5, 1, 13, 2, 16}), full) < 1e-4);

      KVCacheStore steps = m->make_cache(1, 64);
      CHECK(max_abs_diff(feed(*m, steps, tokens, std::vector<int64_t>(T, 1)), full) < 1e-4);

      // Explicit positions equal the implicit ones.
      KVCacheStore pos = m->make_cache(1, 64);
      at::Tensor p = at::arange(T, at::kLong);
      CHECK(max_abs_diff(m->forward(tokens, p, pos), full) < 1e-4);

      // truncate + re-append different tokens: stale slots must not leak.
      at::Tensor other = tokens.clone();
      other.narrow(1, 20, T - 20).random_(0, 97);
      at::Tensor full_other = m->forward(other);
      steps.truncate(20);
      at::Tensor tail = feed(*m, steps, other.narrow(1, 20, T - 20), {3, 1, T - 24});
      CHECK(max_abs_diff(tail, full_other.narrow(1, 20, T - 20)) < 1e-4);
      // ...and again after a second truncation inside the re-appended part.
      steps.truncate(25);
      at::Tensor again = feed(*m, steps, other.narrow(1, 25, T - 25), {T - 25});
      CHECK(max_abs_diff(again, full_other.narrow(1, 25, T - 25)) < 1e-4);
    }
  }
}

TEST_CASE("batched cached forward equals per-row full forwards", "[cache]") {
  c10::InferenceMode guard;
  LlamaForCausalLM m = random_model(kShapes[0], 7);
  at::Tensor tokens = at::randint(0, 97, {3, 21}, at::kLong);
  KVCacheStore cache = m->make_cache(3, 32);
  at::Tensor got = feed(*m, cache, tokens, {8, 1, 12});
  for (int64_t b = 0; b < 3; ++b) CHECK(max_abs_diff(got[b], m->forward(tokens.narrow(0, b, 1))[0]) < 1e-4);
  // [B, T] positions act per row. RoPE only sees relative positions: a
  // uniform shift (row 1) changes nothing, a gap (row 2) changes the answer
  // exactly as that row alone with [T] positions does.
  at::Tensor base = at::arange(21, at::kLong);
  at::Tensor gapped = base + (base >= 10).to(at::kLong) * 7;
  at::Tensor pos = at::stack({base, base + 5, gapped});  // [3, T]
  at::Tensor per_row = m->forward(tokens, pos);
  CHECK(max_abs_diff(per_row[0], got[0]) < 1e-4);
  CHECK(max_abs_diff(per_row[1], got[1]) < 1e-4);
  CHECK(max_abs_diff(per_row[2], got[2]) > 1e-3);
  CHECK(max_abs_diff(per_row[2], m->forward(tokens.narrow(0, 2, 1), gapped)[0]) < 1e-4);
}

TEST_CASE("one model serves concurrent sequences on separate caches", "[cache][threads]") {
  LlamaForCausalLM m = random_model(kShapes[3], 11);
  std::vector<at::Tensor> inputs, expected(4), got(4);
  {
    c10::InferenceMode guard;
    for (int i = 0; i < 4; ++i) {
      inputs.push_back(at::randint(0, 97, {1, 30}, at::kLong));
      expected[i] = m->forward(inputs[i]);
    }
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      c10::InferenceMode guard;
      KVCacheStore cache = m->make_cache(1, 40);
      got[i] = feed(*m, cache, inputs[i], {7, 1, 1, 21});
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) CHECK(max_abs_diff(got[i], expected[i]) < 1e-4);
}

TEST_CASE("the forward works under autograd and reaches every parameter", "[autograd]") {
  LlamaForCausalLM m = random_model(kShapes[0], 3);
  at::Tensor tokens = at::randint(0, 97, {2, 12}, at::kLong);
  at::Tensor logits = m->forward(tokens);  // [2, 12, V]
  at::Tensor loss = at::cross_entropy_loss(logits.narrow(1, 0, 11).reshape({-1, 97}),
                                           tokens.narrow(1, 1, 11).reshape({-1}));
  loss.backward();
  for (auto& p : m->named_parameters()) {
    INFO(p.key());
    REQUIRE(p.value().grad().defined());
    CHECK(p.value().grad().abs().sum().item<double>() > 0);
  }
}

TEST_CASE("bfloat16 weights run and stay close to fp32", "[dtype]") {
  c10::InferenceMode guard;
  LlamaForCausalLM m = random_model(kShapes[0], 5);
  at::Tensor tokens = at::randint(0, 97, {1, 16}, at::kLong);
  at::Tensor ref = m->forward(tokens);
  m->to(at::kBFloat16);
  CHECK(m->dtype() == at::kBFloat16);
  KVCacheStore cache = m->make_cache(1, 32);
  at::Tensor got = feed(*m, cache, tokens, {9, 1, 6});
  CHECK(got.scalar_type() == at::kFloat);
  CHECK(max_abs_diff(got, ref) < 0.1);
  CHECK(max_abs_diff(got, m->forward(tokens)) < 0.05);
}

TEST_CASE("devices: a cache or ids on another device, or a device this LibTorch lacks, fail with one clear line",
          "[cache][device]") {
  LlamaForCausalLM m(tiny_config(32, 2, 4, 2));
  m->init_random(1);
  at::Tensor tokens = at::randint(0, 97, {1, 5}, at::kLong);
  // The meta device stands in for "another device" on a machine without a GPU.
  KVCacheStore meta(2, 1, 2, 16, 8, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  CHECK_THROWS_WITH(m->forward(tokens, {}, meta), Catch::Contains("the KV cache is on meta but the model is on cpu"));
  CHECK_THROWS_WITH(m->forward(tokens.to(at::kMeta)), Catch::Contains("tokens are on meta but the model is on cpu"));
  if (!at::hasCUDA()) {
    CHECK_THROWS_WITH(m->to(at::Device("cuda")), Catch::Contains("CUDA is not available to this LibTorch"));
    LlamaForCausalLMOptions o;
    o.device = at::Device("cuda");
    CHECK_THROWS_WITH(LlamaForCausalLM(tiny_config(32, 2, 4, 2), o), Catch::Contains("device cuda: CUDA is not available"));
    CHECK(m->device() == at::Device("cpu"));  // the failed move left the model where it was
  }
  CHECK(m->forward(tokens).size(2) == 97);
}
