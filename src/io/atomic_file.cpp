#include "flashback/io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "flashback/error.hpp"
#include "write_hooks.hpp"

namespace flashback {

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string dir_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": write failed: " + errno_text());
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void write_file_atomic(const std::string& path, const std::function<void(int fd)>& write) {
  detail::remove_stale_temporaries(path);
  std::random_device rd;
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rd());
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(path + ": cannot create temporary file: " + errno_text());
    if (!detail::lock_temporary(fd)) {  // another writer's cleanup is removing it: make another
      ::close(fd);
      fd = -1;
      if (attempt == 8) throw Error(path + ": cannot create temporary file: another process keeps removing it");
    }
  }
  detail::crash_point("file.created");
  try {
    write(fd);
    detail::crash_point("file.written");
    if (::fsync(fd) != 0) throw Error(path + ": fsync failed: " + errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());
    ::close(fd);
    throw;
  }
  detail::crash_point("file.synced");
  // The descriptor (and its lock) stays open over the rename: an unlocked temporary is a dead
  // writer's to every other writer's cleanup.
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = errno_text();
    ::unlink(tmp.c_str());
    ::close(fd);
    throw Error(path + ": rename failed: " + err);
  }
  detail::crash_point("file.renamed");
  ::close(fd);  // the data is on disk (fsync above): nothing to report from close
  // Make the rename itself durable.
  int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  write_file_atomic(path, [&](int fd) { write_all(fd, contents.data(), contents.size(), path); });
}

void make_directories(const std::string& path) {
  if (path.empty()) return;
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
      throw Error(cur + ": cannot create directory: " + errno_text());
    i = j + 1;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw Error(path + ": not a directory");
}

}  // namespace flashback
