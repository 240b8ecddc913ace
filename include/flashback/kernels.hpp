// Hand-written CPU kernels for the one-token decode step, where LibTorch's
// generic paths fall short of this machine's memory bandwidth:
//
//   gemv              y = W x for one row: bf16 (or fp32) weights read once,
//                     widened to fp32 in registers, fp32 accumulation (AVX2 +
//                     FMA). LibTorch 1.13 reaches ~65-90% of the streaming
//                     bandwidth in fp32 (BLAS sgemv) and ~2% in bf16.
//   decode_attention  one query row per head against the cached keys and
//                     values (fp32 or bf16), scores and weighted sum with the
//                     same kernels; no mask is needed (the new token sees
//                     every cached slot).
//
// Plus fused RMSNorm, rotary embedding and SwiGLU gate, which replace ~8, ~7
// and 2 small LibTorch ops each: at one token per step, per-op overhead is what remains
// once the weights stream at bandwidth.
//
// All are inference-only: each *_usable() refuses inputs that need an
// autograd graph. gemv and decode_attention are AVX2 + FMA code (checked at
// run time: cpu_has_avx2_fma()); the fused RMSNorm, RoPE and SwiGLU gate are
// portable C++ and run on any CPU. None is called directly by the model:
// Ops (ops.hpp) decides, per model, whether a kernel runs.
#pragma once

#include <ATen/ATen.h>

namespace flashback::kernels {

// The CPU has AVX2 + FMA (checked once at run time).
bool cpu_has_avx2_fma();

// True when gemv(w, x) can run: an AVX2 + FMA CPU, w [N, K] CPU
// float32/bfloat16 with unit stride along K, x a single row of K
// float32/bfloat16 values, no gradient needed.
bool gemv_usable(const at::Tensor& w, const at::Tensor& x);

// y = W x.   w: [N, K], x: [..., K] with one row -> [..., N] in x's dtype.
at::Tensor gemv(const at::Tensor& w, const at::Tensor& x);

// True when decode_attention(q, k, v) can run (an AVX2 + FMA CPU and the
// shapes below).
bool decode_attention_usable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Causal attention of one new query per head over all S cached slots.
// q: [B, H, 1, D], k, v: [B, Hkv, S, D] (unit stride along D; H a multiple of
// Hkv) -> [B, H, 1, D] in q's dtype. softmax(q k^T / sqrt(D)) v, in fp32.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Fused RMSNorm (inference): w * round(x / rms(x)), fp32 statistics.
// x: [..., C], w: [C] -> [..., C] in x's dtype.
bool rms_norm_usable(const at::Tensor& x, const at::Tensor& w);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);

// Fused rotary embedding (inference): x * cos + rotate_half(x) * sin in fp32,
// rounded once. x: [B, H, T, D] (any strides), cos, sin: fp32 [T, D] or
// [B, T, D] -> contiguous [B, H, T, D] in x's dtype.
bool rotary_usable(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Fused SwiGLU gate (inference): silu(gate) * up in fp32, rounded once.
// gate, up: same shape and dtype -> that shape.
bool silu_mul_usable(const at::Tensor& gate, const at::Tensor& up);
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

}  // namespace flashback::kernels
