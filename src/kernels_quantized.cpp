// Quantized projections for a few rows (see flashback/kernels.hpp): the
// weight's blocks are read as stored and multiplied with 8-bit activations
// by integer dot products, as llama.cpp's vec_dot kernels do.
//
// Each activation row is quantized once per call in blocks of 32: scale
// d = max |x| / 127, q = round(x / d), and d sum(q) for the minimum terms
// (llama.cpp's Q8_1 activations). A block product is then
//   Q8_0  d_w d_x sum(q_w q_x)
//   Q4_0  d_w d_x sum((q_w - 8) q_x)
//   Q4_1  d_w d_x sum(q_w q_x) + m_w d_x sum(q_x)
//   Q5_0  d_w d_x sum((q_w - 16) q_x)      (Q4_0 with a fifth bit)
//   Q5_1  d_w d_x sum(q_w q_x) + m_w d_x sum(q_x)
// and the K-quants' super-blocks of 256 are 8 such blocks, group g of the
// weights against activation block g:
//   Q4_K  (d sc_g) d_x sum(q_w q_x) - (dmin m_g) d_x sum(q_x)
//   Q6_K  d d_x (sc_2g sum_first16((q_w - 32) q_x) + sc_2g+1 sum_last16(...))
// with the integer sums from _mm256_maddubs_epi16 (unsigned x signed bytes;
// signed weights go through the sign trick) and _mm256_madd_epi16.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "flashback/formats/ggml_types.hpp"
#include "flashback/kernels.hpp"
#include "flashback/quantized.hpp"
#include "kernels_avx2.hpp"

namespace flashback::kernels {

namespace {

struct Q8Block {
  float d;     // scale
  float sum;   // d * sum(q): the block's sum as quantized (llama.cpp's Q8_1 s)
  int8_t q[32];
};

}  // namespace

bool quantized_linear_usable(const at::Tensor& x, const QuantizedMatrix& w) {
  const GgmlType* t = find_ggml_type(w.type);
  // Every kept type's block is 32 or 256 values: whole blocks are whole activation blocks of 32.
  return cpu_has_avx2_fma() && detail::cpu_has_f16c() && keeps_quantized(w.type) && t && w.cols % int64_t(t->block) == 0 &&
         x.defined() &&
         x.is_cpu() && x.dim() >= 1 && x.size(-1) == w.cols && x.numel() > 0 && x.numel() / w.cols <= kMaxKernelRows &&
         detail::dtype_ok(x) && detail::no_grad_needed({&x});
}

#ifdef FLASHBACK_X86_KERNELS
namespace {
#define FB_AVX2_F16C __attribute__((target("avx2,fma,f16c")))

FB_AVX2_F16C inline float fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Sum of the products of 32 signed bytes, as 8 fp32 lanes.
FB_AVX2 inline __m256 dot_s8(__m256i w, __m256i x) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// Sum of the products of 32 unsigned (w) and signed (x) bytes, as 8 fp32 lanes.
FB_AVX2 inline __m256 dot_u8s8(__m256i w, __m256i x) {
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}

// 16 bytes of nibbles -> 32 bytes 0..15 in ggml's order: element j < 16 is
// byte j's low nibble, element j + 16 its high nibble.
FB_AVX2 inline __m256i nibbles(const uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// The 32 bits at p -> 32 bytes, byte i 0x10 where bit i is set (Q5's fifth bits).
FB_AVX2 inline __m256i fifth_bits(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  // Byte i looks at byte i / 8 of the word (each 128-bit lane holds the word four times) and its bit i % 8.
  const __m256i which = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                                         3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ULL));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), which), bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

FB_AVX2 void quantize_row(const float* x, int64_t K, Q8Block* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* v = x + 32 * b;
    __m256 a[4], mx = _mm256_setzero_ps();
    for (int u = 0; u < 4; ++u) {
      a[u] = _mm256_loadu_ps(v + 8 * u);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, a[u]));
    }
    const float amax = detail::hmax(mx), d = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(d > 0 ? 1.0f / d : 0.0f);
    __m256i q32[4];
    __m256 s = _mm256_setzero_ps();
    for (int u = 0; u < 4; ++u) {
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(a[u], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q32[u] = _mm256_cvtps_epi32(r);
      s = _mm256_add_ps(s, r);
    }
    // 4 x 8 int32 -> 32 int8, restoring the order the packs interleave.
    const __m256i p16a = _mm256_packs_epi32(q32[0], q32[1]), p16b = _mm256_packs_epi32(q32[2], q32[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q), p8);
    out[b].d = d;
    out[b].sum = d * detail::hsum(s);
  }
}

