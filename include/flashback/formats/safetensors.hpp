// safetensors (https://github.com/huggingface/safetensors): 8-byte little-endian
// header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, ...,
// "__metadata__": {str: str}}, then the data. Read memory-mapped.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "flashback/formats/raw_tensor.hpp"

namespace flashback {

struct SafetensorsFile {
  std::string path;
  std::map<std::string, std::string> metadata;
  std::vector<RawTensor> tensors;  // in file order of their data
};

// The header is validated in full before anything is returned: size cap
// (100 MB), JSON syntax and shape, known dtypes, shape x dtype == byte span,
// spans inside the file, no overlap. Any violation: FormatError(path, ...).
SafetensorsFile read_safetensors(const std::string& path);

// Writes tensors (any order; data copied as-is, little-endian) atomically.
void write_safetensors(const std::string& path, const std::vector<RawTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace flashback
