// A read-only view of a whole file through mmap. Pages are mapped private and
// writable, so a tensor built over them may be modified in place without
// touching the file (copy-on-write) and without faulting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace flashback {

class MappedFile {
 public:
  // Throws FormatError(path, ...) if the file cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  std::string_view bytes() const { return {reinterpret_cast<const char*>(data_), size_}; }

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) file into a string; FormatError if unreadable.
std::string read_file(const std::string& path);

}  // namespace flashback
