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
#include <cstring>
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

// Q4_K's and Q5_K's 8 scales and 8 minimums of a super-block, 6 bits each, packed in the block's 12 bytes
// at `s`: group j < 4 has the low 6 bits of s[j] (scale) and s[j + 4] (minimum); group j >= 4 has s[j + 4]'s
// low (scale) and high (minimum) nibble, topped by the 2 bits s[j - 4] and s[j] hold above their 6.
// Worked four bytes at a time, into four words whose byte j is group j's (little-endian): scales 0-3,
// scales 4-7, minimums 0-3, minimums 4-7. Inline: the decode kernel asks it once per super-block and keeps
// the words in registers.
inline void ggml_scales_mins_k4(const uint8_t* s, uint32_t out[4]) {
  uint32_t u[3];
  std::memcpy(u, s, 12);
  out[0] = u[0] & 0x3F3F3F3Fu;                                          // scales 0-3
  out[1] = (u[2] & 0x0F0F0F0Fu) | ((u[0] >> 2) & 0x30303030u);         // scales 4-7: bits 6-7 of s[0..3] to 4-5
  out[2] = u[1] & 0x3F3F3F3Fu;                                          // minimums 0-3
  out[3] = ((u[2] >> 4) & 0x0F0F0F0Fu) | ((u[1] >> 2) & 0x30303030u);  // minimums 4-7
}

// fp16 (IEEE binary16) -> fp32, exactly (subnormals, infinities, NaNs included).
float half_to_float(uint16_t h);

}  // namespace flashback
