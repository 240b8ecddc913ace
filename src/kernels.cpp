// AVX2 + FMA kernels for the decode step (see flashback/kernels.hpp).
//
// Weights and cached keys/values stay in their storage dtype (fp32 or bf16)
// and are widened to fp32 in registers: a bf16 value is the top half of an
// fp32, so widening is a 16-bit shift. Accumulation is fp32 throughout.
// Compiled with per-function target attributes, so the library itself needs
// no -mavx2 and still runs (on LibTorch's path) on CPUs without it.
#include "flashback/kernels.hpp"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "kernels_avx2.hpp"

#ifdef FLASHBACK_X86_KERNELS
#include <cpuid.h>
#endif

namespace flashback::kernels {

using detail::dtype_ok;
using detail::no_grad_needed;

bool cpu_has_avx2_fma() {
#ifdef FLASHBACK_X86_KERNELS
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// cpuid rather than __builtin_cpu_supports: clang 14 rejects "f16c" there.
bool detail::cpu_has_f16c() {
#ifdef FLASHBACK_X86_KERNELS
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
  }();
  return ok;
#else
  return false;
#endif
}

#ifdef FLASHBACK_X86_KERNELS
namespace {
// `iters` rounds of 12 independent 8-lane FMA chains, nothing read from memory: 12 chains in flight cover
// two FMA pipes of latency 4-5 cycles, as a GEMM's register tile does. The chains converge to 1 (no
// denormals); the sum is returned so nothing is optimised away.
FB_AVX2 float fma_chains(int64_t iters, float seed) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(seed + 0.01f * float(i));
  const __m256 m = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  return detail::hsum(s);
}
}  // namespace
#endif

double fma_peak_flops() {
#ifdef FLASHBACK_X86_KERNELS
  if (!cpu_has_avx2_fma()) return 0;
  constexpr int64_t kIters = int64_t(1) << 20;  // 2 x 8 x 12 x 2^20 = 201 MFLOP a thread, a few ms
  const int64_t threads = at::get_num_threads();
  double best = 0;
  std::vector<float> sink(static_cast<size_t>(threads));
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sink[size_t(i)] = fma_chains(kIters, float(i));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * 8 * 12 * double(kIters) * double(threads) / s);
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
#else
  return 0;
#endif
}

#ifdef FLASHBACK_X86_KERNELS
namespace {

using detail::hsum;
using detail::load8;
using detail::to_f32;

// The dots of one weight row w with R rows of x: y[r] = scale * sum_k w[k] x[r][k]. Each pair (weight row,
// x row) is summed in one fixed order, four accumulators over k, whatever R is and whichever other rows
// share the call: a row's result never depends on its neighbours (streams that share a forward equal
// their solo runs bit for bit). The R rows share each load of w.
template <class WT, int R>
FB_AVX2 inline void dot_tile(const WT* w, const float* const* x, int64_t K, float scale, float* const* y) {
  __m256 a[R][4];
  for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = a[r][2] = a[r][3] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    // bf16 weights: software prefetch 1 KiB ahead, ~10% more decode tokens/s than the hardware prefetcher
    // alone. fp32 weights: none; there the same prefetch cost 8-12% (decode steps of the 134M config at
    // 512 context, 2 threads, with and without alternating in one process: 51 vs 55 tok/s; 256 bytes
    // ahead ties with none, 512-2048 lose), as it does a plain fp32 reduction (25 vs 29 GB/s).
    if (sizeof(WT) == 2) _mm_prefetch(reinterpret_cast<const char*>(w + k) + 1024, _MM_HINT_T0);
    for (int j = 0; j < 4; ++j) {
      const __m256 wv = load8(w + k + 8 * j);
      for (int r = 0; r < R; ++r) a[r][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + k + 8 * j), a[r][j]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 wv = load8(w + k);
    for (int r = 0; r < R; ++r) a[r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + k), a[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3])));
    for (int64_t t = k; t < K; ++t) s = std::fma(to_f32(w[t]), x[r][t], s);
    *y[r] = scale * s;
  }
}

