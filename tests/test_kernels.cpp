// The hand-written kernels against LibTorch's own ops (an independent path):
// gemv, decode and causal attention (against fp64), fused RMSNorm and RoPE,
// then whole decode steps and long chunked prefills with the kernels on and
// off.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <c10/core/InferenceMode.h>

#include "flashback/flashback.hpp"
#include "flashback/formats/ggml_types.hpp"
#include "flashback/kernels.hpp"
#include "flashback/ops.hpp"
#include "flashback/quantized.hpp"
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

TEST_CASE("fma_peak_flops reports a finite positive rate on AVX2 + FMA CPUs and 0 elsewhere", "[kernels]") {
  const double peak = kernels::fma_peak_flops();
  CHECK(std::isfinite(peak));
  if (kernels::cpu_has_avx2_fma())
    CHECK(peak > 0);
  else
    CHECK(peak == 0);
}

TEST_CASE("gemv matches x W^T for fp32 and bf16 weights, any K, 1 to kMaxKernelRows rows", "[kernels]") {
  if (!kernels::cpu_has_avx2_fma()) {
    WARN("no AVX2/FMA on this CPU: LibTorch's path is used");
    return;
  }
  c10::InferenceMode guard;
  for (int64_t K : {1, 7, 8, 33, 64, 768, 1001}) {
    for (int64_t N : {1, 5, 64, 130}) {
      for (int64_t M : {int64_t(1), int64_t(2), int64_t(3), kernels::kMaxKernelRows}) {
        at::Tensor w = at::randn({N, K});
        at::Tensor x = at::randn({1, M, K});
        at::Tensor want = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());  // [1, M, N]
        at::Tensor got = kernels::gemv(w, x);
        REQUIRE(got.sizes() == want.sizes());
        CHECK(got.scalar_type() == at::kFloat);
        CHECK(max_abs_diff(got, want) < 1e-4 * std::sqrt(double(K)));
        // bf16 weights and activations: exact inputs, fp32 accumulation, one rounding.
        at::Tensor wb = w.to(at::kBFloat16), xb = x.to(at::kBFloat16);
        at::Tensor want_b = at::matmul(xb.to(at::kDouble), wb.to(at::kDouble).t());
        at::Tensor got_b = kernels::gemv(wb, xb);
        CHECK(got_b.scalar_type() == at::kBFloat16);
        CHECK(max_abs_diff(got_b, want_b) <= 1e-2 * (want_b.abs().max().item<double>() + 1) + 1e-4 * K);
        // Each row alone gives the same bits as within the call (what batched streams rely on).
        for (int64_t m = 0; m < M; ++m) {
          CHECK(at::equal(kernels::gemv(w, x.select(1, m)), got.select(1, m)));
          CHECK(at::equal(kernels::gemv(wb, xb.select(1, m)), got_b.select(1, m)));
        }
      }
    }
  }
  // A row-strided view (a slice of a wider matrix) reads the right rows.
  at::Tensor big = at::randn({40, 100});
  at::Tensor w = big.narrow(1, 10, 64);  // stride(0) = 100
  at::Tensor x = at::randn({64});
  CHECK(max_abs_diff(kernels::gemv(w, x), at::mv(w, x)) < 1e-4);
}

