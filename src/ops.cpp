// Ops: each function first asks whether a hand-written kernel applies, then
// falls back to the LibTorch reference written below it.
#include "flashback/ops.hpp"
#include "flashback/torch_compat.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "flashback/error.hpp"
#include "flashback/kernels.hpp"
#include "flashback/quantized.hpp"

namespace flashback {

Kernels parse_kernels(const std::string& name) {
  if (name == "auto") return Kernels::Auto;
  if (name == "libtorch") return Kernels::LibTorch;
  throw InvalidArgument("unknown kernels '" + name + "' (auto, libtorch)");
}

const char* kernels_name(Kernels k) { return k == Kernels::Auto ? "auto" : "libtorch"; }

bool Ops::kernels_on() const { return kernels_ == Kernels::Auto; }

// ---------------------------------------------------------------- linear
at::Tensor Ops::linear(const at::Tensor& x, const at::Tensor& w) const {
  // A few rows (decode, or several streams' decode rows at once): the kernel
  // reads the weights once for all rows near the memory bandwidth (LibTorch's
  // bf16 gemv runs at ~2% of it here), and a row's result never depends on the
  // rows beside it.
  if (kernels_on() && kernels::gemv_usable(w, x)) return kernels::gemv(w, x);
  // One fp32 row without the kernel: BLAS gemv, several times faster than a 1-row GEMM.
  if (x.numel() == x.size(-1) && (x.scalar_type() == at::kFloat || !x.is_cpu())) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    return at::mv(w, x.reshape({-1})).view(shape);  // [..., out]
  }
  // LibTorch 1.13's CPU bf16 GEMM is ~100x slower than its fp32 one without
  // AVX-512 BF16: several bf16 rows run as one fp32 GEMM.
  if (x.is_cpu() && x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16)
    return at::linear(x.to(at::kFloat), w.to(at::kFloat)).to(at::kBFloat16);  // [..., out]
  return at::linear(x, w);  // [..., out]
}

std::vector<at::Tensor> Ops::linear(const at::Tensor& x, const std::vector<const at::Tensor*>& ws) const {
  const bool fused = kernels_on() && !ws.empty() && std::all_of(ws.begin(), ws.end(), [&](const at::Tensor* w) {
    return kernels::gemv_usable(*w, x) && w->scalar_type() == ws.front()->scalar_type();
  });
  if (fused) return kernels::gemv(ws, x);
  std::vector<at::Tensor> ys;
  for (const at::Tensor* w : ws) ys.push_back(linear(x, *w));
  return ys;
}

at::Tensor Ops::quantized_linear(const at::Tensor& x, const QuantizedMatrix& w) const {
  // A few rows (decode): integer dots over the blocks as stored.
  if (kernels_on() && kernels::quantized_linear_usable(x, w)) return kernels::quantized_linear(x, w);
  // More rows, another CPU, autograd: the dequantized matrix through LibTorch's GEMM, in fp32.
  return at::linear(x.to(at::kFloat), dequantize_matrix(w).to(x.device())).to(x.scalar_type());  // [..., out]
}

std::vector<at::Tensor> Ops::quantized_linear(const at::Tensor& x, const std::vector<const QuantizedMatrix*>& ws) const {
  const bool fused = kernels_on() && std::all_of(ws.begin(), ws.end(), [&](const QuantizedMatrix* w) {
    return kernels::quantized_linear_usable(x, *w);
  });
  if (fused) return kernels::quantized_linear(x, ws);
  std::vector<at::Tensor> ys;
  for (const QuantizedMatrix* w : ws) ys.push_back(quantized_linear(x, *w));
  return ys;
}

// ---------------------------------------------------------------- RMSNorm
at::Tensor Ops::rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) const {
  if (kernels_on() && kernels::rms_norm_usable(x, w)) return kernels::rms_norm(x, w, eps);
  at::Tensor xf = x.to(at::kFloat);                                            // [..., C]
  at::Tensor inv_rms = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);  // [..., 1]
  return w * (xf * inv_rms).to(x.scalar_type());                               // [..., C]
}

// ---------------------------------------------------------------- RoPE
namespace {
// [x1, x2] -> [-x2, x1] over the last dim.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
}  // namespace

