// What GGUF (llama.cpp's layout) and HF name and order differently, for the GGUF reader (checkpoint.cpp)
// and writer (checkpoint_io.cpp): one table, each direction derived from it.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace flashback::internal {

// "blk.3.attn_q.weight" <-> "model.layers.3.self_attn.q_proj.weight". The first throws FormatError naming
// `path` for a name that is not a Llama tensor, the second InvalidArgument.
std::string gguf_to_hf_name(const std::string& gguf_name, const std::string& path);
std::string hf_to_gguf_name(const std::string& hf_name);

// Meta/llama2.c/GGUF RoPE rotates adjacent pairs (0,1),(2,3)...; HF's rotate_half rotates (i, i + D/2).
// These reorder each head's rows between the two.   w: [heads * D, C]
at::Tensor meta_to_hf_rope(const at::Tensor& w, int64_t heads);
at::Tensor hf_to_meta_rope(const at::Tensor& w, int64_t heads);

}  // namespace flashback::internal
