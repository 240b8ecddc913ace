// The model, cache and contexts on a CUDA device (benchmarks/gpu.sh runs these where a GPU is lent;
// without one they are skipped, visibly): the same logits as on the CPU, exact KV reuse, the paper's
// re-encoding counts, and the CPU kernels out of the way.
#include <c10/core/InferenceMode.h>

#include "flashback/flashback.hpp"
#include "flashback/kernels.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::max_abs_diff;
using flashback::test::tiny_config;

namespace {
bool have_cuda() {
  if (at::hasCUDA()) return true;
  WARN("no CUDA device visible to this LibTorch: the CUDA tests are skipped (benchmarks/gpu.sh runs them on a GPU)");
  return false;
}

// fp32: made on the host and moved (Module::to); other dtypes: made on the device.
LlamaForCausalLM model_on(const at::Device& device, at::ScalarType dtype = at::kFloat) {
  LlamaForCausalLMOptions o;
  o.dtype = dtype;
  if (dtype != at::kFloat) o.device = device;
  LlamaForCausalLM m(tiny_config(64, 2, 8, 2, 101, 512), o);
  m->init_random(3);
  if (dtype == at::kFloat) m->to(device);
  m->eval();
  return m;
}

GenerateResult run(ContextMode mode, LlamaForCausalLMImpl& m, bool kv_reuse) {
  RalmOptions o;
  o.stride = 4;
  o.doc_tokens = 12;
  o.max_length = 160;
  o.kv_reuse = kv_reuse;
  o.marks = mode == ContextMode::Append;
  KVCacheStore cache = make_context_cache(m, o);
  auto ctx = make_context(mode, m, cache, MarkingToken(m.config().vocab_size), o);
  RandomDocuments docs(12, 1, 99, 7);
  GenerateOptions g;
  g.max_new_tokens = 40;
  g.stop_at_eos = false;
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 30; ++i) prompt.push_back(1 + (i * 37) % 97);
  return generate(*ctx, docs, prompt, g);
}
}  // namespace

TEST_CASE("cuda: the model computes the CPU's logits, cached or not", "[cuda]") {
  if (!have_cuda()) return;
  c10::InferenceMode guard;
  LlamaForCausalLM cpu = model_on(at::kCPU), gpu = model_on(at::Device("cuda"));
  CHECK(gpu->device().is_cuda());
  at::Tensor tokens = at::randint(0, 101, {2, 37}, at::kLong);
  at::Tensor want = cpu->forward(tokens);
  CHECK(max_abs_diff(gpu->forward(tokens).cpu(), want) < 1e-4);            // ids from the host
  CHECK(max_abs_diff(gpu->forward(tokens.cuda()).cpu(), want) < 1e-4);     // ids on the device
  KVCacheStore cache = gpu->make_cache(2, 64);
  CHECK(cache.options().device().is_cuda());
  at::Tensor a = gpu->forward(tokens.narrow(1, 0, 20), {}, cache);
  at::Tensor b = gpu->forward(tokens.narrow(1, 20, 17), {}, cache);
  CHECK(max_abs_diff(at::cat({a, b}, 1).cpu(), want) < 1e-4);
  // The CPU kernels step aside for device tensors.
  at::Tensor x = at::randn({1, 64}, at::Device("cuda"));
  CHECK_FALSE(kernels::rms_norm_usable(x, at::ones({64}, x.options())));
  CHECK_FALSE(kernels::silu_mul_usable(x, x));
  // A cache on the host for a model on the device: one clear line.
  KVCacheStore host = cpu->make_cache(2, 64);
  CHECK_THROWS_WITH(gpu->forward(tokens, {}, host), Catch::Contains("the KV cache is on cpu but the model is on cuda"));
}

namespace {
// The same checks on any device: run on the CPU everywhere (so they are known to hold), on CUDA where lent.
void check_contexts(const at::Device& device) {
  c10::InferenceMode guard;
  LlamaForCausalLM m = model_on(device);
  for (ContextMode mode : {ContextMode::Append, ContextMode::Prepend}) {
    INFO(context_mode_name(mode) << " on " << device.str());
    GenerateResult reuse = run(mode, *m, true), recompute = run(mode, *m, false);
    CHECK(reuse.ids.size() == 40);
    CHECK(reuse.ids == recompute.ids);
    CHECK(reuse.stats.retrievals == 10);
    if (mode == ContextMode::Append) {
      // After the first, a retrieval re-encodes the stride's tokens and <MARK_L> doc <MARK_R>.
      REQUIRE(reuse.stats.reencoded_per_place.size() == 10);
      for (size_t i = 1; i < reuse.stats.reencoded_per_place.size(); ++i)
        CHECK(reuse.stats.reencoded_per_place[i] == 4 + 12 + 2);
    }
  }
}
}  // namespace

TEST_CASE("contexts keep exact KV reuse and the paper's re-encoding counts (cpu; cuda where lent)", "[cuda][context]") {
  check_contexts(at::kCPU);
  if (!have_cuda()) return;
  check_contexts(at::Device("cuda"));
  // The device writes the CPU's greedy ids (fp32).
  c10::InferenceMode guard;
  LlamaForCausalLM cpu = model_on(at::kCPU), gpu = model_on(at::Device("cuda"));
  CHECK(run(ContextMode::Append, *cpu, true).ids == run(ContextMode::Append, *gpu, true).ids);
}