TEST_CASE("gemv of several matrices of one input (q, k, v; gate, up) in one call: each exactly as alone", "[kernels]") {
  if (!kernels::cpu_has_avx2_fma()) {
    WARN("no AVX2/FMA on this CPU: LibTorch's path is used");
    return;
  }
  c10::InferenceMode guard;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    // Row counts that split the joint rows inside a matrix and at its edges, one matrix a strided view.
    at::Tensor wide = at::randn({129, 300}).to(dt);
    const at::Tensor a = at::randn({70, 96}).to(dt), b = at::randn({1, 96}).to(dt), c = wide.narrow(1, 5, 96);
    for (int64_t M : {int64_t(1), int64_t(3), kernels::kMaxKernelRows}) {
      INFO("dtype " << dt << " rows " << M);
      at::Tensor x = at::randn({1, M, 96}).to(dt);
      const std::vector<at::Tensor> ys = kernels::gemv({&a, &b, &c}, x);
      REQUIRE(ys.size() == 3);
      CHECK(ys[2].sizes() == std::vector<int64_t>{1, M, 129});
      CHECK(ys[0].scalar_type() == dt);
      CHECK(at::equal(ys[0], kernels::gemv(a, x)));
      CHECK(at::equal(ys[1], kernels::gemv(b, x)));
      CHECK(at::equal(ys[2], kernels::gemv(c, x)));
      // Ops takes the same path, and LibTorch's ops compute the same products.
      const std::vector<at::Tensor> auto_ys = Ops(Kernels::Auto).linear(x, {&a, &b, &c});
      const std::vector<at::Tensor> ref_ys = Ops(Kernels::LibTorch).linear(x, {&a, &b, &c});
      for (size_t i = 0; i < 3; ++i) {
        CHECK(at::equal(auto_ys[i], ys[i]));
        CHECK(max_abs_diff(ref_ys[i], ys[i]) < (dt == at::kFloat ? 1e-4 : 0.15));
      }
    }
  }
  // Matrices of different dtypes, or more rows than the kernel takes: each through Ops::linear alone.
  const at::Tensor f = at::randn({16, 32}), h = at::randn({8, 32}).to(at::kBFloat16);
  at::Tensor x = at::randn({2, 32});
  const std::vector<at::Tensor> mixed = Ops(Kernels::Auto).linear(x, {&f, &h});
  CHECK(at::equal(mixed[0], Ops(Kernels::Auto).linear(x, f)));
  CHECK(mixed[1].sizes() == std::vector<int64_t>{2, 8});
  at::Tensor many = at::randn({kernels::kMaxKernelRows + 1, 32});
  const std::vector<at::Tensor> gemm = Ops(Kernels::Auto).linear(many, {&f, &f});
  CHECK(max_abs_diff(gemm[1], at::matmul(many.to(at::kDouble), f.to(at::kDouble).t())) < 1e-4);
}

