#include "harness.hpp"

#include <unistd.h>

#include <filesystem>
#include <system_error>

namespace flashback::fuzz {

namespace {
// The scratch directory, removed when the process ends (static destruction, after the last input).
struct Scratch {
  std::string dir;
  Scratch() {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path base = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    dir = (base / ("flashback-fuzz-" + std::to_string(getpid()))).string();
    fs::create_directories(dir);
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};
}  // namespace

const std::string& scratch_dir() {
  static const Scratch scratch;
  return scratch.dir;
}

std::string scratch_subdir(const std::string& name) {
  const std::string d = scratch_dir() + "/" + name;
  std::filesystem::create_directories(d);
  return d;
}

std::string write_input(std::string_view bytes, const std::string& name) {
  const std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    std::perror(path.c_str());
    std::abort();
  }
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
  return path;
}

}  // namespace flashback::fuzz
