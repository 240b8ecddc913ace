#include "flashback/quantized.hpp"

#include <ATen/Parallel.h>

#include "flashback/formats/ggml_types.hpp"

namespace flashback {

bool keeps_quantized(uint32_t ggml_type) { return ggml_type == 8 || ggml_type == 2 || ggml_type == 3; }

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
