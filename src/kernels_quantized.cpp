// Quantized projections for a few rows (see flashback/kernels.hpp): the
// weight's blocks are read as stored and multiplied with 8-bit activations
// by integer dot products, as llama.cpp's vec_dot kernels do.
//
// Each activation row is quantized once per call, q = round(127 x / max |x|)
// and d = max |x| / 127 over a block, in the block the weight's type wants:
//
// Blocks of 32 (llama.cpp's Q8_0/Q8_1: d, q[32] and d sum(q) for the
// minimums, both scales rounded to fp16 as those blocks store them, so the
// kept model decodes llama.cpp's numbers), against the 32-value types. A
// block product is
//   Q8_0  d_w d_x sum(q_w q_x)
//   Q4_0  d_w d_x sum((q_w - 8) q_x)
//   Q4_1  d_w d_x sum(q_w q_x) + m_w d_x sum(q_x)
//   Q5_0  d_w d_x sum((q_w - 16) q_x)      (Q4_0 with a fifth bit)
//   Q5_1  d_w d_x sum(q_w q_x) + m_w d_x sum(q_x)
//
// Super-blocks of 256 (llama.cpp's Q8_K: d, q[256] and the integer sums of
// each 16, bsums), against the K-quants, whose super-blocks carry small
// integer scales per group: one activation scale over the super-block lets
// the whole super-block be summed in integers and scaled once.
//   Q4_K  d d_x sum_g sc_g sum_32(q_w q_x) - dmin d_x sum_g m_g (bsums_2g + bsums_2g+1)
//   Q6_K  d d_x (sum_j sc_j sum_16(q_w q_x) - 32 sum_j sc_j bsums_j)   (q_w 0..63 as stored)
//
// The integer sums come from _mm256_maddubs_epi16 (unsigned x signed bytes;
// signed weights go through the sign trick) and _mm256_madd_epi16, which also
// applies the K-quants' scales as 16-bit factors.
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
  float d;     // scale, an fp16 value
  float sum;   // d * sum(q) (the block's sum as quantized, llama.cpp's Q8_1 s), an fp16 value
  int8_t q[32];
};

struct Q8KBlock {
  float d;             // scale
  int16_t bsums[16];   // sum(q) of each 16 values
  int8_t q[256];
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

bool is_k_quant(uint32_t type) { return type == 12 || type == 14; }

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

FB_AVX2_F16C inline float to_fp16(float v) { return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT)); }

FB_AVX2_F16C void quantize_row(const float* x, int64_t K, Q8Block* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* v = x + 32 * b;
    __m256 a[4], mx = _mm256_setzero_ps();
    for (int u = 0; u < 4; ++u) {
      a[u] = _mm256_loadu_ps(v + 8 * u);
      mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, a[u]));
    }
    const float amax = detail::hmax(mx), d = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
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
    out[b].d = to_fp16(d);
    out[b].sum = to_fp16(d * detail::hsum(s));
  }
}

// A row into super-blocks of 256 (one scale each) with the sums of each 16.
FB_AVX2 void quantize_row_k(const float* x, int64_t K, Q8KBlock* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < K / 256; ++b) {
    const float* v = x + 256 * b;
    __m256 mx = _mm256_setzero_ps();
    for (int u = 0; u < 32; ++u) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + 8 * u)));
    // llama.cpp's quantize_row_q8_K: q = round(127 / max|x| * x), d = 1 / (127 / max|x|) (its sign flip, q
    // and d both negated when the largest |x| is positive, leaves every product d q as it is here).
    const float amax = detail::hmax(mx), s = amax > 0 ? 127.0f / amax : 0.0f;
    const __m256 inv = _mm256_set1_ps(s);
    for (int c = 0; c < 8; ++c) {  // 32 values at a time, packed as in quantize_row
      __m256i q32[4];
      for (int u = 0; u < 4; ++u)
        q32[u] = _mm256_cvtps_epi32(
            _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 32 * c + 8 * u), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      // Each 16 values' sum from two vectors of 8 int32 (|sum| <= 16 * 127 fits int16).
      for (int h = 0; h < 2; ++h) {
        const __m256i s8 = _mm256_add_epi32(q32[2 * h], q32[2 * h + 1]);
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        out[b].bsums[2 * c + h] = int16_t(_mm_cvtsi128_si32(s2) + _mm_extract_epi32(s2, 1));
      }
      const __m256i p16a = _mm256_packs_epi32(q32[0], q32[1]), p16b = _mm256_packs_epi32(q32[2], q32[3]);
      __m256i p8 = _mm256_packs_epi16(p16a, p16b);
      p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q + 32 * c), p8);
    }
    out[b].d = amax > 0 ? 1.0f / s : 0.0f;
  }
}