std::pair<at::Tensor, at::Tensor> Ops::rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                              const at::Tensor& sin) const {
  if (kernels_on() && kernels::rotary_usable(q, cos, sin) && kernels::rotary_usable(k, cos, sin))
    return {kernels::rotary(q, cos, sin), kernels::rotary(k, cos, sin)};
  // cos/sin: [T, D] -> broadcast over [B, H]; [B, T, D] -> [B, 1, T, D].
  at::Tensor c = (cos.dim() == 3 ? cos.unsqueeze(1) : cos).to(q.scalar_type());
  at::Tensor s = (sin.dim() == 3 ? sin.unsqueeze(1) : sin).to(q.scalar_type());
  return {q * c + rotate_half(q) * s, k * c + rotate_half(k) * s};  // [B, H, T, D], [B, Hkv, T, D]
}

// ---------------------------------------------------------------- attention
namespace {
// Whether FlashAttention-2 runs on each GPU, asked once per device with a one-row call: it refuses GPUs
// before sm80 and LibTorch builds without it, and sdpa then serves.
bool flash_attention_runs_on(const at::Tensor& q) {
  constexpr int kDevices = 64;
  static std::array<std::once_flag, kDevices> asked;
  static std::array<bool, kDevices> runs{};
  const int i = q.device().index();
  if (i < 0 || i >= kDevices) return false;
  std::call_once(asked[i], [&] {
    try {
      const at::Tensor x = at::zeros({1, 1, 1, q.size(3)}, q.options());  // [1, 1, 1, D]
      (void)compat::flash_attention(x, x, x, /*causal=*/false);
      runs[i] = true;
    } catch (const c10::Error&) {
      runs[i] = false;
    }
  });
  return runs[i];
}

// FlashAttention-2 applies to these queries: a GPU, fp16/bf16, a head size it takes, and the rows being
// the newest slots of the keys (its causal rule; every call of the model's forward is so).
bool flash_attention_applies(const at::Tensor& q, const at::Tensor& k, int64_t start) {
  if (!compat::kHasFlashAttention || !q.is_cuda() || !compat::flash_attention_enabled()) return false;
  const at::ScalarType dt = q.scalar_type();
  const int64_t D = q.size(3);
  return (dt == at::kHalf || dt == at::kBFloat16) && k.scalar_type() == dt && D % 8 == 0 && D <= 256 &&
         start + q.size(2) == k.size(2) && q.size(1) % k.size(1) == 0 && flash_attention_runs_on(q);
}
}  // namespace

at::Tensor Ops::attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) const {
  // One new token (decode): the kernel reads each cached key and value once,
  // in its storage dtype.
  const bool decode = q.size(2) == 1 && start + 1 == k.size(2);
  if (kernels_on() && decode && kernels::decode_attention_usable(q, k, v)) return kernels::decode_attention(q, k, v);
  // Several rows (prefill chunks, re-encodes): the flash-style kernel never
  // holds a score matrix and skips the blocks the causal mask hides.
  if (kernels_on() && kernels::causal_attention_usable(q, k, v, start)) return kernels::causal_attention(q, k, v, start);
  // LibTorch 2.x's fused attention: off the CPU always; on it, for several query rows (its flash kernel
  // measured 1.2-2.2x faster than the blocks below at T = 16..2048, fp32 and bf16: docs/performance.md);
  // one decode row keeps the kernel above.
  // A cache kept in another dtype (kv_dtype) is converted to the queries' for LibTorch's ops (the kernels
  // above read it as it is stored).
  const at::Tensor kq = k.to(q.scalar_type()), vq = v.to(q.scalar_type());  // [B, Hkv, S, D]
  // On a GPU, FlashAttention-2 by name: sdpa would pick cuDNN's attention first on Hopper and Blackwell,
  // which builds an execution plan for every new key length (~60 ms each, once per shape): every decode
  // step and every re-encode brings a new one (docs/performance.md, "On a GPU").
  if (flash_attention_applies(q, kq, start)) return compat::flash_attention(q, kq, vq, /*causal=*/q.size(2) > 1);
  if (compat::kHasSdpa && (!q.is_cpu() || q.size(2) > 1)) return fused_causal_attention(q, kq, vq, start);
  return grouped_causal_attention(q, kq, vq, start);
}