// Y[m * ldy + n] = scale * sum_k W[n * ldw + k] X[m * ldx + k] for n in [n0, n1), m < M. Weight row by
// weight row, so a thread reads its rows as one sequential stream (interleaving several weight rows
// measured ~2x slower in bf16: the hardware prefetcher follows one stream best); the x rows go by
// pairs, the row in L1 for every pair after the first.
template <class WT>
FB_AVX2 void dot_rows(const WT* W, int64_t ldw, const float* X, int64_t ldx, int64_t M, int64_t K, float scale,
                      float* Y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const WT* w = W + n * ldw;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
      const float* x[2] = {X + m * ldx, X + (m + 1) * ldx};
      float* y[2] = {Y + m * ldy + n, Y + (m + 1) * ldy + n};
      dot_tile<WT, 2>(w, x, K, scale, y);
    }
    if (m < M) {
      const float* x[1] = {X + m * ldx};
      float* y[1] = {Y + m * ldy + n};
      dot_tile<WT, 1>(w, x, K, scale, y);
    }
  }
}

// ys[i] = x W_i^T for several matrices of one input, in one parallel region (detail::joint_rows).
template <class WT>
void gemv_impl(const std::vector<const at::Tensor*>& ws, const float* x, int64_t M, const std::vector<float*>& ys) {
  std::vector<int64_t> rows;
  for (const at::Tensor* w : ws) rows.push_back(w->size(0));
  const int64_t K = ws.front()->size(1);
  detail::joint_rows(rows, 64, [&](size_t i, int64_t n0, int64_t n1) {
    dot_rows(ws[i]->data_ptr<WT>(), ws[i]->stride(0), x, K, M, K, 1.0f, ys[i], rows[i], n0, n1);
  });
}

template <class KT>
void attention_impl(const float* q, const at::Tensor& k, const at::Tensor& v, int64_t B, int64_t H, float* scores,
                    int64_t S, float* out, int64_t D) {
  const int64_t Hkv = k.size(1), G = H / Hkv;
  const KT* K = k.data_ptr<KT>();
  const KT* V = v.data_ptr<KT>();
  const float scale = 1.0f / std::sqrt(float(D));
  // scores[b, h, s] = q[b, h] . k[b, h / G, s] / sqrt(D)
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, g = (i % H) / G;
      dot_rows(K + b * k.stride(0) + g * k.stride(1), k.stride(2), q + i * D, D, 1, D, scale, scores + i * S, S, 0, S);
    }
  });
  // probs = softmax over s (LibTorch's vectorized kernel, in place)
  at::Tensor sc = at::from_blob(scores, {B * H, S}, at::kFloat);
  at::Tensor probs = at::softmax(sc, -1);  // [B*H, S]
  const float* P = probs.data_ptr<float>();
  // out[b, h] = sum_s probs[b, h, s] v[b, h / G, s]
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, g = (i % H) / G;
      detail::weighted_rows(V + b * v.stride(0) + g * v.stride(1), v.stride(2), P + i * S, S, D, out + i * D, false);
    }
  });
}

}  // namespace
#endif  // FLASHBACK_X86_KERNELS

bool gemv_usable(const at::Tensor& w, const at::Tensor& x) {
  return cpu_has_avx2_fma() && w.defined() && x.defined() && w.is_cpu() && x.is_cpu() && w.dim() == 2 && w.stride(1) == 1 &&
         x.dim() >= 1 && x.size(-1) == w.size(1) && x.size(-1) > 0 && x.numel() > 0 &&
         x.numel() / x.size(-1) <= kMaxKernelRows && dtype_ok(w) && dtype_ok(x) && no_grad_needed({&w, &x});
}

