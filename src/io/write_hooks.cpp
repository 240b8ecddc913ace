#include "write_hooks.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

namespace flashback::detail {

namespace {

struct CrashAt {
  std::string name;
  long nth = 1;
  std::atomic<long> seen{0};
};

const CrashAt* crash_at() {
  static const CrashAt* at = [] {
    const char* v = std::getenv("FLASHBACK_CRASH_AT");
    if (!v || !*v) return static_cast<CrashAt*>(nullptr);
    auto* c = new CrashAt;
    const std::string s = v;
    const size_t colon = s.find(':');
    c->name = s.substr(0, colon);
    if (colon != std::string::npos) c->nth = std::atol(s.c_str() + colon + 1);
    return c;
  }();
  return at;
}

std::string parent_of(const std::string& p) {
  const auto slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

std::string base_of(const std::string& p) {
  const auto slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// Locks `path` (a file or a directory) when no live writer holds it: the descriptor holding the
// lock, or -1. The caller removes the path, then closes the descriptor.
int lock_abandoned(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return -1;
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
  ::close(fd);
  return -1;
}

}  // namespace

void crash_point(const char* name) {
  const CrashAt* at = crash_at();
  if (!at || at->name != name) return;
  if (const_cast<CrashAt*>(at)->seen.fetch_add(1) + 1 == at->nth) ::kill(::getpid(), SIGKILL);
}

bool rename_exchange_disabled() {
  static const bool disabled = [] {
    const char* v = std::getenv("FLASHBACK_IO_NO_EXCHANGE");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return disabled;
}

bool lock_temporary(int fd) { return ::flock(fd, LOCK_EX | LOCK_NB) == 0; }

void remove_stale_temporaries(const std::string& target_in) {
  std::string target = target_in;
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  const std::string dir = parent_of(target), base = base_of(target);
  if (base.empty()) return;
  std::vector<std::string> temps, olds;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (starts_with(name, base + ".tmp.") || starts_with(name, base + ".tmp-")) temps.push_back(dir + "/" + name);
      else if (starts_with(name, base + ".old-")) olds.push_back(dir + "/" + name);
    }
    ::closedir(d);
  }
  std::error_code ec;
  for (const auto& t : temps) {
    const int fd = lock_abandoned(t);
    if (fd < 0) continue;
    std::filesystem::remove_all(t, ec);
    ::close(fd);
  }
  struct stat st {};
  for (const auto& o : olds) {
    const int fd = lock_abandoned(o);
    if (fd < 0) continue;
    // Its writer moved the old directory aside and died before the new one arrived: restore it.
    if (!(::lstat(target.c_str(), &st) != 0 && errno == ENOENT && ::rename(o.c_str(), target.c_str()) == 0))
      std::filesystem::remove_all(o, ec);
    ::close(fd);
  }
}

}  // namespace flashback::detail
