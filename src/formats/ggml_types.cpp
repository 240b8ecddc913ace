// ggml types and dequantization (ggml_types.hpp). Compiled with
// -ffp-contract=off: a fused multiply-add would round once where ggml and
// numpy round twice.
#include "flashback/formats/ggml_types.hpp"

#include <cstring>

#include "flashback/error.hpp"

namespace flashback {

namespace {

constexpr uint64_t QK = 32;    // values per block of the 32-value types
constexpr uint64_t QK_K = 256;  // values per K-quant super-block

constexpr GgmlType kTypes[] = {
    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {2, "Q4_0", QK, 18},     {3, "Q4_1", QK, 20},
    {6, "Q5_0", QK, 22},    {7, "Q5_1", QK, 24},    {8, "Q8_0", QK, 34},     {9, "Q8_1", QK, 36},
    {10, "Q2_K", QK_K, 84}, {11, "Q3_K", QK_K, 110}, {12, "Q4_K", QK_K, 144}, {13, "Q5_K", QK_K, 176},
    {14, "Q6_K", QK_K, 210}, {15, "Q8_K", QK_K, 292}, {24, "I8", 1, 1},      {25, "I16", 1, 2},
    {26, "I32", 1, 4},      {27, "I64", 1, 8},      {28, "F64", 1, 8},       {30, "BF16", 1, 2},
};

uint16_t u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);  // GGUF is little-endian, as every machine flashback runs on
  return v;
}

uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float f16(const uint8_t* p) { return half_to_float(u16(p)); }

// ---- the 32-value types: [scale(s)][bits], value j of 32 -------------------

// Q4_0: d, qs[16]; q = low nibbles (j < 16) then high nibbles; x = d * (q - 8).
void q4_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(int8_t((qs[j] & 0x0F) - 8));
    y[j + 16] = d * float(int8_t((qs[j] >> 4) - 8));
  }
}

// Q4_1: d, m, qs[16]; x = d * q + m.
void q4_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * float(qs[j] & 0x0F) + m;
    y[j + 16] = d * float(qs[j] >> 4) + m;
  }
}

// Q5_0: d, qh (32 bits: the fifth bit of value j), qs[16]; x = d * (q - 16).
void q5_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const uint32_t qh = u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * float(int8_t(lo - 16));
    y[j + 16] = d * float(int8_t(hi - 16));
  }
}

// Q5_1: d, m, qh, qs[16]; x = d * q + m.
void q5_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  const uint32_t qh = u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * float(lo) + m;
    y[j + 16] = d * float(hi) + m;
  }
}

// Q8_0: d, qs[32] int8; x = q * d.
void q8_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  for (int j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * d;
}

// ---- K-quants: super-blocks of 256 values in 16 (or 8) groups --------------

// Q2_K: scales[16] (low nibble: scale, high: min), qs[64] (2 bits), d, dmin.
// Value e: byte (e / 128) * 32 + e % 32, bits 2 * ((e / 32) % 4); group e / 16.
void q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = f16(b + 80), dmin = f16(b + 82);
  for (int e = 0; e < 256; ++e) {
    const int g = e / 16;
    const float dl = d * float(sc[g] & 0x0F), ml = dmin * float(sc[g] >> 4);
    const int q = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e / 32) % 4))) & 3;
    y[e] = dl * float(q) - ml;
  }
}

// Q3_K: hmask[32], qs[64] (2 low bits), scales[12] (16 x 6 bits), d.
// The high bit of value e is bit e / 32 of hmask[e % 32]; when it is clear
// the value is 4 lower.
void q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* s = b + 96;
  const float d = f16(b + 108);
  float dl[16];
  for (int k = 0; k < 16; ++k) {
    const int lo = k < 8 ? (s[k] & 0x0F) : (s[k - 8] >> 4);
    const int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 0x03;
    dl[k] = d * float(int8_t((lo | (hi << 4)) - 32));
  }
  for (int e = 0; e < 256; ++e) {
    const int low = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e / 32) % 4))) & 3;
    const int high = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
    y[e] = dl[e / 16] * float(int8_t(low - (high << 2)));
  }
}

