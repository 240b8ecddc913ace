// A weight matrix kept in one of ggml's block formats instead of being
// dequantized at load (LoadOptions::keep_quantized): the bytes as GGUF
// stores them, each row K / 32 blocks (K / 256 for the K-quants), so that decode reads 4.5-8.5 bits per
// weight instead of 16 or 32 (the way llama.cpp gets its decode speed).
//
//   Q8_0  32 x int8, one fp16 scale                          (34 bytes / 32)
//   Q4_0  32 x 4-bit, one fp16 scale, value = d (q - 8)      (18 bytes / 32)
//   Q4_1  32 x 4-bit, fp16 scale and minimum, value = d q + m (20 bytes / 32)
//   Q5_0  32 x 5-bit (nibbles + 32 fifth bits), fp16 scale,
//         value = d (q - 16)                                 (22 bytes / 32)
//   Q5_1  the same with a minimum, value = d q + m           (24 bytes / 32)
//   Q4_K  256 x 4-bit in 8 groups, 6-bit scale and minimum per group,
//         fp16 d and dmin: value = d sc q - dmin m          (144 bytes / 256)
//   Q6_K  256 x 6-bit, int8 scale per 16, fp16 d:
//         value = d sc (q - 32)                             (210 bytes / 256)
//
// (Q4_K_M and Q4_K_S files are Q4_K with some Q6_K matrices, and Q5_0 / Q8_0 for
// the rows whose length is not a multiple of 256.)
//
// The decoder layers' projections are kept so (Ops::quantized_linear), and the
// output head (its own matrix, or a tied embedding's blocks) when its type is;
// embedding lookups read a dense copy in the model's dtype.
// The matrix is immutable and shared: a model that holds one runs inference
// and adapters on top (LoRA unmerged), not merges, saves or device moves.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace flashback {

struct QuantizedMatrix {
  uint32_t type = 0;      // the ggml type id (2: Q4_0, 3: Q4_1, 6: Q5_0, 7: Q5_1, 8: Q8_0, 12: Q4_K, 14: Q6_K)
  int64_t rows = 0;       // out features
  int64_t cols = 0;       // in features, a multiple of the block (32, 256)
  at::Tensor data;        // uint8 [rows, row_bytes()], CPU, contiguous

  int64_t row_bytes() const;
  std::string type_name() const;  // "Q8_0", ...
};

// Whether a ggml type can be kept quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K).
bool keeps_quantized(uint32_t ggml_type);

// The matrix as fp32 [rows, cols], exactly as dequantize() (ggml_types.hpp) gives it.
at::Tensor dequantize_matrix(const QuantizedMatrix& m);

}  // namespace flashback
