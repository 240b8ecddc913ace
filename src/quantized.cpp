#include "flashback/quantized.hpp"

#include <ATen/Parallel.h>

#include "flashback/formats/ggml_types.hpp"

namespace flashback {

bool keeps_quantized(uint32_t ggml_type) {
  switch (ggml_type) {
    case 2: case 3: case 6: case 7: case 8: case 12: case 14: return true;  // Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q6_K
    default: return false;
  }
}

int64_t QuantizedMatrix::row_bytes() const {
  const GgmlType* t = find_ggml_type(type);
  return t ? cols / int64_t(t->block) * int64_t(t->bytes) : 0;
}

std::string QuantizedMatrix::type_name() const { return ggml_type_name(type); }

at::Tensor dequantize_matrix(const QuantizedMatrix& m) {
  at::Tensor out = at::empty({m.rows, m.cols}, at::kFloat);  // [rows, cols]
  const uint8_t* src = m.data.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  const int64_t rb = m.row_bytes();
  at::parallel_for(0, m.rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) dequantize(m.type, src + r * rb, size_t(rb), m.cols, dst + r * m.cols, "row");
  });
  return out;
}

}  // namespace flashback
