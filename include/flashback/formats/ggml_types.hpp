// ggml's tensor types (what GGUF files store) and the dequantization of the
// quantized ones, written to match ggml's reference (ggml-quants.c) and the
// `gguf` Python package's numpy code bit for bit in fp32: each value is one
// fp32 product (and one fp32 sum or difference where the type has a minimum),
// in that order, with the fp16 scales widened exactly.
//
//   Q4_0, Q4_1, Q5_0, Q5_1, Q8_0        blocks of 32 values
//   Q2_K, Q3_K, Q4_K, Q5_K, Q6_K        super-blocks of 256 (QK_K)
//
// LibTorch-free, like the other parsers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace flashback {

struct GgmlType {
  uint32_t id;
  const char* name;
  uint64_t block;  // values per block
  uint64_t bytes;  // bytes per block
};

// The type with this id, or null when ggml defines none.
const GgmlType* find_ggml_type(uint32_t id);
// "F32", "Q4_0", ...; "type N" for unknown ids.
std::string ggml_type_name(uint32_t id);
// Whether dequantize() reads this type.
bool ggml_type_dequantizable(uint32_t id);

// Dequantizes `n` values (a multiple of the type's block) from the `nbytes`
// bytes at `blocks` into `out` (n floats). InvalidArgument, naming `what`,
// when the type is not dequantizable here or the sizes disagree.
void dequantize(uint32_t type, const uint8_t* blocks, size_t nbytes, int64_t n, float* out, const std::string& what);

// Q4_K's and Q5_K's scale and minimum of group j (0..7) of a super-block, 6 bits each, packed in the
// block's 12 bytes at `s`. Inline: the decode kernel asks it for every group of 32 values.
inline void ggml_scale_min_k4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// fp16 (IEEE binary16) -> fp32, exactly (subnormals, infinities, NaNs included).
float half_to_float(uint16_t h);

}  // namespace flashback
