// Atomic writes: the data goes to a temporary file in the same directory, is
// flushed to disk, then renamed over the target. A crash leaves the old file
// or the new one, never half of one; the temporary a killed writer leaves
// ("<path>.tmp.<pid>.<n>", flock'ed while its writer lives) is removed by the
// next write of the same path.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace flashback {

// Calls `write(fd)` to fill the temporary file; on any exception the temporary
// is removed and the target left untouched.
void write_file_atomic(const std::string& path, const std::function<void(int fd)>& write);
void write_file_atomic(const std::string& path, std::string_view contents);

// Writes all bytes to fd (retrying short writes); throws Error naming `path`.
void write_all(int fd, const void* data, size_t n, const std::string& path);

// mkdir -p; throws Error naming the path on failure.
void make_directories(const std::string& path);

}  // namespace flashback