namespace {
// x as contiguous fp32: the tensor's own data when it already is, else a copy
// in `buf`.
const float* as_f32(const at::Tensor& x, std::vector<float>& buf) {
  if (x.scalar_type() == at::kFloat && x.is_contiguous()) return x.data_ptr<float>();
  at::Tensor c = x.contiguous();
  buf.resize(static_cast<size_t>(c.numel()));
  if (c.scalar_type() == at::kFloat) {
    std::copy(c.data_ptr<float>(), c.data_ptr<float>() + c.numel(), buf.begin());
  } else {
    const c10::BFloat16* p = c.data_ptr<c10::BFloat16>();
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(p[i]);
  }
  return buf.data();
}

// Writes fp32 values into `out` (float32 or bfloat16, contiguous).
void store(const float* v, at::Tensor& out) {
  if (out.scalar_type() == at::kFloat) {
    std::copy(v, v + out.numel(), out.data_ptr<float>());
  } else {
    c10::BFloat16* p = out.data_ptr<c10::BFloat16>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] = c10::BFloat16(v[i]);
  }
}
}  // namespace

std::vector<at::Tensor> gemv(const std::vector<const at::Tensor*>& ws, const at::Tensor& x) {
  TORCH_CHECK(!ws.empty(), "flashback::kernels::gemv: no matrices");
  for (const at::Tensor* w : ws)
    TORCH_CHECK(gemv_usable(*w, x) && w->scalar_type() == ws.front()->scalar_type(),
                "flashback::kernels::gemv: unsupported inputs");
  std::vector<float> xbuf;
  const int64_t M = x.numel() / x.size(-1);
  const float* xf = as_f32(x, xbuf);  // [M, K]
  std::vector<at::Tensor> ys;
  std::vector<std::vector<float>> ybufs(ws.size());
  std::vector<float*> yfs;
  for (size_t i = 0; i < ws.size(); ++i) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = ws[i]->size(0);
    ys.push_back(at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous)));  // [..., N_i]
    // fp32 output is written in place; bf16 goes through an fp32 buffer.
    if (ys[i].scalar_type() != at::kFloat) ybufs[i].resize(static_cast<size_t>(M * ws[i]->size(0)));
    yfs.push_back(ys[i].scalar_type() == at::kFloat ? ys[i].data_ptr<float>() : ybufs[i].data());  // [M, N_i]
  }
#ifdef FLASHBACK_X86_KERNELS
  if (ws.front()->scalar_type() == at::kFloat)
    gemv_impl<float>(ws, xf, M, yfs);
  else
    gemv_impl<c10::BFloat16>(ws, xf, M, yfs);
#endif
  for (size_t i = 0; i < ws.size(); ++i)
    if (ys[i].scalar_type() != at::kFloat) store(yfs[i], ys[i]);
  return ys;
}

at::Tensor gemv(const at::Tensor& w, const at::Tensor& x) { return gemv({&w}, x).front(); }

bool decode_attention_usable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!cpu_has_avx2_fma() || q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  const int64_t D = q.size(3);
  return q.is_cpu() && k.is_cpu() && v.is_cpu() && q.size(2) == 1 && D % 8 == 0 && k.size(3) == D &&
         v.size(3) == D && k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(1) > 0 &&
         q.size(1) % k.size(1) == 0 && k.size(2) > 0 && k.stride(3) == 1 && v.stride(3) == 1 &&
         k.scalar_type() == v.scalar_type() && v.strides() == k.strides() && dtype_ok(q) && dtype_ok(k) &&
         no_grad_needed({&q, &k, &v});
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(decode_attention_usable(q, k, v), "flashback::kernels::decode_attention: unsupported inputs");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), S = k.size(2);
  std::vector<float> qbuf, obuf;
  const float* qf = as_f32(q, qbuf);                     // [B, H, 1, D]
  at::Tensor scores = at::empty({B, H, S}, at::kFloat);  // [B, H, S]
  at::Tensor out = at::empty({B, H, 1, D}, q.options().memory_format(at::MemoryFormat::Contiguous));  // [B, H, 1, D]
  // fp32 output is written in place; bf16 goes through an fp32 buffer.
  if (out.scalar_type() != at::kFloat) obuf.resize(static_cast<size_t>(B * H * D));
  float* of = out.scalar_type() == at::kFloat ? out.data_ptr<float>() : obuf.data();