// Q4_K: d, dmin, scales[12], qs[128]. Group g of 32: bytes (g / 2) * 32 + i,
// low nibbles for even g, high for odd; x = d * sc * q - dmin * m.
void q4_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qs = b + 16;
  uint32_t words[4];
  ggml_scales_mins_k4(s, words);
  uint8_t sc[8], m[8];
  std::memcpy(sc, words, 8);
  std::memcpy(m, words + 2, 8);
  for (int g = 0; g < 8; ++g) {
    const float dg = d * float(sc[g]), mg = dmin * float(m[g]);
    for (int i = 0; i < 32; ++i) {
      const int q = (qs[(g / 2) * 32 + i] >> (4 * (g % 2))) & 0x0F;
      y[g * 32 + i] = dg * float(q) - mg;
    }
  }
}

// Q5_K: as Q4_K, plus qh[32]: the fifth bit of value i of group g is bit g of qh[i].
void q5_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* s = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  uint32_t words[4];
  ggml_scales_mins_k4(s, words);
  uint8_t sc[8], m[8];
  std::memcpy(sc, words, 8);
  std::memcpy(m, words + 2, 8);
  for (int g = 0; g < 8; ++g) {
    const float dg = d * float(sc[g]), mg = dmin * float(m[g]);
    for (int i = 0; i < 32; ++i) {
      const int q = ((qs[(g / 2) * 32 + i] >> (4 * (g % 2))) & 0x0F) | (((qh[i] >> g) & 1) << 4);
      y[g * 32 + i] = dg * float(q) - mg;
    }
  }
}

// Q6_K: ql[128] (4 low bits), qh[64] (2 high bits), scales[16] int8, d.
// Value e = 128 h + r: low bits from ql[64 h + r % 64] (high nibble when
// r >= 64), high bits 2 * (r / 32) of qh[32 h + r % 32]; x = d * scale * (q - 32).
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  // r = 32 g + i: the loops over i have fixed shifts and one scale, so they vectorize.
  for (int h = 0; h < 2; ++h)
    for (int g = 0; g < 4; ++g)
      for (int half = 0; half < 2; ++half) {
        const float dl = d * float(sc[8 * h + 2 * g + half]);
        for (int i = 16 * half; i < 16 * half + 16; ++i) {
          const int lo = (ql[64 * h + 32 * (g % 2) + i] >> (4 * (g / 2))) & 0x0F;
          const int hi = (qh[32 * h + i] >> (2 * g)) & 0x03;
          y[128 * h + 32 * g + i] = dl * float((lo | (hi << 4)) - 32);
        }
      }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(uint32_t type) {
  switch (type) {
    case 2: return q4_0;
    case 3: return q4_1;
    case 6: return q5_0;
    case 7: return q5_1;
    case 8: return q8_0;
    case 10: return q2_k;
    case 11: return q3_k;
    case 12: return q4_k;
    case 13: return q5_k;
    case 14: return q6_k;
    default: return nullptr;
  }
}

}  // namespace

const GgmlType* find_ggml_type(uint32_t id) {
  for (const auto& t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}

std::string ggml_type_name(uint32_t id) {
  const GgmlType* t = find_ggml_type(id);
  return t ? t->name : "type " + std::to_string(id);
}

bool ggml_type_dequantizable(uint32_t id) { return block_fn(id) != nullptr; }

void dequantize(uint32_t type, const uint8_t* blocks, size_t nbytes, int64_t n, float* out, const std::string& what) {
  const GgmlType* t = find_ggml_type(type);
  const BlockFn fn = block_fn(type);
  if (!t || !fn)
    throw InvalidArgument(what + ": ggml type " + ggml_type_name(type) +
                          " cannot be dequantized (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
  if (n < 0 || uint64_t(n) % t->block != 0)
    throw InvalidArgument(what + ": " + std::to_string(n) + " values are not whole " + t->name + " blocks of " +
                          std::to_string(t->block));
  const uint64_t nblocks = uint64_t(n) / t->block;
  if (nbytes != nblocks * t->bytes)
    throw InvalidArgument(what + ": " + std::to_string(nbytes) + " bytes for " + std::to_string(nblocks) + " " +
                          t->name + " blocks of " + std::to_string(t->bytes) + " bytes");
  for (uint64_t i = 0; i < nblocks; ++i) fn(blocks + i * t->bytes, out + i * t->block);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // infinity or NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // subnormal: normalise the mantissa
    exp = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace flashback