TEST_CASE("cuda: bfloat16 and float16 run on the device", "[cuda][dtype]") {
  if (!have_cuda()) return;
  c10::InferenceMode guard;
  at::Tensor tokens = at::randint(0, 101, {1, 25}, at::kLong);
  for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
    LlamaForCausalLM m = model_on(at::Device("cuda"), dt);
    // The reference: the same weights (drawn on the device in dt) widened into an fp32 model.
    LlamaForCausalLM f32 = model_on(at::Device("cuda"));
    const auto narrow = m->named_parameters();
    for (auto& p : f32->named_parameters()) p.value().copy_(*narrow.find(p.key()));
    at::Tensor want = f32->forward(tokens).cpu();
    CHECK(max_abs_diff(m->forward(tokens).cpu(), want) < 0.1);
    CHECK(run(ContextMode::Append, *m, true).ids.size() == 40);
  }
}

namespace {
// A LoRA training step on `device` against the same step on the CPU: every trainable gradient, within fp32
// rounding. Run with the CPU as `device` everywhere (the harness is known to hold), with CUDA where lent.
void check_lora_step(const at::Device& device) {
  // The same base weights, adapter and perturbed B and token rows on both (dropout off: deterministic steps).
  auto make = [] {
    LlamaForCausalLM m(tiny_config(64, 2, 8, 2, 101, 512));
    m->init_random(3);
    at::manual_seed(5);
    add_lora(*m, flashback::test::lora_all_targets(101));
    mark_only_adapter_trainable(*m);
    flashback::test::perturb_adapter(*m, 6);
    return m;
  };
  LlamaForCausalLM cpu = make(), other = make();
  other->to(device);
  at::Tensor x = at::randint(0, 99, {2, 17}, at::kLong);
  x.index_put_({0, 3}, 99);  // the mark rows train too
  x.index_put_({1, 8}, 100);
  for (LlamaForCausalLMImpl* m : {cpu.get(), other.get()}) {
    m->train();
    m->forward(x).logsumexp(-1).mean().backward();
  }
  const auto there = other->named_parameters();
  int compared = 0;
  for (auto& p : cpu->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    INFO(p.key() << " on " << device.str());
    const at::Tensor want = p.value().grad(), got = there.find(p.key())->grad();
    REQUIRE(want.defined());
    REQUIRE(got.defined());
    CHECK(got.device().type() == device.type());
    CHECK(want.abs().sum().item<double>() > 0);
    CHECK(max_abs_diff(got.cpu(), want) < 1e-4 * (1.0 + want.abs().max().item<double>()));
    ++compared;
  }
  CHECK(compared == 2 * 2 * 7 + 1);  // A and B of 7 targets in 2 layers, and the mark rows
}
}  // namespace

TEST_CASE("a LoRA training step computes the CPU's gradients (cpu; cuda where lent)", "[cuda][lora]") {
  check_lora_step(at::kCPU);
  if (!have_cuda()) return;
  check_lora_step(at::Device("cuda"));
}

namespace {
// Attention as a forward calls it (queries at the newest `T` slots, keys and values views of a larger
// cache, fewer KV heads) on `device` in `dtype` against LibTorch's ops in fp64 on the host. On a GPU in
// fp16/bf16 this is FlashAttention-2 called by name, whose causal rows must line up with the newest keys:
// a re-encode of T rows after `start` cached ones sees [0, start + t], not [0, t].
void check_attention(const at::Device& device, at::ScalarType dtype, double tol) {
  c10::InferenceMode guard;
  const Ops ops(Kernels::Auto);
  at::manual_seed(11);
  struct Case {
    int64_t T, start, D;
  };
  for (const Case c : {Case{1, 0, 64}, Case{1, 37, 64}, Case{6, 0, 64}, Case{7, 30, 64}, Case{64, 100, 128}, Case{3, 9, 8}}) {
    INFO("T " << c.T << " start " << c.start << " D " << c.D << " " << c10::toString(dtype) << " on " << device.str());
    const int64_t B = 2, H = 8, Hkv = 2, S = c.start + c.T, capacity = S + 13;
    at::Tensor q = at::randn({B, H, c.T, c.D}, at::kDouble);
    at::Tensor cache_k = at::randn({B, Hkv, capacity, c.D}, at::kDouble);  // [B, Hkv, capacity, D]
    at::Tensor cache_v = at::randn({B, Hkv, capacity, c.D}, at::kDouble);
    at::Tensor want = grouped_causal_attention(q, cache_k.narrow(2, 0, S), cache_v.narrow(2, 0, S), c.start);
    auto to = [&](const at::Tensor& t) { return t.to(device, dtype); };
    at::Tensor k = to(cache_k), v = to(cache_v);
    at::Tensor got = ops.attention(to(q), k.narrow(2, 0, S), v.narrow(2, 0, S), c.start);  // [B, H, T, D]
    REQUIRE(got.sizes() == want.sizes());
    CHECK(max_abs_diff(got.to(at::kCPU, at::kDouble), want) < tol);
  }
}
}  // namespace

TEST_CASE("attention rows line up with the newest cached keys in every dtype (cpu; cuda where lent)", "[cuda][attention]") {
  check_attention(at::kCPU, at::kFloat, 1e-5);
  check_attention(at::kCPU, at::kBFloat16, 3e-2);
  if (!have_cuda()) return;
  check_attention(at::Device("cuda"), at::kFloat, 1e-4);
  check_attention(at::Device("cuda"), at::kBFloat16, 3e-2);
  check_attention(at::Device("cuda"), at::kHalf, 4e-3);
}
