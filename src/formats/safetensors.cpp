// safetensors reader (validated, memory-mapped) and atomic writer.
#include "flashback/formats/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_file.hpp"

namespace flashback {

namespace {

constexpr uint64_t kMaxHeader = 100ull * 1000 * 1000;  // the reference implementation's cap

uint64_t read_u64le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses one header entry into `t` (name already set); throws on any problem.
void parse_entry(const std::string& path, const std::string& name, const nlohmann::json& e,
                 uint64_t data_size, RawTensor& t, uint64_t& begin, uint64_t& end) {
  auto bad = [&](const std::string& what) { throw FormatError(path, "tensor '" + name + "': " + what); };
  if (!e.is_object()) bad("header entry is not an object");
  if (!e.contains("dtype") || !e["dtype"].is_string()) bad("missing or non-string 'dtype'");
  const std::string dt = e["dtype"].get<std::string>();
  if (!parse_dtype_name(dt, &t.dtype)) bad("unknown dtype '" + dt + "'");
  if (!e.contains("shape") || !e["shape"].is_array()) bad("missing or non-array 'shape'");
  for (const auto& d : e["shape"]) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("shape entries must be non-negative integers");
    t.shape.push_back(d.get<int64_t>());
  }
  if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
    bad("'data_offsets' must be [begin, end]");
  for (const auto& d : e["data_offsets"])
    if (!d.is_number_unsigned()) bad("'data_offsets' must be non-negative integers");
  begin = e["data_offsets"][0].get<uint64_t>();
  end = e["data_offsets"][1].get<uint64_t>();
  if (begin > end) bad("data_offsets begin > end");
  if (end > data_size)
    bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] run past the end of the file (" +
        std::to_string(data_size) + " data bytes): truncated?");
  int64_t numel = checked_numel(t.shape);
  if (numel < 0) bad("shape " + shape_str(t.shape) + " overflows");
  uint64_t want = uint64_t(numel) * dtype_size(t.dtype);
  if (want != end - begin)
    bad("shape " + shape_str(t.shape) + " x " + dt + " needs " + std::to_string(want) + " bytes but data_offsets span " +
        std::to_string(end - begin));
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  auto file = MappedFile::open(path);
  const uint64_t size = file->size();
  if (size < 8) throw FormatError(path, "too small to be a safetensors file (" + std::to_string(size) + " bytes)");
  const uint64_t n = read_u64le(file->data());
  if (n > kMaxHeader) throw FormatError(path, "header length " + std::to_string(n) + " exceeds the 100 MB cap");
  if (n > size - 8)
    throw FormatError(path, "header length " + std::to_string(n) + " runs past the end of the file (" +
                                std::to_string(size) + " bytes): truncated?");
  const char* hbeg = reinterpret_cast<const char*>(file->data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hbeg, hbeg + n);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw FormatError(path, "header is not a JSON object");

  SafetensorsFile out;
  out.path = path;
  const uint64_t data_size = size - 8 - n;
  const uint8_t* data = file->data() + 8 + n;
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // (begin, end) per tensor
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) throw FormatError(path, "__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) throw FormatError(path, "__metadata__ value for '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    RawTensor t;
    t.name = it.key();
    uint64_t b = 0, e = 0;
    parse_entry(path, t.name, *it, data_size, t, b, e);
    t.data = data + b;
    t.nbytes = e - b;
    t.owner = file;
    spans.emplace_back(b, e);
    out.tensors.push_back(std::move(t));
  }
  // Order by offset, then check no two spans overlap.
  std::vector<size_t> order(out.tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spans[a] < spans[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = spans[order[i - 1]];
    const auto& cur = spans[order[i]];
    if (cur.first < prev.second)
      throw FormatError(path, "tensors '" + out.tensors[order[i - 1]].name + "' and '" + out.tensors[order[i]].name +
                                  "' overlap");
  }
  std::vector<RawTensor> sorted;
  sorted.reserve(order.size());
  for (size_t i : order) sorted.push_back(std::move(out.tensors[i]));
  out.tensors = std::move(sorted);
  return out;
}

void write_safetensors(const std::string& path, const std::vector<RawTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    int64_t numel = t.numel();
    if (numel < 0 || uint64_t(numel) * dtype_size(t.dtype) != t.nbytes)
      throw InvalidArgument(path + ": tensor '" + t.name + "' has " + std::to_string(t.nbytes) +
                            " bytes, which does not match shape " + shape_str(t.shape));
    if (header.contains(t.name)) throw InvalidArgument(path + ": duplicate tensor name '" + t.name + "'");
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // keep the data 8-byte aligned
  write_file_atomic(path, [&](int fd) {
    uint8_t len[8];
    uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
    write_all(fd, len, 8, path);
    write_all(fd, h.data(), h.size(), path);
    for (const auto& t : tensors) write_all(fd, t.data, t.nbytes, path);
  });
}

}  // namespace flashback
