// What differs between the LibTorch versions flashback builds against (Debian's 1.13, the one inside a
// PyPI torch 2.x wheel): the one place that asks which it is. Everything else is written against the API
// both share.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

namespace flashback::compat {

// LibTorch's fused attention, at::scaled_dot_product_attention (2.0 on): flash / memory-efficient kernels
// on CUDA, a blocked flash kernel on CPU; from 2.5 it takes fewer KV heads than query heads itself.
constexpr bool kHasSdpa = TORCH_VERSION_MAJOR >= 2;
constexpr bool kSdpaGqa = TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5);

// softmax(q k^T / sqrt(D), masked) v.   q: [B, H, T, D], k, v: [B, Hkv, S, D] (Hkv == H, or Hkv | H where
// kSdpaGqa); mask: bool [T, S] (true: may attend) or undefined; causal: query i sees keys j <= i (T == S,
// no mask) -> [B, H, T, D]. Throws on a LibTorch without it.
inline at::Tensor sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                       bool causal) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  return at::scaled_dot_product_attention(q, k, v, mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt,
                                          0.0, causal, c10::nullopt, /*enable_gqa=*/q.size(1) != k.size(1));
#elif TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt,
                                          0.0, causal);
#else
  (void)q, (void)k, (void)v, (void)mask, (void)causal;
  TORCH_CHECK(false, "flashback: at::scaled_dot_product_attention needs LibTorch 2.0 or later (this is ", TORCH_VERSION, ")");
#endif
}

// FlashAttention-2 itself, without sdpa's choice of kernel (2.5 on; CUDA, fp16/bf16, head_dim a multiple
// of 8 up to 256). q: [B, H, T, D], k, v: [B, Hkv, S, D] with Hkv | H (the kernel shares KV heads itself).
// causal: query row i sees keys j <= S - T + i, aligned to the last key (FlashAttention-2's own rule, which
// torch.nn.attention.bias's causal_lower_right relies on): the T rows are the newest slots of the cache.
// Without causal every row sees every key (one decode row). -> [B, H, T, D]. Throws where it cannot run
// (before sm80, a LibTorch built without it).
constexpr bool kHasFlashAttention = kSdpaGqa;

inline at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  return std::get<0>(at::_scaled_dot_product_flash_attention(q, k, v, 0.0, causal));
#else
  (void)q, (void)k, (void)v, (void)causal;
  TORCH_CHECK(false, "flashback: calling FlashAttention-2 directly needs LibTorch 2.5 or later (this is ", TORCH_VERSION, ")");
#endif
}

// Whether the user left the flash kernel on (torch.backends.cuda.enable_flash_sdp).
inline bool flash_attention_enabled() {
#if TORCH_VERSION_MAJOR >= 2
  return at::globalContext().userEnabledFlashSDP();
#else
  return false;
#endif
}

}  // namespace flashback::compat
