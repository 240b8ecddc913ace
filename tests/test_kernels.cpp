// The hand-written decode kernels against LibTorch's own ops (an independent
// path): gemv, decode attention, fused RMSNorm and RoPE, then whole decode
// steps and long chunked prefills with the kernels on and off.
#include <c10/core/InferenceMode.h>

#include "flashback/flashback.hpp"
#include "flashback/kernels.hpp"
#include "flashback/ops.hpp"
#include "flashback/torch_compat.hpp"
#include "test_util.hpp"

// Last: c10 defines its own CHECK macro, Catch2's must win.
#include <catch2/catch.hpp>

using namespace flashback;
using flashback::test::max_abs_diff;
using flashback::test::max_rel_diff;
using flashback::test::tiny_config;

namespace {
at::Tensor ref_rotate_half(const at::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}
}  // namespace

TEST_CASE("gemv matches at::mv for fp32 and bf16 weights, any K", "[kernels]") {
  if (!kernels::cpu_has_avx2_fma()) {
    WARN("no AVX2/FMA on this CPU: LibTorch's path is used");
    return;
  }
  c10::InferenceMode guard;
  for (int64_t K : {1, 7, 8, 33, 64, 768, 1001}) {
    for (int64_t N : {1, 5, 64, 130}) {
      at::Tensor w = at::randn({N, K});
      at::Tensor x = at::randn({1, 1, K});
      at::Tensor want = at::mv(w.to(at::kDouble), x.reshape({-1}).to(at::kDouble)).view({1, 1, N});
      at::Tensor got = kernels::gemv(w, x);
      REQUIRE(got.sizes() == want.sizes());
      CHECK(got.scalar_type() == at::kFloat);
      CHECK(max_abs_diff(got, want) < 1e-4 * std::sqrt(double(K)));
      // bf16 weights and activations: exact inputs, fp32 accumulation, one rounding.
      at::Tensor wb = w.to(at::kBFloat16), xb = x.to(at::kBFloat16);
      at::Tensor want_b = at::mv(wb.to(at::kDouble), xb.reshape({-1}).to(at::kDouble)).view({1, 1, N});
      at::Tensor got_b = kernels::gemv(wb, xb);
      CHECK(got_b.scalar_type() == at::kBFloat16);
      CHECK(max_abs_diff(got_b, want_b) <= 1e-2 * (want_b.abs().max().item<double>() + 1) + 1e-4 * K);
    }
  }
  // A row-strided view (a slice of a wider matrix) reads the right rows.
  at::Tensor big = at::randn({40, 100});
  at::Tensor w = big.narrow(1, 10, 64);  // stride(0) = 100
  at::Tensor x = at::randn({64});
  CHECK(max_abs_diff(kernels::gemv(w, x), at::mv(w, x)) < 1e-4);
}

TEST_CASE("gemv is not used where autograd needs the graph", "[kernels]") {
  at::Tensor w = at::randn({4, 8}).requires_grad_();
  at::Tensor x = at::randn({8});
  CHECK_FALSE(kernels::gemv_usable(w, x));
  {
    at::NoGradGuard ng;
    CHECK(kernels::gemv_usable(w, x) == kernels::cpu_has_avx2_fma());
  }
  // Several rows, wrong sizes, other dtypes: not a gemv.
  CHECK_FALSE(kernels::gemv_usable(at::randn({4, 8}), at::randn({2, 8})));
  CHECK_FALSE(kernels::gemv_usable(at::randn({4, 8}), at::randn({7})));
  CHECK_FALSE(kernels::gemv_usable(at::randn({4, 8}).to(at::kDouble), at::randn({8})));
  CHECK_THROWS(kernels::gemv(at::randn({4, 8}), at::randn({7})));
}