TEST_CASE("gemv is not used where autograd needs the graph", "[kernels]") {
  at::Tensor w = at::randn({4, 8}).requires_grad_();
  at::Tensor x = at::randn({8});
  CHECK_FALSE(kernels::gemv_usable(w, x));
  {
    at::NoGradGuard ng;
    CHECK(kernels::gemv_usable(w, x) == kernels::cpu_has_avx2_fma());
    CHECK(kernels::gemv_usable(w.detach(), at::randn({kernels::kMaxKernelRows, 8})) == kernels::cpu_has_avx2_fma());
  }
  // More rows than the kernel takes, wrong sizes, other dtypes: not a gemv.
  CHECK_FALSE(kernels::gemv_usable(at::randn({4, 8}), at::randn({kernels::kMaxKernelRows + 1, 8})));
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
    // Queries and the cache in one dtype, and a cache kept in the other (kv_dtype).
    for (auto [dt, kvt] : {std::pair{at::kFloat, at::kFloat}, std::pair{at::kBFloat16, at::kBFloat16},
                           std::pair{at::kFloat, at::kBFloat16}, std::pair{at::kBFloat16, at::kFloat}}) {
      INFO("q " << dt << " cache " << kvt);
      at::Tensor q = at::randn({c.B, c.H, 1, c.D}).to(dt);
      // The cache: [B, Hkv, capacity, D] buffers, read through [0, S) views.
      at::Tensor kbuf = at::randn({c.B, c.Hkv, c.S + 17, c.D}).to(kvt);
      at::Tensor vbuf = at::randn({c.B, c.Hkv, c.S + 17, c.D}).to(kvt);
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

// softmax(q k^T / sqrt(D) + causal mask) v in fp64, query slot start + t seeing key slots <= start + t.
at::Tensor reference_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t G = q.size(1) / k.size(1), T = q.size(2), S = k.size(2);
  at::Tensor kr = k.to(at::kDouble).repeat_interleave(G, 1), vr = v.to(at::kDouble).repeat_interleave(G, 1);
  at::Tensor scores = at::matmul(q.to(at::kDouble), kr.transpose(-1, -2)) / std::sqrt(double(q.size(3)));  // [B, H, T, S]
  at::Tensor hidden = at::arange(S).unsqueeze(0) > at::arange(start, start + T).unsqueeze(1);               // [T, S]
  return at::matmul(at::softmax(scores.masked_fill(hidden, -INFINITY), -1), vr);                           // [B, H, T, D]
}

TEST_CASE("causal attention matches softmax(q k^T / sqrt(D) + mask) v in fp64 over strided cache views", "[kernels]") {
  c10::InferenceMode guard;
  struct Case {
    int64_t B, H, Hkv, T, start, D;
  };
  // One row and many; from slot 0 and after cached slots (an append's re-encode: 146 rows after 1,500); MHA,
  // GQA (SmolLM2's 9/3), MQA with more heads than a work item's rows; key blocks cut at every offset; D not
  // a multiple of 64.
  const std::vector<Case> cases = {{1, 4, 4, 1, 0, 8},     {1, 4, 2, 7, 0, 16},      {2, 6, 2, 33, 5, 64},
                                   {1, 12, 12, 146, 1500, 64}, {1, 9, 3, 70, 0, 64}, {1, 2, 1, 130, 64, 32},
                                   {1, 3, 1, 5, 200, 128}, {1, 80, 1, 3, 10, 8},     {2, 4, 2, 65, 63, 72},
                                   {1, 2, 2, 1, 0, 64}};
  // Queries and the cache in one dtype, and a cache kept in the other (kv_dtype).
  for (auto [dt, kvt] : {std::pair{at::kFloat, at::kFloat}, std::pair{at::kBFloat16, at::kBFloat16},
                         std::pair{at::kFloat, at::kBFloat16}, std::pair{at::kBFloat16, at::kFloat}}) {
    for (const Case& c : cases) {
      INFO("q " << dt << " cache " << kvt << " B " << c.B << " H " << c.H << " Hkv " << c.Hkv << " T " << c.T << " start " << c.start
                    << " D " << c.D);
      at::manual_seed(c.T * 31 + c.start);
      const int64_t S = c.start + c.T;
      // q as the model makes it, and as a view with heads and slots swapped; k, v: a cache's first S slots.
      at::Tensor q = at::randn({c.B, c.T, c.H, c.D}).mul(2).to(dt).transpose(1, 2);  // [B, H, T, D], strided
      at::Tensor kbuf = at::randn({c.B, c.Hkv, S + 19, c.D}).mul(2).to(kvt), vbuf = at::randn({c.B, c.Hkv, S + 19, c.D}).to(kvt);
      at::Tensor k = kbuf.narrow(2, 0, S), v = vbuf.narrow(2, 0, S);
      if (c.T % 2) {  // keys and values as views of [B, S, Hkv, D] (slots Hkv * D apart), read in place
        k = k.transpose(1, 2).contiguous().transpose(1, 2);
        v = v.transpose(1, 2).contiguous().transpose(1, 2);
      }
      REQUIRE(kernels::causal_attention_usable(q, k, v, c.start));
      at::Tensor got = kernels::causal_attention(q, k, v, c.start);
      CHECK(got.scalar_type() == dt);
      CHECK(got.sizes() == q.sizes());
      CHECK(got.is_contiguous());
      // fp32 out: summation order only (the reference reads the same stored values); bf16 out: its one
      // rounding (values up to ~4, 2^-8 relative).
      CHECK(max_abs_diff(got, reference_causal_attention(q, k, v, c.start)) < (dt == at::kFloat ? 2e-5 : 2e-2));
    }
  }
  // Inputs it does not take.
  at::Tensor q = at::randn({1, 4, 2, 8}), k = at::randn({1, 2, 5, 8});
  CHECK(kernels::causal_attention_usable(q, k, k, 3));
  CHECK_FALSE(kernels::causal_attention_usable(q, k, k, 2));                                  // start + T != S
  CHECK_FALSE(kernels::causal_attention_usable(at::randn({1, 4, 2, 6}), at::randn({1, 2, 5, 6}), at::randn({1, 2, 5, 6}), 3));  // D % 8
  CHECK_FALSE(kernels::causal_attention_usable(at::randn({1, 3, 2, 8}), k, k, 3));            // H not a multiple of Hkv
  CHECK(kernels::causal_attention_usable(q, k.to(at::kBFloat16), k.to(at::kBFloat16), 3));  // a bf16 cache
  CHECK_FALSE(kernels::causal_attention_usable(q, k.to(at::kBFloat16), k, 3));              // k and v differ
  CHECK_FALSE(kernels::causal_attention_usable(q.to(at::kDouble), k.to(at::kDouble), k.to(at::kDouble), 3));
  {
    c10::AutoGradMode grad(true);
    CHECK_FALSE(kernels::causal_attention_usable(q.clone().requires_grad_(), k, k, 3));  // autograd keeps LibTorch's ops
  }
}

// ggml's block formats written by hand after ggml-quants.c's reference quantizers (row-wise, blocks of 32).
QuantizedMatrix quantize_blocks(const at::Tensor& w, uint32_t type) {
  const int64_t N = w.size(0), K = w.size(1), bytes = type == 8 ? 34 : type == 2 ? 18 : 20;
  QuantizedMatrix m;
  m.type = type;
  m.rows = N;
  m.cols = K;
  m.data = at::zeros({N, K / 32 * bytes}, at::kByte);
  at::Tensor wc = w.to(at::kFloat).contiguous();
  auto half_bits = [](float v) { return c10::Half(v).x; };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < K / 32; ++b) {
      const float* x = wc.data_ptr<float>() + n * K + 32 * b;
      uint8_t* out = m.data.data_ptr<uint8_t>() + n * m.data.size(1) + b * bytes;
      if (type == 8) {  // Q8_0: d = amax / 127, q = round(x / d)
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float d = amax / 127, id = d ? 1 / d : 0;
        const uint16_t h = half_bits(d);
        std::memcpy(out, &h, 2);
        for (int i = 0; i < 32; ++i) out[2 + i] = uint8_t(int8_t(std::lround(x[i] * id)));
      } else if (type == 2) {  // Q4_0: d = (the value of largest magnitude) / -8, q = x / d + 8.5 truncated, <= 15
        float amax = 0, mx = 0;
        for (int i = 0; i < 32; ++i)
          if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), mx = x[i];
        const float d = mx / -8, id = d ? 1 / d : 0;
        const uint16_t h = half_bits(d);
        std::memcpy(out, &h, 2);
        for (int i = 0; i < 16; ++i) {
          const int q0 = std::min(15, int(int8_t(x[i] * id + 8.5f))), q1 = std::min(15, int(int8_t(x[i + 16] * id + 8.5f)));
          out[2 + i] = uint8_t(q0 | (q1 << 4));
        }
      } else {  // Q4_1: d = (max - min) / 15, m = min, q = (x - min) / d + 0.5 truncated, <= 15
        float lo = x[0], hi = x[0];
        for (int i = 0; i < 32; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
        const float d = (hi - lo) / 15, id = d ? 1 / d : 0;
        const uint16_t hd = half_bits(d), hm = half_bits(lo);
        std::memcpy(out, &hd, 2);
        std::memcpy(out + 2, &hm, 2);
        for (int i = 0; i < 16; ++i) {
          const int q0 = std::min(15, int(int8_t((x[i] - lo) * id + 0.5f))), q1 = std::min(15, int(int8_t((x[i + 16] - lo) * id + 0.5f)));
          out[4 + i] = uint8_t(q0 | (q1 << 4));
        }
      }
    }
  return m;
}

