// GGUF reader: a bounds-checked cursor over the mapped file.
#include "flashback/formats/gguf.hpp"

#include <algorithm>
#include <cstring>

#include "flashback/error.hpp"
#include "flashback/formats/ggml_types.hpp"
#include "flashback/formats/mapped_file.hpp"

namespace flashback {

namespace {

class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* p, size_t n) : path_(path), p_(p), n_(n) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(path_, what + " (at byte " + std::to_string(pos_) + " of " + std::to_string(n_) + ")");
  }
  void need(uint64_t k, const char* what) const {
    if (k > n_ - pos_) fail(std::string("truncated: ") + what + " runs past the end of the file");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    uint64_t len = read<uint64_t>(what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

 private:
  std::string path_;
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

// Smallest encoding of one value of type t, to bound array counts before allocating.
uint64_t min_size(uint32_t t) {
  switch (t) {
    case GgufValue::U8: case GgufValue::I8: case GgufValue::Bool: return 1;
    case GgufValue::U16: case GgufValue::I16: return 2;
    case GgufValue::U32: case GgufValue::I32: case GgufValue::F32: return 4;
    case GgufValue::U64: case GgufValue::I64: case GgufValue::F64: case GgufValue::String: return 8;
    case GgufValue::Array: return 12;
    default: return 1;
  }
}

GgufValue read_value(Cursor& c, uint32_t type, const std::string& key, int depth) {
  GgufValue v;
  v.type = static_cast<GgufValue::Type>(type);
  switch (type) {
    case GgufValue::U8: v.i = c.read<uint8_t>("value"); break;
    case GgufValue::I8: v.i = c.read<int8_t>("value"); break;
    case GgufValue::U16: v.i = c.read<uint16_t>("value"); break;
    case GgufValue::I16: v.i = c.read<int16_t>("value"); break;
    case GgufValue::U32: v.i = c.read<uint32_t>("value"); break;
    case GgufValue::I32: v.i = c.read<int32_t>("value"); break;
    case GgufValue::U64: v.u = c.read<uint64_t>("value"); v.i = static_cast<int64_t>(v.u); break;
    case GgufValue::I64: v.i = c.read<int64_t>("value"); break;
    case GgufValue::F32: v.f = c.read<float>("value"); break;
    case GgufValue::F64: v.f = c.read<double>("value"); break;
    case GgufValue::Bool: {
      uint8_t b = c.read<uint8_t>("value");
      if (b > 1) c.fail("key '" + key + "': bool value " + std::to_string(b));
      v.i = b;
      break;
    }
    case GgufValue::String: v.s = c.read_string("string value"); break;
    case GgufValue::Array: {
      if (depth > 0) c.fail("key '" + key + "': nested arrays are not supported");
      uint32_t elem = c.read<uint32_t>("array type");
      if (elem > GgufValue::F64) c.fail("key '" + key + "': unknown array element type " + std::to_string(elem));
      uint64_t count = c.read<uint64_t>("array length");
      if (count > c.remaining() / min_size(elem))
        c.fail("key '" + key + "': array of " + std::to_string(count) + " elements cannot fit in the file");
      v.elem = static_cast<GgufValue::Type>(elem);
      v.items.reserve(count);
      for (uint64_t k = 0; k < count; ++k) v.items.push_back(read_value(c, elem, key, depth + 1));
      break;
    }
    default: c.fail("key '" + key + "': unknown value type " + std::to_string(type));
  }
  return v;
}

}  // namespace

GgufFile read_gguf(const std::string& path) {
  auto file = MappedFile::open(path);
  Cursor c(path, file->data(), file->size());
  if (file->size() < 4 || std::memcmp(file->data(), "GGUF", 4) != 0) throw FormatError(path, "not a GGUF file (bad magic)");
  c.read<uint32_t>("magic");
  GgufFile g;
  g.path = path;
  g.version = c.read<uint32_t>("version");
  if (g.version != 2 && g.version != 3)
    throw FormatError(path, "GGUF version " + std::to_string(g.version) + " is not supported (only 2 and 3)");
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each key/value takes >= 12 bytes and each tensor info >= 24: bound the counts by the file.
  if (n_kv > c.remaining() / 12) c.fail("metadata count " + std::to_string(n_kv) + " cannot fit in the file");
  if (n_tensors > c.remaining() / 24) c.fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the file");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.read_string("metadata key");
    uint32_t type = c.read<uint32_t>("metadata type");
    GgufValue v = read_value(c, type, key, 0);
    if (!g.metadata.emplace(key, std::move(v)).second) c.fail("duplicate metadata key '" + key + "'");
  }
  if (const GgufValue* a = g.find("general.alignment")) {
    if (!a->is_integer() || a->i <= 0 || (a->i & (a->i - 1)) != 0)
      throw FormatError(path, "general.alignment must be a power of two");
    g.alignment = static_cast<uint64_t>(a->i);
  }

  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = c.read_string("tensor name");
    uint32_t n_dims = c.read<uint32_t>("tensor dims");
    if (n_dims == 0 || n_dims > 4) c.fail("tensor '" + t.name + "': " + std::to_string(n_dims) + " dims (1 to 4 allowed)");
    std::vector<int64_t> ne(n_dims);
    for (auto& d : ne) {
      uint64_t v = c.read<uint64_t>("tensor dim");
      if (v == 0 || v > (uint64_t(1) << 40)) c.fail("tensor '" + t.name + "': dimension " + std::to_string(v));
      d = static_cast<int64_t>(v);
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    t.ggml_type = c.read<uint32_t>("tensor type");
    t.offset = c.read<uint64_t>("tensor offset");
    const GgmlType* gt = find_ggml_type(t.ggml_type);
    if (!gt) c.fail("tensor '" + t.name + "': unknown ggml type " + std::to_string(t.ggml_type));
    int64_t numel = checked_numel(t.shape);
    if (numel < 0) c.fail("tensor '" + t.name + "': shape overflows");
    if (ne[0] % int64_t(gt->block) != 0)
      c.fail("tensor '" + t.name + "': row length " + std::to_string(ne[0]) + " is not a multiple of the " + gt->name +
             " block size " + std::to_string(gt->block));
    const uint64_t blocks = uint64_t(numel) / gt->block;
    if (blocks > file->size() / gt->bytes)  // also keeps blocks * bytes from overflowing
      c.fail("tensor '" + t.name + "': " + std::to_string(blocks) + " " + gt->name + " blocks cannot fit in the file");
    t.nbytes = blocks * gt->bytes;
    if (t.offset % g.alignment != 0) c.fail("tensor '" + t.name + "': offset is not aligned");
    g.infos.push_back(std::move(t));
  }
  const uint64_t data_start = (c.pos() + g.alignment - 1) / g.alignment * g.alignment;
  const uint64_t data_size = data_start <= file->size() ? file->size() - data_start : 0;
  if (n_tensors > 0 && data_start > file->size()) throw FormatError(path, "truncated: no data section");

  std::vector<size_t> order(g.infos.size());
  for (size_t i = 0; i < order.size(); ++i) {
    order[i] = i;
    const auto& t = g.infos[i];
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      throw FormatError(path, "tensor '" + t.name + "' (" + std::to_string(t.nbytes) + " bytes at offset " +
                                  std::to_string(t.offset) + ") runs past the end of the file: truncated?");
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return g.infos[a].offset < g.infos[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& a = g.infos[order[i - 1]];
    const auto& b = g.infos[order[i]];
    if (b.offset < a.offset + a.nbytes) throw FormatError(path, "tensors '" + a.name + "' and '" + b.name + "' overlap");
  }
  g.data = file->data() + data_start;
  g.owner = file;
  return g;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) throw FormatError(path, "missing metadata key '" + key + "'");
  if (!v->is_integer()) throw FormatError(path, "metadata key '" + key + "' is not an integer");
  return v->i;
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return find(key) ? get_int(key) : fallback;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type == GgufValue::F32 || v->type == GgufValue::F64) return v->f;
  if (v->is_integer()) return static_cast<double>(v->i);
  throw FormatError(path, "metadata key '" + key + "' is not a number");
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) throw FormatError(path, "missing metadata key '" + key + "'");
  if (v->type != GgufValue::String) throw FormatError(path, "metadata key '" + key + "' is not a string");
  return v->s;
}

RawTensor GgufFile::tensor(const GgufTensorInfo& info) const {
  RawTensor t;
  t.name = info.name;
  t.shape = info.shape;
  switch (info.ggml_type) {
    case 0: t.dtype = DType::F32; break;
    case 1: t.dtype = DType::F16; break;
    case 30: t.dtype = DType::BF16; break;
    default:
      throw FormatError(path, "tensor '" + info.name + "' has ggml type " + ggml_type_name(info.ggml_type) +
                                  (ggml_type_dequantizable(info.ggml_type)
                                       ? ", quantized: read it with dequantize()"
                                       : "; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K"));
  }
  t.data = data + info.offset;
  t.nbytes = info.nbytes;
  t.owner = owner;
  return t;
}

}  // namespace flashback
