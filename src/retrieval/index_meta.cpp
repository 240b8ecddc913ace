// Index directories: meta.json, atomic replacement, opening by kind.
#include <fcntl.h>
#include <stdio.h>  // renameat2 (glibc >= 2.28)
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_file.hpp"
#include "index_dir.hpp"

namespace flashback {

namespace fs = std::filesystem;

namespace {

constexpr int kMetaVersion = 1;

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

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// An existing target may be replaced only if it is (or looks like) an index:
// `--out ~` must not wipe a home directory.
void check_replaceable(const std::string& target) {
  struct stat st {};
  if (::stat(target.c_str(), &st) != 0) return;  // absent: fine
  if (!S_ISDIR(st.st_mode)) throw Error(target + ": exists and is not a directory; refusing to replace it");
  std::error_code ec;
  bool empty = fs::is_empty(target, ec);
  if (!empty && !fs::exists(target + "/meta.json", ec))
    throw Error(target + ": exists and is not an index (no meta.json); refusing to replace it");
}

}  // namespace

namespace detail {

StagingDir::StagingDir(const std::string& target) : target_(strip_trailing_slashes(target)) {
  if (target_.empty()) throw InvalidArgument("index directory: empty path");
  check_replaceable(target_);
  make_directories(parent_of(target_));
  std::string tmpl = target_ + ".tmp-XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw Error(target_ + ": cannot create a staging directory: " + errno_text());
  path_ = tmpl;
}

StagingDir::~StagingDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void StagingDir::commit() {
  fsync_dir(path_);
  check_replaceable(target_);  // again: the target may have appeared while we built
  struct stat st {};
  if (::lstat(target_.c_str(), &st) != 0) {
    if (::rename(path_.c_str(), target_.c_str()) != 0)
      throw Error(target_ + ": cannot move the new index into place: " + errno_text());
    committed_ = true;
  } else if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    committed_ = true;  // path_ now holds the old index
    std::error_code ec;
    fs::remove_all(path_, ec);
  } else if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
    // No RENAME_EXCHANGE on this filesystem: move the old index aside first.
    // A crash between the two renames leaves no index at DIR (the old one
    // survives as DIR.old-*), still never half of one.
    std::string old = target_ + ".old-" + path_.substr(path_.size() - 6);
    if (::rename(target_.c_str(), old.c_str()) != 0)
      throw Error(target_ + ": cannot move the old index aside: " + errno_text());
    if (::rename(path_.c_str(), target_.c_str()) != 0) {
      std::string err = errno_text();
      ::rename(old.c_str(), target_.c_str());
      throw Error(target_ + ": cannot move the new index into place: " + err);
    }
    committed_ = true;
    std::error_code ec;
    fs::remove_all(old, ec);
  } else {
    throw Error(target_ + ": cannot swap the new index into place: " + errno_text());
  }
  fsync_dir(parent_of(target_));
}

void write_index_info(const std::string& dir, const IndexInfo& info, const nlohmann::json& extra) {
  nlohmann::ordered_json j;
  j["flashback_index"] = kMetaVersion;
  j["kind"] = info.kind;
  j["passages"] = info.passages;
  j["max_tokens"] = info.max_tokens;
  j["corpus"] = info.corpus;
  j["format"] = info.format;
  j["encoder"] = info.encoder;
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  write_file_atomic(dir + "/meta.json", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

nlohmann::json read_index_meta(const std::string& dir_in) {
  const std::string dir = strip_trailing_slashes(dir_in);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) throw FormatError(dir, "no index here: " + errno_text());
  if (!S_ISDIR(st.st_mode)) throw FormatError(dir, "not an index directory");
  const std::string meta = dir + "/meta.json";
  if (::stat(meta.c_str(), &st) != 0) throw FormatError(dir, "not an index: meta.json is missing");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(meta));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(dir, std::string("corrupt index: meta.json: ") + e.what());
  } catch (const FormatError& e) {
    throw FormatError(dir, std::string("corrupt index: ") + e.what());
  }
  auto bad = [&](const std::string& what) { return FormatError(dir, "corrupt index: meta.json: " + what); };
  if (!j.is_object()) throw bad("not a JSON object");
  auto kind = j.find("kind");
  if (kind == j.end() || !kind->is_string()) throw bad("no \"kind\"");
  if (*kind != "bm25" && *kind != "dense") throw bad("unknown kind '" + kind->get<std::string>() + "'");
  auto n = j.find("passages");
  if (n == j.end() || !n->is_number_integer() || n->get<int64_t>() < 0) throw bad("\"passages\" is not a count");
  for (const char* key : {"corpus", "format", "encoder"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_string()) throw bad(std::string("\"") + key + "\" is not a string");
  }
  auto mt = j.find("max_tokens");
  if (mt != j.end() && !mt->is_number_integer()) throw bad("\"max_tokens\" is not an integer");
  return j;
}

}  // namespace detail

IndexInfo read_index_info(const std::string& dir) {
  nlohmann::json j = detail::read_index_meta(dir);
  IndexInfo info;
  info.kind = j["kind"].get<std::string>();
  info.passages = j["passages"].get<int64_t>();
  info.max_tokens = j.value("max_tokens", int64_t{0});
  info.corpus = j.value("corpus", std::string());
  info.format = j.value("format", std::string());
  info.encoder = j.value("encoder", std::string());
  return info;
}

std::unique_ptr<Retriever> open_index(const std::string& dir, std::shared_ptr<TextEncoder> encoder) {
  IndexInfo info = read_index_info(dir);
  if (info.kind == "bm25") return std::make_unique<BM25Retriever>(dir);
  if (!encoder)
    throw InvalidArgument(dir + ": a dense index needs a text encoder (it was built with '" + info.encoder + "')");
  return std::make_unique<DenseRetriever>(dir, std::move(encoder));
}

}  // namespace flashback