// The kernel's product as llama.cpp's vec_dot kernels define it, in fp64, against W [N, K], m dequantized.
// x's rows are quantized in blocks of 32 for the 32-value types (Q8_0/Q8_1: q = round(127 x / max |x|),
// half to even; d = max |x| / 127 rounded to fp16; for the types with a minimum, the block's sum d sum(q)
// rounded to fp16 by itself) or of 256 for the K-quants (Q8_K: the same q, d = 1 / (127 / max |x|) in fp32).
at::Tensor quantized_product(const at::Tensor& x, const QuantizedMatrix& m, const at::Tensor& W) {
  const bool k_quant = m.type == 12 || m.type == 14;
  const int64_t block = k_quant ? 256 : 32, nb = m.cols / block;
  const at::Tensor b = x.to(at::kFloat).reshape({-1, block});  // [blocks, block]
  const at::Tensor amax = b.abs().amax(-1, true);              // [blocks, 1]
  const at::Tensor inv = at::full_like(amax, 127).div(amax);   // [blocks, 1], fp32 as the kernel divides
  const at::Tensor d = k_quant ? at::ones_like(inv).div(inv) : amax.div(127);  // [blocks, 1]
  const at::Tensor q = at::where(amax > 0, b.mul(inv).round(), at::zeros_like(b));     // [blocks, block]
  const at::Tensor dq = (k_quant ? d : d.to(at::kHalf).to(at::kFloat)).to(at::kDouble);  // [blocks, 1]
  at::Tensor want = at::matmul((q.to(at::kDouble) * dq).reshape(x.sizes()), W.t());   // [..., N]
  if (m.type == 3 || m.type == 7) {  // Q4_1, Q5_1: the minimums meet fp16(d sum(q)), not fp16(d) sum(q)
    const at::Tensor sumq = q.sum(-1, true);                                                     // [blocks, 1]
    const at::Tensor s16 = d.mul(sumq).to(at::kHalf).to(at::kDouble);                            // [blocks, 1]
    const at::Tensor off = (s16 - dq * sumq.to(at::kDouble)).reshape({-1, nb});                 // [rows, nb]
    const at::Tensor mins = m.data.view({m.rows, nb, -1}).narrow(2, 2, 2).contiguous().view(at::kHalf);  // [N, nb, 1]
    want = want + at::matmul(off, mins.to(at::kDouble).reshape({m.rows, nb}).t()).view(want.sizes());
  }
  return want;
}

