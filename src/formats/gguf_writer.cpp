// GGUF writer: the layout read_gguf reads (gguf.cpp), version 3, little-endian.
#include <cstring>
#include <set>

#include "flashback/error.hpp"
#include "flashback/formats/ggml_types.hpp"
#include "flashback/formats/gguf.hpp"
#include "flashback/io/atomic_file.hpp"

namespace flashback {

namespace {

class Buffer {
 public:
  template <typename T>
  void put(T v) {
    const size_t n = bytes_.size();
    bytes_.resize(n + sizeof(T));
    std::memcpy(&bytes_[n], &v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes_.append(s);
  }
  void pad_to(uint64_t alignment) { bytes_.resize((bytes_.size() + alignment - 1) / alignment * alignment, '\0'); }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

void put_value(Buffer& b, const GgufValue& v, const std::string& key, bool in_array) {
  switch (v.type) {
    case GgufValue::U8: b.put<uint8_t>(static_cast<uint8_t>(v.i)); break;
    case GgufValue::I8: b.put<int8_t>(static_cast<int8_t>(v.i)); break;
    case GgufValue::U16: b.put<uint16_t>(static_cast<uint16_t>(v.i)); break;
    case GgufValue::I16: b.put<int16_t>(static_cast<int16_t>(v.i)); break;
    case GgufValue::U32: b.put<uint32_t>(static_cast<uint32_t>(v.i)); break;
    case GgufValue::I32: b.put<int32_t>(static_cast<int32_t>(v.i)); break;
    case GgufValue::U64: b.put<uint64_t>(v.u ? v.u : static_cast<uint64_t>(v.i)); break;
    case GgufValue::I64: b.put<int64_t>(v.i); break;
    case GgufValue::F32: b.put<float>(static_cast<float>(v.f)); break;
    case GgufValue::F64: b.put<double>(v.f); break;
    case GgufValue::Bool: b.put<uint8_t>(v.i ? 1 : 0); break;
    case GgufValue::String: b.put_string(v.s); break;
    case GgufValue::Array:
      if (in_array) throw InvalidArgument("GGUF key '" + key + "': nested arrays are not supported");
      b.put<uint32_t>(v.elem);
      b.put<uint64_t>(v.items.size());
      for (const GgufValue& item : v.items) {
        if (item.type != v.elem)
          throw InvalidArgument("GGUF key '" + key + "': an array element's type differs from the array's");
        put_value(b, item, key, true);
      }
      break;
    default: throw InvalidArgument("GGUF key '" + key + "': unknown value type " + std::to_string(v.type));
  }
}

}  // namespace

void write_gguf(const std::string& path, const std::vector<std::pair<std::string, GgufValue>>& metadata,
                const std::vector<GgufTensorOut>& tensors) {
  uint64_t alignment = 32;
  Buffer head;
  head.put<uint32_t>(0x46554747);  // "GGUF"
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors.size());
  head.put<uint64_t>(metadata.size());
  std::set<std::string> keys;
  for (const auto& [key, value] : metadata) {
    if (!keys.insert(key).second) throw InvalidArgument("GGUF key '" + key + "' given twice");
    if (key == "general.alignment") {
      if (!value.is_integer() || value.i <= 0 || (value.i & (value.i - 1)) != 0)
        throw InvalidArgument("GGUF key 'general.alignment' must be a power of two");
      alignment = static_cast<uint64_t>(value.i);
    }
    head.put_string(key);
    head.put<uint32_t>(value.type);
    put_value(head, value, key, false);
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const GgufTensorOut& t : tensors) {
    if (!names.insert(t.name).second) throw InvalidArgument("GGUF tensor '" + t.name + "' given twice");
    const GgmlType* gt = find_ggml_type(t.ggml_type);
    if (!gt) throw InvalidArgument("GGUF tensor '" + t.name + "': unknown ggml type " + std::to_string(t.ggml_type));
    if (t.shape.empty() || t.shape.size() > 4)
      throw InvalidArgument("GGUF tensor '" + t.name + "': " + std::to_string(t.shape.size()) + " dims (1 to 4 allowed)");
    const int64_t numel = checked_numel(t.shape);
    if (numel <= 0) throw InvalidArgument("GGUF tensor '" + t.name + "': empty or overflowing shape");
    if (t.shape.back() % int64_t(gt->block) != 0)
      throw InvalidArgument("GGUF tensor '" + t.name + "': row length " + std::to_string(t.shape.back()) +
                            " is not a multiple of the " + gt->name + " block size " + std::to_string(gt->block));
    if (t.nbytes != uint64_t(numel) / gt->block * gt->bytes || (t.nbytes && !t.data))
      throw InvalidArgument("GGUF tensor '" + t.name + "': " + std::to_string(t.nbytes) + " bytes for " +
                            std::to_string(numel) + " " + gt->name + " values");
    head.put_string(t.name);
    head.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) head.put<uint64_t>(static_cast<uint64_t>(*d));
    head.put<uint32_t>(t.ggml_type);
    head.put<uint64_t>(offset);
    offsets.push_back(offset);
    offset = (offset + t.nbytes + alignment - 1) / alignment * alignment;
  }
  head.pad_to(alignment);
  write_file_atomic(path, [&](int fd) {
    write_all(fd, head.bytes().data(), head.bytes().size(), path);
    static const char zeros[256] = {};
    uint64_t at = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      for (uint64_t gap = offsets[i] - at; gap > 0;) {  // alignment padding: < alignment bytes
        const uint64_t n = gap < sizeof(zeros) ? gap : sizeof(zeros);
        write_all(fd, zeros, n, path);
        gap -= n;
      }
      write_all(fd, tensors[i].data, tensors[i].nbytes, path);
      at = offsets[i] + tensors[i].nbytes;
    }
  });
}

namespace {
GgufValue value(GgufValue::Type type, int64_t i = 0, double f = 0.0) {
  GgufValue g;
  g.type = type;
  g.i = i;
  g.f = f;
  return g;
}
}  // namespace

GgufValue gguf_u32(uint32_t v) { return value(GgufValue::U32, v); }
GgufValue gguf_i32(int32_t v) { return value(GgufValue::I32, v); }
GgufValue gguf_f32(float v) { return value(GgufValue::F32, 0, v); }
GgufValue gguf_bool(bool v) { return value(GgufValue::Bool, v ? 1 : 0); }

GgufValue gguf_string(std::string v) {
  GgufValue g = value(GgufValue::String);
  g.s = std::move(v);
  return g;
}

GgufValue gguf_array(GgufValue::Type elem, std::vector<GgufValue> items) {
  GgufValue g = value(GgufValue::Array);
  g.elem = elem;
  g.items = std::move(items);
  return g;
}

}  // namespace flashback
