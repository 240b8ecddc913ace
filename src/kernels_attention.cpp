// Causal attention of many query rows (prefill chunks, FlashBack's
// re-encodes), flash-attention style on the CPU (see flashback/kernels.hpp).
//
// Work item: one KV head of one batch row and a block of query slots, with
// the G query heads that share the KV head folded into rows (row g * nt + t:
// head kvh * G + g, slot start + t0 + t), so each key block is read once for
// all of them. Keys stream in blocks of 64: the block's keys are packed
// transposed (Kt [D, 64], fp32) so that a register tile of 4 rows x 16 keys
// accumulates over D with broadcasts of the queries; then each row folds the
// block into its running maximum m, normaliser l and output o (the online
// softmax), and never holds more than 64 scores. Key blocks past a query
// block's last slot are never touched (causal), and within the diagonal block
// each row stops at its own slot.
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
constexpr int64_t kKeyBlock = 64;   // keys per block: Kt [D, 64] and a row's 64 scores stay in L1
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
using detail::hmax;
using detail::hsum;
using detail::load8;
using detail::to_f32;

// S[r, j] = Q[r] . Kt[:, j] for r < R and j < 16 nc.   Q: [R, D], Kt: [D, 64],
// S: [R, 64]. Four rows x 16 keys in 8 accumulators; a remaining row alone.
FB_AVX2 void score_block(const float* Q, int64_t R, int64_t D, const float* Kt, int64_t nc, float* S) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {
    const float* q0 = Q + r * D;
    for (int64_t c = 0; c < nc; ++c) {
      __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
      __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(), a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
      const float* kt = Kt + 16 * c;
      for (int64_t d = 0; d < D; ++d) {
        const __m256 k0 = _mm256_loadu_ps(kt + d * kKeyBlock), k1 = _mm256_loadu_ps(kt + d * kKeyBlock + 8);
        __m256 b = _mm256_broadcast_ss(q0 + d);
        a00 = _mm256_fmadd_ps(b, k0, a00);
        a01 = _mm256_fmadd_ps(b, k1, a01);
        b = _mm256_broadcast_ss(q0 + D + d);
        a10 = _mm256_fmadd_ps(b, k0, a10);
        a11 = _mm256_fmadd_ps(b, k1, a11);
        b = _mm256_broadcast_ss(q0 + 2 * D + d);
        a20 = _mm256_fmadd_ps(b, k0, a20);
        a21 = _mm256_fmadd_ps(b, k1, a21);
        b = _mm256_broadcast_ss(q0 + 3 * D + d);
        a30 = _mm256_fmadd_ps(b, k0, a30);
        a31 = _mm256_fmadd_ps(b, k1, a31);
      }
      float* s = S + r * kKeyBlock + 16 * c;
      _mm256_storeu_ps(s, a00);
      _mm256_storeu_ps(s + 8, a01);
      _mm256_storeu_ps(s + kKeyBlock, a10);
      _mm256_storeu_ps(s + kKeyBlock + 8, a11);
      _mm256_storeu_ps(s + 2 * kKeyBlock, a20);
      _mm256_storeu_ps(s + 2 * kKeyBlock + 8, a21);
      _mm256_storeu_ps(s + 3 * kKeyBlock, a30);
      _mm256_storeu_ps(s + 3 * kKeyBlock + 8, a31);
    }
  }
  for (; r < R; ++r) {
    const float* q0 = Q + r * D;
    for (int64_t c = 0; c < nc; ++c) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      const float* kt = Kt + 16 * c;
      for (int64_t d = 0; d < D; ++d) {
        const __m256 b = _mm256_broadcast_ss(q0 + d);
        a0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(kt + d * kKeyBlock), a0);
        a1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(kt + d * kKeyBlock + 8), a1);
      }
      _mm256_storeu_ps(S + r * kKeyBlock + 16 * c, a0);
      _mm256_storeu_ps(S + r * kKeyBlock + 16 * c + 8, a1);
    }
  }
}

