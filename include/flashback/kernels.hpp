// Hand-written CPU kernels where LibTorch's generic paths fall short of this
// machine: the one-token decode step (memory bandwidth) and causal attention
// over many query rows (the long prefills and FlashBack's re-encodes):
//
//   gemv              y = x W^T for up to kMaxKernelRows rows: bf16 or fp32
//                     weights read once for all rows, widened to fp32 in
//                     registers, fp32 accumulation (AVX2 + FMA), each row's
//                     result independent of the other rows. LibTorch 1.13
//                     reaches ~65-90% of the streaming bandwidth in fp32
//                     (BLAS sgemv) and ~2% in bf16.
//   decode_attention  one query row per head against the cached keys and
//                     values (fp32 or bf16), scores and weighted sum with the
//                     same kernels; no mask is needed (the new token sees
//                     every cached slot).
//   causal_attention  many query rows, flash-attention style: key blocks
//                     and values read in place through one 6 x 16 FMA tile,
//                     the softmax taken online (no T x S score matrix), key
//                     blocks no query of a block can see skipped.
//
// Plus fused RMSNorm, rotary embedding and SwiGLU gate, which replace ~8, ~7
// and 2 small LibTorch ops each: at one token per step, per-op overhead is what remains
// once the weights stream at bandwidth.
//
// All are inference-only: each *_usable() refuses inputs that need an
// autograd graph. gemv and decode_attention are AVX2 + FMA code (checked at
// run time: cpu_has_avx2_fma()), as is the SwiGLU gate; the fused RMSNorm and
// RoPE are portable C++ and run on any CPU. None is called directly by the model:
// Ops (ops.hpp) decides, per model, whether a kernel runs.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace flashback {
struct QuantizedMatrix;
}

namespace flashback::kernels {

// The CPU has AVX2 + FMA (checked once at run time).
bool cpu_has_avx2_fma();

// The fp32 FLOP/s this CPU sustains on LibTorch's intra-op threads with 8-lane FMAs and nothing read from
// memory (best of 5 short runs): the ceiling a GEMM here can approach. 0 without AVX2 + FMA. For
// benchmarks' reports (bench prefill), not for decisions.
double fma_peak_flops();

// The most rows the per-row kernels (gemv, quantized_linear) take in one call. A row's
// result from them is the same bits whatever else shares the call, which is what lets several sequences'
// decode rows share one forward (LlamaForCausalLMImpl::hidden_states over several sequences) and each
// still equal its solo run; more rows go to LibTorch's GEMM.
constexpr int64_t kMaxKernelRows = 8;

// True when gemv(w, x) can run: an AVX2 + FMA CPU, w [N, K] CPU
// float32/bfloat16 with unit stride along K, x at most kMaxKernelRows rows
// of K float32/bfloat16 values, no gradient needed.
bool gemv_usable(const at::Tensor& w, const at::Tensor& x);

// y = x W^T.   w: [N, K], x: [..., K] (at most kMaxKernelRows rows) -> [..., N] in x's dtype.
at::Tensor gemv(const at::Tensor& w, const at::Tensor& x);
// The same for several matrices of one input and one dtype (q, k, v; gate, up), each usable with x: one
// parallel region for all of them.
std::vector<at::Tensor> gemv(const std::vector<const at::Tensor*>& ws, const at::Tensor& x);

// True when decode_attention(q, k, v) can run (an AVX2 + FMA CPU and the
// shapes below).
bool decode_attention_usable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Causal attention of one new query per head over all S cached slots.
// q: [B, H, 1, D], k, v: [B, Hkv, S, D] (unit stride along D; H a multiple of
// Hkv; k and v of one dtype, maybe not q's) -> [B, H, 1, D] in q's dtype.
// softmax(q k^T / sqrt(D)) v, in fp32.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// True when causal_attention(q, k, v, start) can run: an AVX2 + FMA CPU, the
// shapes below, q and k, v each float32 or bfloat16 (k and v of one dtype,
// which may differ from q's: a cache kept in bf16 for an fp32 model), unit
// stride along D.
bool causal_attention_usable(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start);

// Causal attention of the queries of slots [start, start + T) over the keys
// and values of slots [0, S), S = start + T: query slot i sees key slots
// j <= i. q: [B, H, T, D], k, v: [B, Hkv, S, D] (any strides but along D; H a
// multiple of Hkv; D a multiple of 8, at most 512) -> contiguous [B, H, T, D]
// in q's dtype. softmax(q k^T / sqrt(D)) v with fp32 arithmetic throughout.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start);

// True when quantized_linear(x, w) can run: an AVX2 + FMA + F16C CPU, x of
// at most kMaxKernelRows rows (float32/bfloat16, no gradient), w a Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, Q4_K or Q6_K matrix (quantized.hpp) with x's last size as its columns.
bool quantized_linear_usable(const at::Tensor& x, const QuantizedMatrix& w);

// y = x W^T with W in its blocks: each row of x is quantized to 8 bits as
// llama.cpp's CPU backend quantizes it for that type, in blocks of 32 for the
// 32-value types (Q8_0/Q8_1, fp16 scales) and of 256 for the K-quants (Q8_K:
// a super-block summed in integers), and every block product is an integer
// dot, scaled once: llama.cpp's vec_dot to fp32 summation order.
// x: [..., K] -> [..., N] in x's dtype.
at::Tensor quantized_linear(const at::Tensor& x, const QuantizedMatrix& w);
// The same for several matrices of one input (q, k, v; gate, up): x is
// quantized once and all rows are shared out in one parallel region.
std::vector<at::Tensor> quantized_linear(const at::Tensor& x, const std::vector<const QuantizedMatrix*>& ws);

// Fused RMSNorm (inference): w * round(x / rms(x)), fp32 statistics.
// x: [..., C], w: [C] -> [..., C] in x's dtype.
bool rms_norm_usable(const at::Tensor& x, const at::Tensor& w);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);

// Fused rotary embedding (inference): x * cos + rotate_half(x) * sin in fp32,
// rounded once. x: [B, H, T, D] (any strides), cos, sin: fp32 [T, D] or
// [B, T, D] -> contiguous [B, H, T, D] in x's dtype.
bool rotary_usable(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Fused SwiGLU gate (inference, AVX2 + FMA): silu(gate) * up in fp32,
// rounded once, any number of rows. gate, up: same shape and dtype -> that
// shape, contiguous.
bool silu_mul_usable(const at::Tensor& gate, const at::Tensor& up);
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

}  // namespace flashback::kernels
