// GGUF (llama.cpp's single-file format), versions 2 and 3: magic "GGUF",
// version, tensor and key/value counts, typed key/value metadata, tensor infos
// (name, dims innermost-first, ggml type, offset), alignment padding, data.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "flashback/formats/ggml_types.hpp"
#include "flashback/formats/raw_tensor.hpp"

namespace flashback {

struct GgufValue {
  enum Type : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
    String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
  };
  Type type = U8;
  int64_t i = 0;     // every integer type and bool
  uint64_t u = 0;    // U64 values beyond int64's range
  double f = 0.0;    // F32 / F64
  std::string s;     // String
  Type elem = U8;    // Array element type
  std::vector<GgufValue> items;  // Array

  bool is_integer() const { return type <= I32 || type == Bool || type == U64 || type == I64; }
  bool is_number() const { return is_integer() || type == F32 || type == F64; }
};

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<int64_t> shape;  // row-major (torch) order: dims reversed from the file
  uint64_t offset = 0;         // relative to the data section
  uint64_t nbytes = 0;
};

struct GgufFile {
  std::string path;
  uint32_t version = 0;
  uint64_t alignment = 32;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> infos;
  std::shared_ptr<const void> owner;  // the mapping
  const uint8_t* data = nullptr;      // start of the data section

  const GgufValue* find(const std::string& key) const;
  // Typed lookups: FormatError naming the key if missing or of the wrong type.
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key) const;
  // The tensor's bytes; FormatError unless its type is F32, F16 or BF16.
  RawTensor tensor(const GgufTensorInfo& info) const;
  // The bytes of any tensor (quantized ones: dequantize(), ggml_types.hpp).
  const uint8_t* tensor_data(const GgufTensorInfo& info) const { return data + info.offset; }
};

class Tokenizer;
// The tokenizer the file embeds (tokenizer.ggml.model "llama": SentencePiece,
// "gpt2": byte-level BPE); FormatError naming the file when it is unusable.
Tokenizer gguf_tokenizer(const GgufFile& file);

// Parses and validates the whole header: counts, string and array lengths,
// dims, ggml types, alignment, every tensor span inside the file and no
// overlaps. FormatError(path, ...) on any violation.
GgufFile read_gguf(const std::string& path);

// One tensor to write: its bytes in the ggml type's layout (quantized ones as ggml's blocks).
struct GgufTensorOut {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<int64_t> shape;  // row-major (torch) order, as GgufTensorInfo
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

// Writes a GGUF v3 file atomically (io/atomic_file.hpp): the metadata in the order given, the tensor
// infos, then each tensor's bytes at an offset aligned to `alignment` (general.alignment, when the
// metadata has it). InvalidArgument, naming the tensor or key, for a byte count that does not match
// the type and shape, a row that is not whole blocks, a duplicate name, or a value read_gguf would refuse.
void write_gguf(const std::string& path, const std::vector<std::pair<std::string, GgufValue>>& metadata,
                const std::vector<GgufTensorOut>& tensors);

// Metadata values, for write_gguf.
GgufValue gguf_u32(uint32_t v);
GgufValue gguf_i32(int32_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_bool(bool v);
GgufValue gguf_string(std::string v);
GgufValue gguf_array(GgufValue::Type elem, std::vector<GgufValue> items);


}  // namespace flashback