// The kernel on m against its dequantized matrix W [N, K] (fp64), fp32 and bf16 activations of 1 to
// kMaxKernelRows rows: exact integer products (x as the kernel quantizes it; only fp32 scaling and summation
// order differ from fp64), the product with x itself to the activations' 8 bits, and each row alone giving
// the same bits as within the call.
void check_quantized_rows(const QuantizedMatrix& m, const at::Tensor& W) {
  const int64_t N = m.rows, K = m.cols;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    for (int64_t M : {int64_t(1), int64_t(3), kernels::kMaxKernelRows}) {
      INFO(m.type_name() << " K " << K << " rows " << M << " dtype " << dt);
      at::Tensor x = at::randn({1, M, K}).mul(2).to(dt);  // [1, M, K]
      REQUIRE(kernels::quantized_linear_usable(x, m));
      at::Tensor got = kernels::quantized_linear(x, m);  // [1, M, N]
      CHECK(got.scalar_type() == dt);
      CHECK(got.sizes() == std::vector<int64_t>{1, M, N});
      at::Tensor want = quantized_product(x, m, W);  // [1, M, N]
      const double scale = want.abs().max().item<double>();
      CHECK(max_abs_diff(got, want) < (dt == at::kFloat ? 2e-6 : 1e-2) * scale);
      CHECK(max_abs_diff(got, at::matmul(x.to(at::kDouble), W.t())) < 0.03 * scale);
      for (int64_t r = 0; r < M; ++r) CHECK(at::equal(kernels::quantized_linear(x.select(1, r), m), got.select(1, r)));
    }
  }
}