// One weight row (nb blocks of `type`) against one quantized activation row.
FB_AVX2_F16C float dot_row(uint32_t type, const uint8_t* row, const Q8Block* x, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  float mins = 0;
  if (type == 8) {  // Q8_0
    for (int64_t b = 0; b < nb; ++b, row += 34) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2));
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x[b].d), dot_s8(w, xq), acc);
    }
  } else if (type == 2) {  // Q4_0
    for (int64_t b = 0; b < nb; ++b, row += 18) {
      const __m256i w = _mm256_sub_epi8(nibbles(row + 2), _mm256_set1_epi8(8));
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x[b].d), dot_s8(w, xq), acc);
    }
  } else if (type == 3) {  // Q4_1
    for (int64_t b = 0; b < nb; ++b, row += 20) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x[b].d), dot_u8s8(nibbles(row + 4), xq), acc);
      mins += fp16(row + 2) * x[b].sum;
    }
  } else if (type == 6) {  // Q5_0: d, qh (32 fifth bits), qs[16]; value = d (q - 16)
    for (int64_t b = 0; b < nb; ++b, row += 22) {
      const __m256i w = _mm256_sub_epi8(_mm256_or_si256(nibbles(row + 6), fifth_bits(row + 2)), _mm256_set1_epi8(16));
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x[b].d), dot_s8(w, xq), acc);
    }
  } else if (type == 7) {  // Q5_1: d, m, qh, qs[16]; value = d q + m
    for (int64_t b = 0; b < nb; ++b, row += 24) {
      const __m256i w = _mm256_or_si256(nibbles(row + 8), fifth_bits(row + 4));
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x[b].d), dot_u8s8(w, xq), acc);
      mins += fp16(row + 2) * x[b].sum;
    }
  } else if (type == 12) {  // Q4_K: d, dmin, scales[12], qs[128]; groups 2p and 2p+1 are the low and high nibbles of qs[32p, 32p+32)
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int64_t sb = 0; sb < nb / 8; ++sb, row += 144, x += 8) {
      const float d = fp16(row), dmin = fp16(row + 2);
      for (int p = 0; p < 4; ++p) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 + 32 * p));
        const __m256i half[2] = {_mm256_and_si256(q, low4), _mm256_and_si256(_mm256_srli_epi16(q, 4), low4)};
        for (int h = 0; h < 2; ++h) {
          const int g = 2 * p + h;
          int sc, m;
          ggml_scale_min_k4(row + 4, g, &sc, &m);
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[g].q));
          acc = _mm256_fmadd_ps(_mm256_set1_ps(d * float(sc) * x[g].d), dot_u8s8(half[h], xq), acc);
          mins -= dmin * float(m) * x[g].sum;
        }
      }
    }
  } else {  // Q6_K: ql[128], qh[64], scales[16] int8, d. Value r of half h: low bits of ql[64h + r % 64]
            // (high nibble for r >= 64), high bits 2(r / 32) of qh[32h + r % 32], scale sc[8h + r / 16]
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03);
    for (int64_t sb = 0; sb < nb / 8; ++sb, row += 210, x += 8) {
      const int8_t* sc = reinterpret_cast<const int8_t*>(row + 192);
      const float d = fp16(row + 208);
      for (int h = 0; h < 2; ++h) {
        const __m256i ql[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 64 * h)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 64 * h + 32))};
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 128 + 32 * h));
        for (int g = 0; g < 4; ++g) {
          const __m256i lo = _mm256_and_si256(g >= 2 ? _mm256_srli_epi16(ql[g & 1], 4) : ql[g & 1], low4);
          const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), low2), 4);
          const __m256i w = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));  // -32..31
          const Q8Block& xb = x[4 * h + g];
          const float s0 = float(sc[8 * h + 2 * g]), s1 = float(sc[8 * h + 2 * g + 1]);
          const __m256 scale = _mm256_mul_ps(_mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1), _mm256_set1_ps(d * xb.d));
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
          acc = _mm256_fmadd_ps(scale, dot_s8(w, xq), acc);  // int32 lanes 0-3: values 0-15, 4-7: 16-31
        }
      }
    }
  }
  return detail::hsum(acc) + mins;
}

}  // namespace
#endif  // FLASHBACK_X86_KERNELS

std::vector<at::Tensor> quantized_linear(const at::Tensor& x, const std::vector<const QuantizedMatrix*>& ws) {
  for (const QuantizedMatrix* w : ws)
    TORCH_CHECK(quantized_linear_usable(x, *w), "flashback::kernels::quantized_linear: unsupported inputs");
  const int64_t K = x.size(-1), M = x.numel() / K, nb = K / 32;
  at::Tensor xf = x.to(at::kFloat).contiguous();  // [M, K]
  std::vector<at::Tensor> ys;
  std::vector<int64_t> rows;
  for (const QuantizedMatrix* w : ws) {
    ys.push_back(at::empty({M, w->rows}, at::kFloat));  // [M, N_i]
    rows.push_back(w->rows);
  }
#ifdef FLASHBACK_X86_KERNELS
  std::vector<Q8Block> xq(static_cast<size_t>(M * nb));
  for (int64_t m = 0; m < M; ++m) quantize_row(xf.data_ptr<float>() + m * K, K, xq.data() + m * nb);
  // One parallel region for all the matrices: x is quantized once and the threads meet once.
  detail::joint_rows(rows, 64, [&](size_t i, int64_t n0, int64_t n1) {
    const int64_t N = rows[i], rb = ws[i]->row_bytes();
    const uint8_t* W = ws[i]->data.data_ptr<uint8_t>();
    float* Y = ys[i].data_ptr<float>();
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) Y[m * N + n] = dot_row(ws[i]->type, W + n * rb, xq.data() + m * nb, nb);
  });
#endif
  for (size_t i = 0; i < ws.size(); ++i) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = ws[i]->rows;
    ys[i] = ys[i].view(shape).to(x.scalar_type());  // [..., N_i]
  }
  return ys;
}

at::Tensor quantized_linear(const at::Tensor& x, const QuantizedMatrix& w) { return quantized_linear(x, {&w}).front(); }

}  // namespace flashback::kernels
