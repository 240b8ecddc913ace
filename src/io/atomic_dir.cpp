#include "flashback/io/atomic_dir.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28)
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "flashback/error.hpp"
#include "flashback/io/atomic_file.hpp"
#include "write_hooks.hpp"

namespace flashback {

namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string parent_of(const std::string& p) {
  auto slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

void fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Every file and directory under `dir`, then `dir` itself, made durable.
void fsync_tree(const std::string& dir) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_symlink(ec)) continue;
    if (it->is_regular_file(ec)) fsync_path(it->path().string(), O_RDONLY);
    else if (it->is_directory(ec)) fsync_path(it->path().string(), O_RDONLY | O_DIRECTORY);
  }
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

void check_replaceable(const std::string& target, const std::string& marker, const std::string& kind) {
  struct stat st {};
  if (::lstat(target.c_str(), &st) != 0) return;  // absent: fine
  if (!S_ISDIR(st.st_mode)) throw Error(target + ": exists and is not a directory; refusing to replace it");
  std::error_code ec;
  const bool empty = fs::is_empty(target, ec);
  if (!empty && !fs::exists(target + "/" + marker, ec))
    throw Error(target + ": exists and is not " + kind + " (no " + marker + "); refusing to replace it");
}

}  // namespace

StagedDirectory::StagedDirectory(const std::string& target, const std::string& marker, const std::string& kind)
    : target_(strip_trailing_slashes(target)), marker_(marker), kind_(kind) {
  if (target_.empty()) throw InvalidArgument("directory to write: empty path");
  check_replaceable(target_, marker_, kind_);
  make_directories(parent_of(target_));
  detail::remove_stale_temporaries(target_);
  for (int attempt = 0; lock_fd_ < 0; ++attempt) {
    std::string tmpl = target_ + ".tmp-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw Error(target_ + ": cannot create a staging directory: " + errno_text());
    lock_fd_ = ::open(tmpl.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_fd_ >= 0 && !detail::lock_temporary(lock_fd_)) {  // another writer's cleanup got it first
      ::close(lock_fd_);
      lock_fd_ = -1;
    }
    if (lock_fd_ < 0 && attempt == 8)
      throw Error(target_ + ": cannot create a staging directory: another process keeps removing it");
    path_ = tmpl;
  }
  detail::crash_point("dir.staged");
}

StagedDirectory::~StagedDirectory() { discard(); }

void StagedDirectory::discard() {
  if (!done_) {
    done_ = true;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
}

void StagedDirectory::commit() {
  if (done_) throw InvalidArgument(target_ + ": the staged directory was already committed or discarded");
  fsync_tree(path_);
  check_replaceable(target_, marker_, kind_);  // again: the target may have appeared while we wrote
  detail::crash_point("dir.synced");
  struct stat st {};
  if (::lstat(target_.c_str(), &st) != 0) {
    if (::rename(path_.c_str(), target_.c_str()) != 0)
      throw Error(target_ + ": cannot move the new directory into place: " + errno_text());
    done_ = true;
  } else if (!detail::rename_exchange_disabled() &&
             ::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    done_ = true;  // path_ now holds the old contents
    detail::crash_point("dir.exchanged");
    std::error_code ec;
    fs::remove_all(path_, ec);
  } else if (detail::rename_exchange_disabled() || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
    // The old directory is locked before it is moved aside: if this writer dies before the new
    // one is in place, the next writer of the target finds it unlocked and puts it back.
    const int old_fd = ::open(target_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (old_fd >= 0) detail::lock_temporary(old_fd);
    const std::string old = target_ + ".old-" + path_.substr(path_.size() - 6);
    if (::rename(target_.c_str(), old.c_str()) != 0) {
      const std::string err = errno_text();
      if (old_fd >= 0) ::close(old_fd);
      throw Error(target_ + ": cannot move the old directory aside: " + err);
    }
    detail::crash_point("dir.moved_aside");
    if (::rename(path_.c_str(), target_.c_str()) != 0) {
      const std::string err = errno_text();
      ::rename(old.c_str(), target_.c_str());
      if (old_fd >= 0) ::close(old_fd);
      throw Error(target_ + ": cannot move the new directory into place: " + err);
    }
    done_ = true;
    std::error_code ec;
    fs::remove_all(old, ec);
    if (old_fd >= 0) ::close(old_fd);
  } else {
    throw Error(target_ + ": cannot swap the new directory into place: " + errno_text());
  }
  detail::crash_point("dir.committed");
  fsync_path(parent_of(target_), O_RDONLY | O_DIRECTORY);
  discard();  // releases the lock (the staging path is gone or holds nothing of ours)
}

void write_directory_atomic(const std::string& target, const std::string& marker, const std::string& kind,
                            const std::function<void(const std::string& dir)>& fill) {
  StagedDirectory stage(target, marker, kind);
  fill(stage.path());
  stage.commit();
}

}  // namespace flashback
