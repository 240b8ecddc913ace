// llama2.c checkpoints (karpathy/llama2.c export.py): the legacy v0 layout
// (7 int32 header, fp32 weights grouped by kind, RoPE tables, optional
// classifier: a negative vocab_size marks an unshared one) and the v1 layout
// (magic "ak42", version 1, 256-byte header, fp32). The tensors come out
// with HF names but still in Meta's RoPE layout (adjacent pairs): the
// checkpoint loader permutes q/k.
#pragma once

#include <string>
#include <vector>

#include "flashback/formats/raw_tensor.hpp"

namespace flashback {

struct Llama2cFile {
  std::string path;
  int version = 0;
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;
  std::vector<RawTensor> tensors;  // HF names; q/k rows in Meta (interleaved) RoPE order
};

// Validates the header and that the file size is exactly what it implies.
Llama2cFile read_llama2c(const std::string& path);

}  // namespace flashback