TEST_CASE("decode attention matches softmax(q k^T / sqrt(D)) v over strided cache views", "[kernels]") {
  if (!kernels::cpu_has_avx2_fma()) {
    WARN("no AVX2/FMA on this CPU: LibTorch's path is used");
    return;
  }
  c10::InferenceMode guard;
  struct Case {
    int64_t B, H, Hkv, S, D;
  };
  for (const Case& c : {Case{1, 12, 12, 513, 64}, Case{2, 8, 2, 37, 8}, Case{1, 4, 1, 1, 16}, Case{3, 6, 3, 200, 72},
                        Case{1, 2, 2, 9, 128}}) {
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
      at::Tensor q = at::randn({c.B, c.H, 1, c.D}).to(dt);
      // The cache: [B, Hkv, capacity, D] buffers, read through [0, S) views.
      at::Tensor kbuf = at::randn({c.B, c.Hkv, c.S + 17, c.D}).to(dt);
      at::Tensor vbuf = at::randn({c.B, c.Hkv, c.S + 17, c.D}).to(dt);
      at::Tensor k = kbuf.narrow(2, 0, c.S), v = vbuf.narrow(2, 0, c.S);
      REQUIRE(kernels::decode_attention_usable(q, k, v));
      const int64_t G = c.H / c.Hkv;
      at::Tensor kr = k.to(at::kDouble).repeat_interleave(G, 1), vr = v.to(at::kDouble).repeat_interleave(G, 1);
      at::Tensor want = at::matmul(at::softmax(at::matmul(q.to(at::kDouble), kr.transpose(-1, -2)) / std::sqrt(double(c.D)), -1), vr);
      at::Tensor got = kernels::decode_attention(q, k, v);
      CHECK(got.scalar_type() == dt);
      CHECK(got.sizes() == q.sizes());
      CHECK(max_abs_diff(got, want) < (dt == at::kFloat ? 1e-5 : 2e-2));
    }
  }
  // Shapes it does not take.
  at::Tensor q = at::randn({1, 4, 2, 8}), k = at::randn({1, 2, 5, 8});
  CHECK_FALSE(kernels::decode_attention_usable(q, k, k));                                  // two query rows
  CHECK_FALSE(kernels::decode_attention_usable(at::randn({1, 4, 1, 6}), at::randn({1, 2, 5, 6}), at::randn({1, 2, 5, 6})));  // D % 8
  CHECK_FALSE(kernels::decode_attention_usable(at::randn({1, 3, 1, 8}), k, k));            // H not a multiple of Hkv
}

TEST_CASE("fused RMSNorm, SwiGLU gate and RoPE match the reference ops", "[kernels]") {
  {
    // With a gradient to keep, the reference path is used.
    at::Tensor xg = at::randn({3, 8}).requires_grad_();
    CHECK_FALSE(kernels::rms_norm_usable(xg, at::ones({8})));
    CHECK_FALSE(kernels::rotary_usable(xg.view({1, 1, 3, 8}), at::ones({3, 8}), at::ones({3, 8})));
  }
  c10::InferenceMode guard;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    for (uint64_t seed = 0; seed < 16; ++seed) {
      INFO("dtype " << dt << ", seed " << seed);
      at::manual_seed(seed);
      at::Tensor x = at::randn({2, 5, 96}).mul(3).to(dt);
      at::Tensor w = (at::rand({96}) + 0.5).to(dt);
      at::Tensor xf = x.to(at::kFloat);
      at::Tensor want = w * (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-5)).to(dt);
      REQUIRE(kernels::rms_norm_usable(x, w));
      at::Tensor got = kernels::rms_norm(x, w, 1e-5);
      CHECK(got.scalar_type() == dt);
      // Rounded twice as the reference is (normalised, then scaled): a float-order difference in
      // the norm can flip each rounding by one step, so two bf16 ulps of the value.
      CHECK(max_rel_diff(got, want, 1e-3) < (dt == at::kFloat ? 1e-5 : 0x1.1p-6));

      at::Tensor g = at::randn({3, 70}).mul(4).to(dt), u = at::randn({3, 70}).to(dt);
      REQUIRE(kernels::silu_mul_usable(g, u));
      at::Tensor want_sw = at::silu(g.to(at::kDouble)) * u.to(at::kDouble);
      // Computed in float, rounded once: half a bf16 ulp of the value, plus float's error.
      CHECK(max_rel_diff(kernels::silu_mul(g, u), want_sw, 1e-6) < (dt == at::kFloat ? 1e-5 : 0x1.1p-8));
    }

    // RoPE on a transposed view ([B, T, H, D] -> [B, H, T, D]), with [T, D] and [B, T, D] tables.
    at::Tensor base = at::randn({2, 7, 4, 16}).to(dt);
    at::Tensor q = base.transpose(1, 2);  // [2, 4, 7, 16], not contiguous
    at::Tensor ang = at::rand({2, 7, 8}) * 6;
    at::Tensor cos3 = at::cat({ang.cos(), ang.cos()}, -1), sin3 = at::cat({ang.sin(), ang.sin()}, -1);  // [2, 7, 16]
    for (bool batched : {false, true}) {
      at::Tensor c = batched ? cos3 : cos3[0], s = batched ? sin3 : sin3[0];
      at::Tensor cb = batched ? c.unsqueeze(1) : c, sb = batched ? s.unsqueeze(1) : s;
      at::Tensor qd = q.to(at::kDouble);
      at::Tensor want_q = qd * cb.to(at::kDouble) + ref_rotate_half(qd) * sb.to(at::kDouble);
      REQUIRE(kernels::rotary_usable(q, c, s));
      at::Tensor got_q = kernels::rotary(q, c, s);
      CHECK(got_q.is_contiguous());
      CHECK(max_abs_diff(got_q, want_q) < (dt == at::kFloat ? 1e-5 : 3e-2));
    }
  }
}