TEST_CASE("quantized projections: integer dots over Q8_0, Q4_0 and Q4_1 blocks match the dequantized matrix", "[kernels][quantized]") {
  c10::InferenceMode guard;
  for (uint32_t type : {8u, 2u, 3u}) {
    for (int64_t K : {32, 96, 576}) {
      at::manual_seed(K + type);
      at::Tensor w = at::randn({70, K}).mul(0.05);
      if (type == 3) w = w + 0.01;  // an offset for the minimum to carry
      const QuantizedMatrix m = quantize_blocks(w, type);
      REQUIRE(m.row_bytes() == m.data.size(1));
      const at::Tensor W = dequantize_matrix(m).to(at::kDouble);  // [70, K], ggml's reader (pinned to the gguf package)
      CHECK(max_abs_diff(W, w) < 0.05 * 0.6);                     // it is the matrix, to 4 bits
      check_quantized_rows(m, W);
      // More rows than the kernel takes: Ops runs the dequantized matrix through a GEMM.
      at::Tensor x = at::randn({1, kernels::kMaxKernelRows + 1, K});
      CHECK_FALSE(kernels::quantized_linear_usable(x, m));
      CHECK(max_abs_diff(Ops(Kernels::Auto).quantized_linear(x, m), at::matmul(x.to(at::kDouble), W.t())) < 1e-4);
      CHECK(max_abs_diff(Ops(Kernels::LibTorch).quantized_linear(x.narrow(1, 0, 1), m), at::matmul(x.narrow(1, 0, 1).to(at::kDouble), W.t())) < 1e-4);
    }
  }
  {
    // Several matrices of one input (mixed types, as q, k, v may be) in one call: each exactly as alone.
    const QuantizedMatrix a = quantize_blocks(at::randn({70, 96}), 8), b = quantize_blocks(at::randn({33, 96}), 3),
                          c = quantize_blocks(at::randn({129, 96}), 2);
    at::Tensor x = at::randn({1, 2, 96});
    const std::vector<at::Tensor> ys = kernels::quantized_linear(x, {&a, &b, &c});
    REQUIRE(ys.size() == 3);
    CHECK(at::equal(ys[0], kernels::quantized_linear(x, a)));
    CHECK(at::equal(ys[1], kernels::quantized_linear(x, b)));
    CHECK(at::equal(ys[2], kernels::quantized_linear(x, c)));
    CHECK(ys[2].sizes() == std::vector<int64_t>{1, 2, 129});
    const std::vector<at::Tensor> many = Ops(Kernels::Auto).quantized_linear(at::randn({1, 6, 96}), {&a, &b});  // GEMM path
    CHECK(many[1].sizes() == std::vector<int64_t>{1, 6, 33});
  }
  const QuantizedMatrix m = quantize_blocks(at::randn({8, 64}), 8);
  CHECK_FALSE(kernels::quantized_linear_usable(at::randn({64}).to(at::kDouble), m));
  CHECK_FALSE(kernels::quantized_linear_usable(at::randn({48}), m));  // K disagrees
  c10::AutoGradMode grad(true);
  CHECK_FALSE(kernels::quantized_linear_usable(at::randn({64}).requires_grad_(), m));
}

// Random blocks of Q5_0, Q5_1, Q4_K or Q6_K (any bytes are a valid block once its fp16 scales are finite:
// those are set small; the values, fifth bits, 6-bit scales and minimums, int8 scales are drawn at random).
QuantizedMatrix random_blocks(int64_t N, int64_t K, uint32_t type, uint64_t seed) {
  const GgmlType* t = find_ggml_type(type);
  const int64_t values = int64_t(t->block), bytes = int64_t(t->bytes);
  QuantizedMatrix m;
  m.type = type;
  m.rows = N;
  m.cols = K;
  m.data = at::randint(0, 256, {N, K / values * bytes}, at::TensorOptions().dtype(at::kLong)).to(at::kByte);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < K / values; ++b) {
      uint8_t* blk = m.data.data_ptr<uint8_t>() + n * m.data.size(1) + b * bytes;
      auto put = [&](int at, float v) {
        const uint16_t h = c10::Half(v).x;
        std::memcpy(blk + at, &h, 2);
      };
      if (type == 14) {
        put(208, 1e-3f * u(gen));  // d
      } else {
        put(0, 2e-3f * u(gen));                                      // d
        if (type == 7 || type == 12) put(2, 1e-3f * (u(gen) - 1));  // Q5_1's m, Q4_K's dmin
      }
    }
  return m;
}

