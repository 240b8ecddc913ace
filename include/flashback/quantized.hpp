// A weight matrix kept in one of ggml's block formats instead of being
// dequantized at load (LoadOptions::keep_quantized): the bytes as GGUF
// stores them, each row K / 32 blocks, so that decode reads 4.5-8.5 bits per
// weight instead of 16 or 32 (the way llama.cpp gets its decode speed).
//
//   Q8_0  32 x int8, one fp16 scale                          (34 bytes / 32)
//   Q4_0  32 x 4-bit, one fp16 scale, value = d (q - 8)      (18 bytes / 32)
//   Q4_1  32 x 4-bit, fp16 scale and minimum, value = d q + m (20 bytes / 32)
//
// Only the decoder layers' projections are kept so (Ops::quantized_linear);
// the embedding and the output head are dequantized to the model's dtype.
// The matrix is immutable and shared: a model that holds one runs inference
// and adapters on top (LoRA unmerged), not merges, saves or device moves.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace flashback {

struct QuantizedMatrix {
  uint32_t type = 0;      // the ggml type id (8: Q8_0, 2: Q4_0, 3: Q4_1)
  int64_t rows = 0;       // out features
  int64_t cols = 0;       // in features, a multiple of 32
  at::Tensor data;        // uint8 [rows, row_bytes()], CPU, contiguous

  int64_t row_bytes() const;
  std::string type_name() const;  // "Q8_0", ...
};

// Whether a ggml type can be kept quantized (Q8_0, Q4_0, Q4_1).
bool keeps_quantized(uint32_t ggml_type);

// The matrix as fp32 [rows, cols], exactly as dequantize() (ggml_types.hpp) gives it.
at::Tensor dequantize_matrix(const QuantizedMatrix& m);

}  // namespace flashback
