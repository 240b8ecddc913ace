// Index directories: meta.json (LibTorch-free: flashback_corpus).
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "flashback/error.hpp"
#include "flashback/formats/mapped_file.hpp"
#include "flashback/io/atomic_file.hpp"
#include "index_dir.hpp"

namespace flashback {

namespace {

constexpr int kMetaVersion = 1;

std::string errno_text() { return std::strerror(errno); }

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

}  // namespace

namespace detail {

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
  write_file_atomic(dir + "/" + kIndexMarker, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

nlohmann::json read_index_meta(const std::string& dir_in) {
  const std::string dir = strip_trailing_slashes(dir_in);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) throw FormatError(dir, "no index here: " + errno_text());
  if (!S_ISDIR(st.st_mode)) throw FormatError(dir, "not an index directory");
  const std::string meta = dir + "/" + kIndexMarker;
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

}  // namespace flashback