TEST_CASE("quantized projections: integer dots over Q5_0, Q5_1, Q4_K and Q6_K blocks match the dequantized matrix", "[kernels][quantized]") {
  c10::InferenceMode guard;
  for (uint32_t type : {6u, 7u, 12u, 14u}) {
    for (int64_t K : {256, 768}) {
      at::manual_seed(K + type);
      const QuantizedMatrix m = random_blocks(70, K, type, uint64_t(K + type));
      REQUIRE(m.row_bytes() == m.data.size(1));
      const at::Tensor W = dequantize_matrix(m).to(at::kDouble);  // [70, K], ggml's reader (pinned to the gguf package)
      REQUIRE(W.abs().max().item<double>() > 0);
      check_quantized_rows(m, W);
      // More rows than the kernel takes, or the kernels off: the dequantized matrix through LibTorch.
      at::Tensor x = at::randn({1, kernels::kMaxKernelRows + 1, K});
      CHECK_FALSE(kernels::quantized_linear_usable(x, m));
      CHECK(max_abs_diff(Ops(Kernels::Auto).quantized_linear(x, m), at::matmul(x.to(at::kDouble), W.t())) < 1e-4);
    }
  }
  // A K-quant row holds whole super-blocks: 256 values or more.
  QuantizedMatrix short_rows = random_blocks(4, 256, 12, 1);
  short_rows.cols = 224;
  CHECK_FALSE(kernels::quantized_linear_usable(at::randn({224}), short_rows));
  // Mixed in one call (a Q4_K_M layer: Q4_K beside Q6_K, Q8_0 or Q5_0): each as alone.
  const QuantizedMatrix a = random_blocks(40, 512, 12, 2), b = random_blocks(24, 512, 14, 3),
                        c = quantize_blocks(at::randn({33, 512}), 8), d = random_blocks(17, 512, 6, 4);
  at::Tensor x = at::randn({1, 2, 512});
  const std::vector<at::Tensor> ys = kernels::quantized_linear(x, {&a, &b, &c, &d});
  CHECK(at::equal(ys[0], kernels::quantized_linear(x, a)));
  CHECK(at::equal(ys[1], kernels::quantized_linear(x, b)));
  CHECK(at::equal(ys[2], kernels::quantized_linear(x, c)));
  CHECK(at::equal(ys[3], kernels::quantized_linear(x, d)));
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
      // A row rounds the same alone as inside a longer call (rows of 70 straddle the 8-lane blocks).
      CHECK(at::equal(kernels::silu_mul(g.narrow(0, 1, 1), u.narrow(0, 1, 1))[0], kernels::silu_mul(g, u)[1]));
    }
    // Many rows (the parallel path) and the far ends of the range: exp(-|a|) underflows, inf, NaN.
    at::manual_seed(3);
    at::Tensor g = at::randn({64, 2048}).mul(30).to(dt), u = at::randn({64, 2048}).to(dt);
    at::Tensor want_sw = at::silu(g.to(at::kDouble)) * u.to(at::kDouble);
    CHECK(max_rel_diff(kernels::silu_mul(g, u), want_sw, 1e-6) < (dt == at::kFloat ? 1e-5 : 0x1.1p-8));
    // bf16 is the fp32 result rounded once, as LibTorch rounds (nearest even).
    if (dt == at::kBFloat16)
      CHECK(at::equal(kernels::silu_mul(g, u), kernels::silu_mul(g.to(at::kFloat), u.to(at::kFloat)).to(dt)));
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    at::Tensor ends = at::tensor({-1000.0f, -88.0f, 88.0f, 1000.0f, inf, -inf, nan, 0.0f, -0.0f}).to(dt);
    at::Tensor got_ends = kernels::silu_mul(ends, at::ones({9}).to(dt)).to(at::kFloat);
    at::Tensor want_ends = at::silu(ends.to(at::kDouble)).to(at::kFloat);
    CHECK(at::allclose(got_ends.narrow(0, 0, 4), want_ends.narrow(0, 0, 4), 1e-5, 1e-30));
    CHECK(got_ends[4].item<float>() == inf);
    CHECK(std::isnan(got_ends[5].item<float>()));  // -inf * sigmoid(-inf) = -inf * 0, as at::silu gives
    CHECK(std::isnan(got_ends[6].item<float>()));
    CHECK(got_ends[7].item<float>() == 0.0f);
    CHECK(got_ends[8].item<float>() == 0.0f);

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
    auto run = [&](LlamaForCausalLMImpl& model, bool on, std::optional<at::ScalarType> kv = std::nullopt) {
      model.set_kernels(on ? Kernels::Auto : Kernels::LibTorch);
      KVCacheStore cache = model.make_cache(1, 64, kv);
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
    // The cache in the other dtype (kv_dtype): the kernels read it as stored, LibTorch's ops convert it; both
    // see the same stored values.
    const at::ScalarType other = dt == at::kFloat ? at::kBFloat16 : at::kFloat;
    at::Tensor fast_kv = run(*m, true, other), slow_kv = run(*m, false, other);
    CHECK(max_abs_diff(fast_kv, slow_kv) < tol);
    CHECK(max_abs_diff(fast_kv, fast) < 0.15);  // a bf16 cache moves fp32 logits by about bf16's rounding
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
