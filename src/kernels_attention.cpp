// Causal attention of many query rows (prefill chunks, FlashBack's
// re-encodes), flash-attention style on the CPU (see flashback/kernels.hpp).
//
// Work item: one KV head of one batch row and a block of query slots, with
// the G query heads that share the KV head folded into rows (row g * nt + t:
// head kvh * G + g, slot start + t0 + t), so each key block is read once for
// all of them. Keys stream in blocks of 64. Scores are held keys x rows
// (St = K_blk Qt, the queries transposed once per item), so that neither keys
// nor values are ever transposed (an fp32 cache's are read in place, a bf16
// cache's widened per block, as broadcasts and row loads of one small GEMM
// tile) and the online softmax's maxima and sums run down columns, 8 rows per
// vector. Key blocks past a query block's last slot are never touched
// (causal); within the diagonal blocks a row's later keys get -inf.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "flashback/kernels.hpp"
#include "kernels_avx2.hpp"

namespace flashback::kernels {

using detail::dtype_ok;
using detail::no_grad_needed;

namespace {
constexpr int64_t kKeyBlock = 64;   // keys per block: its scores St [64, rows] (16 KiB at 64 rows) stay in L1
constexpr int64_t kRowTarget = 64;  // query rows (folded heads x slots) per work item
constexpr int64_t kMaxHeadDim = 512;
}  // namespace

bool causal_attention_usable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  if (!cpu_has_avx2_fma() || q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  const int64_t D = q.size(3);
  return q.is_cpu() && k.is_cpu() && v.is_cpu() && D % 8 == 0 && D > 0 && D <= kMaxHeadDim && k.size(3) == D &&
         k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(1) > 0 && q.size(1) % k.size(1) == 0 &&
         q.size(2) >= 1 && start >= 0 && start + q.size(2) == k.size(2) && q.stride(3) == 1 && k.stride(3) == 1 &&
         v.stride(3) == 1 && k.scalar_type() == v.scalar_type() && dtype_ok(q) && dtype_ok(k) &&
         no_grad_needed({&q, &k, &v});
}

#ifdef FLASHBACK_X86_KERNELS
namespace {
using detail::load8;
using detail::to_f32;

// C[i, :] = (C[i, :] * cs[i] if cs, else 0) + sum_k A[i sai + k sak] B[k, :] for i < MR and 8 NV columns:
// MR x NV accumulators (12 at most: FMA's latency needs ~10 in flight), B's row loaded once for the MR rows,
// A's values broadcast. Every element is one FMA chain over k in order, whatever the tile: a row's result does
// not depend on the rows or columns computed beside it.
template <int MR, int NV>
FB_AVX2 inline void tile(const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb, int64_t K, float* C,
                         int64_t ldc, const float* cs) {
  __m256 c[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      c[i][v] = cs ? _mm256_mul_ps(_mm256_loadu_ps(C + i * ldc + 8 * v), _mm256_set1_ps(cs[i])) : _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(B + k * ldb + 8 * v);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * sai + k * sak);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[i][v] = _mm256_fmadd_ps(a, b[v], c[i][v]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(C + i * ldc + 8 * v, c[i][v]);
}

template <int NV>
FB_AVX2 void tile_rows(int64_t mr, const float* A, int64_t sai, int64_t sak, const float* B, int64_t ldb, int64_t K,
                       float* C, int64_t ldc, const float* cs) {
  switch (mr) {
    case 6: return tile<6, NV>(A, sai, sak, B, ldb, K, C, ldc, cs);
    case 5: return tile<5, NV>(A, sai, sak, B, ldb, K, C, ldc, cs);
    case 4: return tile<4, NV>(A, sai, sak, B, ldb, K, C, ldc, cs);
    case 3: return tile<3, NV>(A, sai, sak, B, ldb, K, C, ldc, cs);
    case 2: return tile<2, NV>(A, sai, sak, B, ldb, K, C, ldc, cs);
    default: return tile<1, NV>(A, sai, sak, B, ldb, K, C, ldc, cs);
  }
}

// C [M, N] = diag(cs) C + A B (cs null: C = A B), N a multiple of 8; A [M, K] read as A[i sai + k sak], B [K, N]
// (row stride ldb), C (row stride ldc). Columns in panels of 16 (B's panel stays in L1 while rows go by 6 at a
// time).
FB_AVX2 void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t sai, int64_t sak, const float* B,
                        int64_t ldb, float* C, int64_t ldc, const float* cs) {
  for (int64_t n = 0; n < N; n += 16) {
    const bool two = n + 16 <= N;
    for (int64_t i = 0; i < M; i += 6) {
      const int64_t mr = std::min<int64_t>(6, M - i);
      const float* a = A + i * sai;
      float* c = C + i * ldc + n;
      const float* s = cs ? cs + i : nullptr;
      if (two)
        tile_rows<2>(mr, a, sai, sak, B + n, ldb, K, c, ldc, s);
      else
        tile_rows<1>(mr, a, sai, sak, B + n, ldb, K, c, ldc, s);
    }
  }
}

// Rows [0, n) of a [?, D] block widened to fp32 (ld D).
template <class KT>
FB_AVX2 void widen_rows(const KT* X, int64_t ldx, int64_t n, int64_t D, float* out) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(out + j * D + d, load8(X + j * ldx + d));
}

// One key block of the online softmax, down the columns of St [nk, Rp] (rows 8 at a time): the running
// maximum m and normaliser l of each row take in the block, St becomes exp(St - m), and c gets the factor
// exp(m_old - m_new) that rescales what earlier blocks summed (0 on a row's first block, m_old = -inf).
FB_AVX2 void softmax_step(float* S, int64_t nk, int64_t Rp, float* m, float* l, float* c) {
  for (int64_t r = 0; r < Rp; r += 8) {
    __m256 mx = _mm256_loadu_ps(S + r);
    for (int64_t j = 1; j < nk; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(S + j * Rp + r));
    const __m256 m_old = _mm256_loadu_ps(m + r), m_new = _mm256_max_ps(m_old, mx);
    const __m256 corr = detail::exp8_nonpositive(_mm256_sub_ps(m_old, m_new));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 p = detail::exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(S + j * Rp + r), m_new));
      _mm256_storeu_ps(S + j * Rp + r, p);
      sum = _mm256_add_ps(sum, p);
    }
    _mm256_storeu_ps(m + r, m_new);
    _mm256_storeu_ps(l + r, _mm256_fmadd_ps(_mm256_loadu_ps(l + r), corr, sum));
    _mm256_storeu_ps(c + r, corr);
  }
}

