// Building blocks shared by the AVX2 + FMA kernels (src/kernels*.cpp):
// loads that widen fp32/bf16 to 8 fp32 lanes and stores that round them
// back, a horizontal sum, a vectorised exp, and the F16C check. Functions
// carry per-function target attributes (FB_AVX2), so the library needs no
// -mavx2 and runs LibTorch's path on CPUs without it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FLASHBACK_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace flashback::kernels::detail {

inline bool dtype_ok(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

// The kernels have no backward: they run only where no graph is needed.
inline bool no_grad_needed(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return true;
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return false;
  return true;
}

// The CPU has F16C (fp16 <-> fp32 conversion; checked once at run time).
bool cpu_has_f16c();

// Several matrices of one input (q, k, v; gate, up) with rows[i] rows each, taken one after another in one
// parallel region: each thread gets one contiguous block of the joint rows (at least `grain`), so it reads
// its weights as one sequential stream and the threads meet once for all the matrices. Calls
// f(i, n0, n1) for matrix i's rows [n0, n1). (Handing out small blocks on demand instead measured 5-12%
// slower at decode: the reads stop being sequential.)
template <class F>
void joint_rows(const std::vector<int64_t>& rows, int64_t grain, const F& f) {
  std::vector<int64_t> first = {0};
  for (int64_t r : rows) first.push_back(first.back() + r);
  at::parallel_for(0, first.back(), grain, [&](int64_t b, int64_t e) {
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t lo = std::max(b, first[i]), hi = std::min(e, first[i + 1]);
      if (lo < hi) f(i, lo - first[i], hi - first[i]);
    }
  });
}

inline float to_f32(float v) { return v; }
inline float to_f32(c10::BFloat16 v) { return static_cast<float>(v); }

#ifdef FLASHBACK_X86_KERNELS
#define FB_AVX2 __attribute__((target("avx2,fma")))

FB_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
FB_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  // 8 x bf16 -> 8 x fp32: zero-extend to 32 bits, shift into the high half.
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

FB_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
// fp32 -> bf16 rounded to nearest even, NaN to 0x7fc0: c10::BFloat16(float)'s
// rounding, 8 at a time.
FB_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  // Pack the 32-bit lanes' low halves (all <= 0xffff) in order.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

FB_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The horizontal sums of 8 vectors as one (lane r: the sum of v[r]'s lanes), each summed in one fixed
// order, ((0+1)+(2+3))+((4+5)+(6+7)), whatever the other vectors hold: a row's sum never depends on its
// neighbours. One reduction for 8 rows where hsum would take one each.
FB_AVX2 inline __m256 hsum8(const __m256* v) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));  // [v0..v3 lanes 0-3 | lanes 4-7]
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));  // the same for v4..v7
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

FB_AVX2 inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x) for x <= 0 (softmax's exponents after the row maximum is taken
// out): 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p a degree-6
// polynomial (Cephes' coefficients): relative error below 2e-7. Inputs below
// -87.3 give 0 (exp underflows float there anyway); -inf gives 0.
FB_AVX2 inline __m256 exp8_nonpositive(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // also true for -inf
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, ln2 split in two for accuracy.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n through the exponent bits (n >= -126 here).
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
// out[d] (+)= sum_s p[s] V[s * ldv + d], d < D (D a multiple of 8), 64
// columns (8 registers) at a time; `add`: onto what out holds, else over it.
template <class VT>
FB_AVX2 void weighted_rows(const VT* V, int64_t ldv, const float* p, int64_t S, int64_t D, float* out, bool add) {
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    const int64_t nv = std::min<int64_t>(8, (D - d0) / 8);
    __m256 acc[8];
    for (int64_t j = 0; j < nv; ++j) acc[j] = add ? _mm256_loadu_ps(out + d0 + 8 * j) : _mm256_setzero_ps();
    if (nv == 8) {
      for (int64_t s = 0; s < S; ++s) {
        const __m256 ps = _mm256_set1_ps(p[s]);
        const VT* row = V + s * ldv + d0;
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(load8(row + 8 * j), ps, acc[j]);
      }
    } else {
      for (int64_t s = 0; s < S; ++s) {
        const __m256 ps = _mm256_set1_ps(p[s]);
        const VT* row = V + s * ldv + d0;
        for (int64_t j = 0; j < nv; ++j) acc[j] = _mm256_fmadd_ps(load8(row + 8 * j), ps, acc[j]);
      }
    }
    for (int64_t j = 0; j < nv; ++j) _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
  }
}
#endif  // FLASHBACK_X86_KERNELS

}  // namespace flashback::kernels::detail