TEST_CASE("decode steps and chunked prefills agree with the kernels on and off", "[kernels]") {
  c10::InferenceMode guard;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    LlamaForCausalLMOptions mo;
    mo.dtype = dt;
    mo.prefill_chunk = 16;  // a 40-token prefill runs as 16 + 16 + 8
    LlamaForCausalLM m(tiny_config(64, 2, 8, 2, 97, 128), mo);
    m->init_random(3);
    LlamaForCausalLMOptions whole_opts = mo;
    whole_opts.prefill_chunk = 0;
    LlamaForCausalLM whole(tiny_config(64, 2, 8, 2, 97, 128), whole_opts);
    whole->init_random(3);
    at::Tensor tokens = at::randint(0, 97, {1, 48}, at::kLong);
    auto run = [&](LlamaForCausalLMImpl& model, bool on) {
      model.set_kernels(on ? Kernels::Auto : Kernels::LibTorch);
      KVCacheStore cache = model.make_cache(1, 64);
      std::vector<at::Tensor> outs = {model.forward(tokens.narrow(1, 0, 40), {}, cache)};  // [1, 40, V]
      for (int64_t t = 40; t < 48; ++t) outs.push_back(model.forward(tokens.narrow(1, t, 1), {}, cache));  // [1, 1, V]
      CHECK(cache.size() == 48);
      return at::cat(outs, 1);  // [1, 48, V]
    };
    const double tol = dt == at::kFloat ? 1e-4 : 0.15;  // bf16: one rounding of ~2^-8 per op, logits ~ +-4
    at::Tensor fast = run(*m, true), slow = run(*m, false), one_pass = run(*whole, false);
    CHECK(max_abs_diff(fast, slow) < tol);
    CHECK(max_abs_diff(slow, one_pass) < tol);
    // And both equal the uncached full forward.
    at::Tensor full = whole->forward(tokens);
    CHECK(max_abs_diff(fast, full) < tol);
    if (dt == at::kFloat) CHECK(fast.argmax(-1).equal(full.argmax(-1)));
  }
}

TEST_CASE("LibTorch's fused attention (2.x) computes the reference's grouped causal attention", "[kernels]") {
  at::Tensor q = at::randn({1, 4, 3, 8}), kv = at::randn({1, 2, 3, 8});
  if (!flashback::compat::kHasSdpa) {
    WARN("LibTorch " TORCH_VERSION " has no at::scaled_dot_product_attention: only the reference runs");
    CHECK_THROWS_WITH(flashback::fused_causal_attention(q, kv, kv, 0), Catch::Contains("LibTorch 2.0"));
    return;
  }
  struct Case {
    int64_t B, H, Hkv, T, start;
  };
  // a prefill from slot 0, a chunk after cached slots, one decode row; MHA, GQA, MQA
  for (const Case& c : {Case{2, 4, 4, 9, 0}, Case{1, 8, 2, 5, 11}, Case{2, 6, 1, 1, 20}, Case{1, 4, 2, 70, 3}}) {
    INFO("B " << c.B << " H " << c.H << " Hkv " << c.Hkv << " T " << c.T << " start " << c.start);
    const int64_t S = c.start + c.T;
    at::Tensor qc = at::randn({c.B, c.H, c.T, 16}), k = at::randn({c.B, c.Hkv, S, 16}), v = at::randn({c.B, c.Hkv, S, 16});
    CHECK(max_abs_diff(flashback::fused_causal_attention(qc, k, v, c.start),
                       flashback::grouped_causal_attention(qc, k, v, c.start)) < 1e-5);
  }
}