// One row's online-softmax step over the first n (>= 1) keys of a block: s
// (64 scores, overwritten by the probabilities) against the running maximum
// m, normaliser l and output o [D]; V: the block's values [n, D] (row
// stride ldv, fp32).
FB_AVX2 void fold_row(float* s, int64_t n, const float* V, int64_t ldv, int64_t D, float& m, float& l, float* o) {
  const int64_t n8 = (n + 7) / 8 * 8;
  for (int64_t j = n; j < n8; ++j) s[j] = -std::numeric_limits<float>::infinity();  // exp gives 0 there
  __m256 mx = _mm256_loadu_ps(s);
  for (int64_t j = 8; j < n8; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
  const float m_new = std::max(m, hmax(mx));
  const float corr = std::isinf(m) ? 0.0f : std::exp(m - m_new);  // rescales what earlier blocks summed
  const __m256 mn = _mm256_set1_ps(m_new);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256 p = detail::exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), mn));
    _mm256_storeu_ps(s + j, p);
    sum = _mm256_add_ps(sum, p);
  }
  m = m_new;
  l = l * corr + hsum(sum);
  for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), _mm256_set1_ps(corr)));
  detail::weighted_rows(V, ldv, s, n, D, o, /*add=*/true);
}

// Kt[d, j] = K[j, d] for j < n, 0 for n <= j < 16 nc.   K: rows of D (stride ldk).
template <class KT>
FB_AVX2 void pack_keys(const KT* K, int64_t ldk, int64_t n, int64_t nc, int64_t D, float* Kt) {
  alignas(32) float row[8];
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; d += 8) {
      _mm256_store_ps(row, load8(K + j * ldk + d));
      for (int u = 0; u < 8; ++u) Kt[(d + u) * kKeyBlock + j] = row[u];
    }
  for (int64_t d = 0; d < D; ++d) std::fill(Kt + d * kKeyBlock + n, Kt + d * kKeyBlock + 16 * nc, 0.0f);
}

// Vf[j, :] = V[j, :] widened to fp32.
template <class KT>
FB_AVX2 void pack_values(const KT* V, int64_t ldv, int64_t n, int64_t D, float* Vf) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(Vf + j * D + d, load8(V + j * ldv + d));
}

// E: the queries' and the output's type; KT: the cache's (kv_dtype may differ).
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
  at::parallel_for(0, B * Hkv * nqb, 1, [&](int64_t i0, int64_t i1) {
    const int64_t rows = G * tq;
    std::vector<float> qf(rows * D), of(rows * D), sc(rows * kKeyBlock), m(rows), l(rows);
    std::vector<float> kt(D * kKeyBlock), vf(std::is_same_v<KT, float> ? 0 : kKeyBlock * D);
    for (int64_t i = i0; i < i1; ++i) {
      // Per (batch row, KV head) the query blocks go 0, n-1, 1, n-2, ...:
      // cheap and expensive blocks alternate, so any contiguous range of
      // items (what one thread gets) holds about the same causal work.
      const int64_t bh = i / nqb, w = i % nqb;
      const int64_t qb = w % 2 == 0 ? w / 2 : nqb - 1 - w / 2;
      const int64_t b = bh / Hkv, kvh = bh % Hkv;
      const int64_t t0 = qb * tq, nt = std::min(tq, T - t0), R = G * nt;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t t = 0; t < nt; ++t) {
          const E* src = Q + b * q.stride(0) + (kvh * G + g) * q.stride(1) + (t0 + t) * q.stride(2);
          float* dst = qf.data() + (g * nt + t) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = to_f32(src[d]) * scale;
        }
      std::fill(of.begin(), of.begin() + R * D, 0.0f);
      std::fill(m.begin(), m.begin() + R, -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.begin() + R, 0.0f);
      const KT* Kh = K + b * k.stride(0) + kvh * k.stride(1);
      const KT* Vh = V + b * v.stride(0) + kvh * v.stride(1);
      const int64_t visible = start + t0 + nt;  // keys [0, visible) are seen by some row of the block
      for (int64_t j0 = 0; j0 < visible; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, visible - j0), nc = (nk + 15) / 16;
        pack_keys(Kh + j0 * k.stride(2), k.stride(2), nk, nc, D, kt.data());
        const float* vb;
        int64_t ldv;
        if constexpr (std::is_same_v<KT, float>) {
          vb = Vh + j0 * v.stride(2);
          ldv = v.stride(2);
        } else {
          pack_values(Vh + j0 * v.stride(2), v.stride(2), nk, D, vf.data());
          vb = vf.data();
          ldv = D;
        }
        score_block(qf.data(), R, D, kt.data(), nc, sc.data());
        for (int64_t r = 0; r < R; ++r) {
          const int64_t sees = std::min(nk, start + t0 + r % nt - j0 + 1);  // keys j0 .. its own slot
          if (sees > 0) fold_row(sc.data() + r * kKeyBlock, sees, vb, ldv, D, m[r], l[r], of.data() + r * D);
        }
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
