// A tensor as a file holds it: name, element type, shape and a byte span that
// stays valid while `owner` lives. The format parsers produce these without
// LibTorch; checkpoint.cpp turns them into torch::Tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace flashback {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, Bool };

size_t dtype_size(DType t);
// safetensors spelling: "F32", "BF16", ...
const char* dtype_name(DType t);
// Parses the safetensors spelling; false if unknown.
bool parse_dtype_name(const std::string& s, DType* out);

// numel of `shape`, or -1 on negative dims / overflow past 2^62.
int64_t checked_numel(const std::vector<int64_t>& shape);

struct RawTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;  // keeps `data` alive (a MappedFile, a buffer)

  int64_t numel() const { return checked_numel(shape); }
};

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace flashback