// One weight row of a K-quant (nsb super-blocks) against one row of super-block activations, as 8 lanes
// to be summed.
FB_AVX2_F16C __m256 dot_row_k(uint32_t type, const uint8_t* row, const Q8KBlock* x, int64_t nsb) {
  __m256 acc = _mm256_setzero_ps(), mins = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  if (type == 12) {  // Q4_K: d, dmin, scales[12], qs[128]; groups 2p and 2p+1 are the low and high nibbles of qs[32p, 32p+32)
    for (int64_t sb = 0; sb < nsb; ++sb, row += 144, ++x) {
      uint32_t w[4];
      ggml_scales_mins_k4(row + 4, w);
      const __m128i v = _mm_setr_epi32(int(w[0]), int(w[1]), int(w[2]), int(w[3]));  // bytes: scales 0-7, minimums 0-7
      // Each minimum twice (it covers two 16-value sums); each scale as int16 in both 128-bit lanes.
      const __m128i m8 = _mm_unpackhi_epi64(v, v);
      const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
      const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(v));
      const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->bsums));
      mins = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row + 2) * x->d), _mm256_cvtepi32_ps(_mm256_madd_epi16(m16, bsums)), mins);
      __m256i sumi = _mm256_setzero_si256();
      for (int p = 0; p < 4; ++p) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 + 32 * p));
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->q + 64 * p));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->q + 64 * p + 32));
        const __m256i p0 = _mm256_maddubs_epi16(_mm256_and_si256(q, low4), x0);  // |pair| <= 2 * 15 * 127
        const __m256i p1 = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), x1);
        // Scale g in every int16 lane: bytes 2g, 2g + 1 of sc16 picked throughout.
        const __m256i s0 = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(short(0x0202 * (2 * p) + 0x0100)));
        const __m256i s1 = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(short(0x0202 * (2 * p + 1) + 0x0100)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, s0));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, s1));
      }
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x->d), _mm256_cvtepi32_ps(sumi), acc);
    }
  } else {  // Q6_K: ql[128], qh[64], scales[16] int8, d. Value r of half h: low bits of ql[64h + r % 64]
            // (high nibble for r >= 64), high bits 2(r / 32) of qh[32h + r % 32], scale sc[8h + r / 16]
    const __m256i low2 = _mm256_set1_epi8(0x03);
    // Bytes 0-7 pick scale i, bytes 8-15 scale i + 1: a group of 32 values' two scales, widened to 16 lanes each.
    const __m128i pair = _mm_set_epi64x(0x0101010101010101LL, 0);
    for (int64_t sb = 0; sb < nsb; ++sb, row += 210, ++x) {
      const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 192));
      const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->bsums));
      const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bsums), 5);  // 32 sum_j sc_j bsums_j
      __m256i sumi = _mm256_setzero_si256();
      for (int h = 0; h < 2; ++h) {
        const __m256i ql[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 64 * h)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 64 * h + 32))};
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 128 + 32 * h));
        for (int g = 0; g < 4; ++g) {
          const __m256i lo = _mm256_and_si256(g >= 2 ? _mm256_srli_epi16(ql[g & 1], 4) : ql[g & 1], low4);
          const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), low2), 4);
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->q + 128 * h + 32 * g));
          const __m256i p = _mm256_maddubs_epi16(_mm256_or_si256(lo, hi), xq);  // 0..63 as stored; |pair| <= 2 * 63 * 127
          const __m256i s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, _mm_add_epi8(pair, _mm_set1_epi8(char(8 * h + 2 * g)))));
          sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
        }
      }
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row + 208) * x->d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi, offset)), acc);
    }
  }
  return _mm256_sub_ps(acc, mins);
}

// One weight row (nb blocks of a 32-value `type`) against one quantized activation row, as 8 lanes to be
// summed.
FB_AVX2_F16C __m256 dot_row(uint32_t type, const uint8_t* row, const Q8Block* x, int64_t nb) {
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
  } else {  // Q5_1: d, m, qh, qs[16]; value = d q + m
    for (int64_t b = 0; b < nb; ++b, row += 24) {
      const __m256i w = _mm256_or_si256(nibbles(row + 8), fifth_bits(row + 4));
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16(row) * x[b].d), dot_u8s8(w, xq), acc);
      mins += fp16(row + 2) * x[b].sum;
    }
  }
  return _mm256_add_ps(acc, _mm256_setr_ps(mins, 0, 0, 0, 0, 0, 0, 0));
}

// Y[m * N + n] for weight rows n0..n1 of W (row_bytes rb) and every activation row m < M, 8 weight rows
// at a time and one reduction for the 8.
FB_AVX2_F16C void rows_dot(uint32_t type, const uint8_t* W, int64_t rb, int64_t K, int64_t n0, int64_t n1, int64_t M,
                           const Q8Block* xq, const Q8KBlock* xk, float* Y, int64_t N) {
  for (int64_t n = n0; n < n1; n += 8) {
    const int64_t cnt = std::min<int64_t>(8, n1 - n);
    for (int64_t m = 0; m < M; ++m) {
      __m256 v[8];
      for (int64_t r = 0; r < 8; ++r)
        v[r] = r >= cnt           ? _mm256_setzero_ps()
               : is_k_quant(type) ? dot_row_k(type, W + (n + r) * rb, xk + m * (K / 256), K / 256)
                                  : dot_row(type, W + (n + r) * rb, xq + m * (K / 32), K / 32);
      alignas(32) float s[8];
      _mm256_store_ps(s, detail::hsum8(v));
      std::copy(s, s + cnt, Y + m * N + n);
    }
  }
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
  // x as each matrix's type wants it (a Q4_K_M layer mixes both kinds), quantized once.
  bool want32 = false, want256 = false;
  for (const QuantizedMatrix* w : ws) (is_k_quant(w->type) ? want256 : want32) = true;
  std::vector<Q8Block> xq(want32 ? static_cast<size_t>(M * nb) : 0);
  std::vector<Q8KBlock> xk(want256 ? static_cast<size_t>(M * (K / 256)) : 0);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = xf.data_ptr<float>() + m * K;
    if (want32) quantize_row(row, K, xq.data() + m * nb);
    if (want256) quantize_row_k(row, K, xk.data() + m * (K / 256));
  }
  // One parallel region for all the matrices: x is quantized once and the threads meet once.
  detail::joint_rows(rows, 64, [&](size_t i, int64_t n0, int64_t n1) {
    const int64_t N = rows[i], rb = ws[i]->row_bytes();
    rows_dot(ws[i]->type, ws[i]->data.data_ptr<uint8_t>(), rb, K, n0, n1, M, xq.data(), xk.data(), ys[i].data_ptr<float>(), N);
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