namespace {
// Rows of queries per block: at most kQueryBlock, and few enough that the
// scores of one block, [B, Hkv, G*Tb, S] in fp32, stay under kScoreBlockBytes
// (a long prefill never holds a T x S score matrix per head). Block i only
// scores the keys it can see, so causal prefill skips about half of the
// masked work (T = 512: 56% of the full square).
constexpr int64_t kScoreBlockBytes = int64_t(32) << 20;
constexpr int64_t kQueryBlock = 64;

// softmax(q k^T / sqrt(D) + causal mask) v for the queries of slots
// [start, start + T). q: [B, H, T, D], k, v: [B, Hkv, S, D] -> [B, H, T, D].
at::Tensor attention_block(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), G = H / Hkv;
  // Heads h = g_kv * G + g share KV head g_kv: fold the G query heads of a
  // group into the row dimension instead of repeating K and V.
  at::Tensor qg = q.reshape({B, Hkv, G * T, D}) * (1.0 / std::sqrt(double(D)));  // [B, Hkv, G*T, D]
  at::Tensor scores = at::matmul(qg, k.transpose(-1, -2));                         // [B, Hkv, G*T, S]
  scores = scores.to(at::kFloat).view({B, Hkv, G, T, S});                          // [B, Hkv, G, T, S]
  if (T > 1 || start + T < S) {
    // Query at slot start + i may see key slots j <= start + i.
    auto idx = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor qslot = at::arange(start, start + T, idx).unsqueeze(1);  // [T, 1]
    at::Tensor kslot = at::arange(S, idx).unsqueeze(0);                 // [1, S]
    scores.masked_fill_(kslot > qslot, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());  // [B, Hkv, G, T, S]
  at::Tensor out = at::matmul(probs.view({B, Hkv, G * T, S}), v);  // [B, Hkv, G*T, D]
  return out.view({B, H, T, D});                                   // [B, H, T, D]
}
}  // namespace

// Query heads share KV heads through the kernel itself where LibTorch can (2.5 on: a causal prefill keeps
// its is_causal fast path), else folded into rows as in attention_block (row g * T + t of KV head n is
// query head n * G + g at slot start + t).
at::Tensor fused_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), G = H / Hkv;
  const bool fold = G > 1 && !compat::kSdpaGqa;
  at::Tensor qg = fold ? q.reshape({B, Hkv, G * T, D}) : q;  // [B, Hkv, G*T, D] or [B, H, T, D]
  if (start == 0 && T == S && !fold) return compat::sdpa(qg, k, v, {}, /*causal=*/true);  // [B, H, T, D]
  at::Tensor mask;  // none: the last T slots see every key (one decode row)
  if (T > 1 || start + T < S) {
    auto idx = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor qslot = at::arange(start, start + T, idx);
    if (fold) qslot = qslot.repeat({G});
    mask = at::arange(S, idx).unsqueeze(0) <= qslot.unsqueeze(1);  // [G*T or T, S]
  }
  return compat::sdpa(qg, k, v, mask, /*causal=*/false).view({B, H, T, D});  // [B, H, T, D]
}

at::Tensor grouped_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2);
  const int64_t S = k.size(2);
  // LibTorch 1.13's CPU half/bf16 matmuls are far slower than fp32: compute in fp32.
  if (q.is_cpu() && q.scalar_type() != at::kFloat)
    return grouped_causal_attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), start).to(q.scalar_type());
  const int64_t rows =
      std::clamp<int64_t>(kScoreBlockBytes / (B * H * S * int64_t(sizeof(float))), 1, kQueryBlock);
  if (T <= rows) return attention_block(q, k, v, start);
  // Long prefill: query blocks of `rows` slots; block i sees keys [0, start + t0 + Tb).
  std::vector<at::Tensor> outs;
  for (int64_t t0 = 0; t0 < T; t0 += rows) {
    const int64_t tb = std::min(rows, T - t0), s = start + t0 + tb;
    outs.push_back(attention_block(q.narrow(2, t0, tb), k.narrow(2, 0, s), v.narrow(2, 0, s), start + t0));
  }
  return at::cat(outs, 2);  // [B, H, T, D]
}

// ---------------------------------------------------------------- SwiGLU
at::Tensor Ops::silu_mul(const at::Tensor& gate, const at::Tensor& up) const {
  // One vectorised pass instead of silu's and the product's (and their two
  // outputs); a row rounds the same in a call of any length.
  if (kernels_on() && kernels::silu_mul_usable(gate, up))
    return kernels::silu_mul(gate, up);  // [..., F]
  return at::silu(gate) * up;           // [..., F]
}

}  // namespace flashback