#ifdef FLASHBACK_X86_KERNELS
  if (k.scalar_type() == at::kFloat)
    attention_impl<float>(qf, k, v, B, H, scores.data_ptr<float>(), S, of, D);
  else
    attention_impl<c10::BFloat16>(qf, k, v, B, H, scores.data_ptr<float>(), S, of, D);
#endif
  if (out.scalar_type() != at::kFloat) store(of, out);
  return out;
}

// ---------------------------------------------------------------- RMSNorm
bool rms_norm_usable(const at::Tensor& x, const at::Tensor& w) {
  return x.defined() && w.defined() && x.is_cpu() && w.is_cpu() && x.dim() >= 1 && w.dim() == 1 &&
         x.size(-1) == w.size(0) && dtype_ok(x) && dtype_ok(w) && no_grad_needed({&x, &w});
}

namespace {
template <class T, class WT>
void rms_norm_impl(const T* x, const WT* w, int64_t rows, int64_t C, float eps, T* out) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;
      T* o = out + r * C;
      float ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += static_cast<float>(xr[c]) * static_cast<float>(xr[c]);
      const float inv = 1.0f / std::sqrt(ss / float(C) + eps);
      // As the reference: normalise, round to the activation dtype, scale.
      for (int64_t c = 0; c < C; ++c) o[c] = T(static_cast<float>(w[c]) * static_cast<float>(T(static_cast<float>(xr[c]) * inv)));
    }
  });
}
}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(rms_norm_usable(x, w), "flashback::kernels::rms_norm: unsupported inputs");
  at::Tensor xc = x.contiguous();
  at::Tensor wc = w.to(x.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t C = x.size(-1), rows = x.numel() / C;
  if (x.scalar_type() == at::kFloat)
    rms_norm_impl(xc.data_ptr<float>(), wc.data_ptr<float>(), rows, C, float(eps), out.data_ptr<float>());
  else
    rms_norm_impl(xc.data_ptr<c10::BFloat16>(), wc.data_ptr<c10::BFloat16>(), rows, C, float(eps),
                  out.data_ptr<c10::BFloat16>());
  return out;
}

// ---------------------------------------------------------------- RoPE
bool rotary_usable(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (!x.defined() || x.dim() != 4 || !cos.defined() || !sin.defined()) return false;
  const int64_t B = x.size(0), T = x.size(2), D = x.size(3);
  const bool table_ok = cos.sizes() == sin.sizes() && cos.scalar_type() == at::kFloat &&
                        sin.scalar_type() == at::kFloat && cos.is_cpu() && sin.is_cpu() &&
                        ((cos.dim() == 2 && cos.size(0) == T) || (cos.dim() == 3 && cos.size(0) == B && cos.size(1) == T)) &&
                        cos.size(-1) == D;
  return table_ok && x.is_cpu() && D % 2 == 0 && dtype_ok(x) && no_grad_needed({&x});
}