// E: the queries' and the output's type; KT: the cache's (kv_dtype may differ).
//
// Per work item, with R query rows padded to Rp (a multiple of 8) and a block of nk keys:
//   St [nk, Rp] = K_blk Qt            (Qt [D, Rp]: the scaled queries transposed once per item)
//   online softmax down St's columns, 8 rows at a time: running max m, normaliser l, factor c
//   O  [Rp, D]  = diag(c) O + St^T V_blk
// Scores are kept keys x rows so that the softmax's maxima and sums are vertical (no horizontal reductions)
// and neither keys nor values are ever transposed: keys and the probabilities are broadcast from memory.
template <class E, class KT>
void causal_attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                           at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv;
  const int64_t tq = std::max<int64_t>(1, kRowTarget / G);  // query slots per item
  const int64_t nqb = (T + tq - 1) / tq;
  const E* Q = q.data_ptr<E>();
  const KT* K = k.data_ptr<KT>();
  const KT* V = v.data_ptr<KT>();
  E* O = out.data_ptr<E>();  // contiguous [B, H, T, D]
  const float scale = 1.0f / std::sqrt(float(D));
  constexpr bool wide = std::is_same_v<KT, float>;
  const float ninf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * Hkv * nqb, 1, [&](int64_t i0, int64_t i1) {
    const int64_t rows = (G * tq + 7) / 8 * 8;
    std::vector<float> qt(D * rows), of(rows * D), st(kKeyBlock * rows), m(rows), l(rows), c(rows);
    std::vector<float> kf(wide ? 0 : kKeyBlock * D), vf(wide ? 0 : kKeyBlock * D);
    for (int64_t i = i0; i < i1; ++i) {
      // Per (batch row, KV head) the query blocks go 0, n-1, 1, n-2, ...:
      // cheap and expensive blocks alternate, so any contiguous range of
      // items (what one thread gets) holds about the same causal work.
      const int64_t bh = i / nqb, w = i % nqb;
      const int64_t qb = w % 2 == 0 ? w / 2 : nqb - 1 - w / 2;
      const int64_t b = bh / Hkv, kvh = bh % Hkv;
      const int64_t t0 = qb * tq, nt = std::min(tq, T - t0), R = G * nt, Rp = (R + 7) / 8 * 8;
      // Row r = g nt + t: head kvh G + g, slot start + t0 + t. Padding rows are zero queries: finite scores,
      // an output nobody reads.
      std::fill(qt.begin(), qt.begin() + D * Rp, 0.0f);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t t = 0; t < nt; ++t) {
          const E* src = Q + b * q.stride(0) + (kvh * G + g) * q.stride(1) + (t0 + t) * q.stride(2);
          const int64_t r = g * nt + t;
          for (int64_t d = 0; d < D; ++d) qt[d * Rp + r] = to_f32(src[d]) * scale;
        }
      std::fill(of.begin(), of.begin() + Rp * D, 0.0f);
      std::fill(m.begin(), m.begin() + Rp, ninf);
      std::fill(l.begin(), l.begin() + Rp, 0.0f);
      const KT* Kh = K + b * k.stride(0) + kvh * k.stride(1);
      const KT* Vh = V + b * v.stride(0) + kvh * v.stride(1);
      const int64_t first = start + t0;         // the block's first slot
      const int64_t visible = first + nt;       // keys [0, visible) are seen by some row of the block
      for (int64_t j0 = 0; j0 < visible; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, visible - j0);
        const float *kb, *vb;
        int64_t ldk, ldv;
        if constexpr (wide) {
          kb = Kh + j0 * k.stride(2), ldk = k.stride(2);
          vb = Vh + j0 * v.stride(2), ldv = v.stride(2);
        } else {
          widen_rows(Kh + j0 * k.stride(2), k.stride(2), nk, D, kf.data());
          widen_rows(Vh + j0 * v.stride(2), v.stride(2), nk, D, vf.data());
          kb = kf.data(), ldk = D, vb = vf.data(), ldv = D;
        }
        float* S = st.data();
        small_gemm(nk, Rp, D, kb, ldk, 1, qt.data(), Rp, S, Rp, nullptr);  // St [nk, Rp]
        // Keys past a row's own slot (the diagonal blocks only): -inf, so exp gives 0. Every row sees key 0
        // in the first block, so its maximum is finite from then on.
        if (j0 + nk - 1 > first)
          for (int64_t r = 0; r < R; ++r)
            for (int64_t j = std::max<int64_t>(0, first + r % nt - j0 + 1); j < nk; ++j) S[j * Rp + r] = ninf;
        softmax_step(S, nk, Rp, m.data(), l.data(), c.data());
        small_gemm(Rp, D, nk, S, 1, Rp, vb, ldv, of.data(), D, c.data());  // O = diag(c) O + St^T V
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t r = g * nt + t;
          E* dst = O + ((b * H + kvh * G + g) * T + t0 + t) * D;
          const float inv = 1.0f / l[r];
          for (int64_t d = 0; d < D; ++d) dst[d] = E(of[r * D + d] * inv);
        }
    }
  });
}

}  // namespace
#endif  // FLASHBACK_X86_KERNELS

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  TORCH_CHECK(causal_attention_usable(q, k, v, start), "flashback::kernels::causal_attention: unsupported inputs");
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));  // [B, H, T, D]
#ifdef FLASHBACK_X86_KERNELS
  using BF = c10::BFloat16;
  const bool qf = q.scalar_type() == at::kFloat, kf = k.scalar_type() == at::kFloat;
  if (qf && kf)
    causal_attention_impl<float, float>(q, k, v, start, out);
  else if (qf)
    causal_attention_impl<float, BF>(q, k, v, start, out);
  else if (kf)
    causal_attention_impl<BF, float>(q, k, v, start, out);
  else
    causal_attention_impl<BF, BF>(q, k, v, start, out);
#endif
  return out;
}

}  // namespace flashback::kernels