namespace {
template <class T>
void rotary_impl(const at::Tensor& x, const float* cos, const float* sin, int64_t cos_batch_stride, T* out) {
  const int64_t B = x.size(0), H = x.size(1), T_ = x.size(2), D = x.size(3), half = D / 2;
  const T* xp = x.data_ptr<T>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2), s3 = x.stride(3);
  at::parallel_for(0, B * H * T_, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (H * T_), h = (i / T_) % H, t = i % T_;
      const T* xr = xp + b * s0 + h * s1 + t * s2;
      const float* c = cos + b * cos_batch_stride + t * D;
      const float* s = sin + b * cos_batch_stride + t * D;
      T* o = out + i * D;
      for (int64_t d = 0; d < half; ++d) {
        const float a = static_cast<float>(xr[d * s3]), e = static_cast<float>(xr[(d + half) * s3]);
        o[d] = T(a * c[d] - e * s[d]);                // x1 cos - x2 sin
        o[d + half] = T(e * c[d + half] + a * s[d + half]);  // x2 cos + x1 sin
      }
    }
  });
}
}  // namespace

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(rotary_usable(x, cos, sin), "flashback::kernels::rotary: unsupported inputs");
  at::Tensor c = cos.contiguous(), s = sin.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));  // [B, H, T, D]
  const int64_t cb = c.dim() == 3 ? c.stride(0) : 0;
  if (x.scalar_type() == at::kFloat)
    rotary_impl<float>(x, c.data_ptr<float>(), s.data_ptr<float>(), cb, out.data_ptr<float>());
  else
    rotary_impl<c10::BFloat16>(x, c.data_ptr<float>(), s.data_ptr<float>(), cb, out.data_ptr<c10::BFloat16>());
  return out;
}

// ---------------------------------------------------------------- SwiGLU
bool silu_mul_usable(const at::Tensor& gate, const at::Tensor& up) {
  return cpu_has_avx2_fma() && gate.defined() && up.defined() && gate.is_cpu() && up.is_cpu() &&
         gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type() && dtype_ok(gate) &&
         no_grad_needed({&gate, &up});
}

#ifdef FLASHBACK_X86_KERNELS
namespace {
// silu(a) u = a u sigmoid(a), with e = exp(-|a|) <= 1 so nothing overflows:
// sigmoid(a) = 1 / (1 + e) for a >= 0 and e / (1 + e) below.
FB_AVX2 inline __m256 silu_mul8(__m256 a, __m256 u) {
  const __m256 abs_a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
  const __m256 e = detail::exp8_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), abs_a));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 neg = _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 sig = _mm256_div_ps(_mm256_blendv_ps(one, e, neg), _mm256_add_ps(one, e));
  return _mm256_mul_ps(_mm256_mul_ps(a, sig), u);
}

// Every element, the tail's included, goes through the same 8-lane
// arithmetic, so a row rounds the same whatever the call's length: cache
// reuse and recomputation stay equal however the rows are split. Blocks
// [b0, b1) of 8 elements out of n.
template <class T>
FB_AVX2 void silu_mul_blocks(const T* g, const T* u, T* out, int64_t n, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i = 8 * b;
    if (i + 8 <= n) {
      detail::store8(out + i, silu_mul8(detail::load8(g + i), detail::load8(u + i)));
    } else {
      T gt[8] = {}, ut[8] = {}, ot[8];
      std::copy(g + i, g + n, gt);
      std::copy(u + i, u + n, ut);
      detail::store8(ot, silu_mul8(detail::load8(gt), detail::load8(ut)));
      std::copy(ot, ot + (n - i), out + i);
    }
  }
}

template <class T>
void silu_mul_impl(const T* g, const T* u, T* out, int64_t n) {
  at::parallel_for(0, (n + 7) / 8, 2048, [&](int64_t b0, int64_t b1) { silu_mul_blocks(g, u, out, n, b0, b1); });
}
}  // namespace
#endif

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(silu_mul_usable(gate, up), "flashback::kernels::silu_mul: unsupported inputs");
  at::Tensor g = gate.contiguous(), u = up.contiguous();
  at::Tensor out = at::empty_like(g, at::MemoryFormat::Contiguous);
#ifdef FLASHBACK_X86_KERNELS
  if (g.scalar_type() == at::kFloat)
    silu_mul_impl(g.data_ptr<float>(), u.data_ptr<float>(), out.data_ptr<float>(), g.numel());
  else
    silu_mul_impl(g.data_ptr<c10::BFloat16>(), u.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>(), g.numel());
#endif
  return out;
}

}  // namespace flashback::kernels
