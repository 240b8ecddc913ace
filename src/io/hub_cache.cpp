#include "flashback/io/hub_cache.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

#include "flashback/error.hpp"

namespace flashback {
namespace {
namespace fs = std::filesystem;

bool is_hub_repo(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir / "snapshots", ec) && !fs::exists(dir / "config.json", ec);
}

std::string snapshot_of(const fs::path& repo) {
  std::error_code ec;
  std::ifstream ref(repo / "refs" / "main");
  std::string commit;
  if (ref && std::getline(ref, commit) && !commit.empty()) {
    const fs::path snap = repo / "snapshots" / commit;
    if (fs::is_directory(snap, ec)) return snap.string();
    throw FormatError(repo.string(), "refs/main names snapshot " + commit + ", which is not in snapshots/");
  }
  std::vector<fs::path> snaps;
  for (const auto& e : fs::directory_iterator(repo / "snapshots", ec))
    if (e.is_directory(ec)) snaps.push_back(e.path());
  if (snaps.size() == 1) return snaps[0].string();
  throw FormatError(repo.string(), snaps.empty() ? "a hub cache folder with no snapshot"
                                                 : "a hub cache folder with " + std::to_string(snaps.size()) +
                                                       " snapshots and no refs/main: pass snapshots/<commit>");
}

fs::path hub_cache_dir() {
  if (const char* c = std::getenv("HF_HUB_CACHE"); c && *c) return c;
  if (const char* h = std::getenv("HF_HOME"); h && *h) return fs::path(h) / "hub";
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : "/") / ".cache" / "huggingface" / "hub";
}
}  // namespace

std::string resolve_model_path(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::exists(p, ec)) return is_hub_repo(p) ? snapshot_of(p) : path;
  // "org/name": one slash, neither end, no dots or spaces that a file path would have
  const auto slash = path.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == path.size() || path.find('/', slash + 1) != std::string::npos ||
      path[0] == '.' || path.find(' ') != std::string::npos)
    return path;
  const fs::path repo = hub_cache_dir() / ("models--" + path.substr(0, slash) + "--" + path.substr(slash + 1));
  return fs::is_directory(repo, ec) ? snapshot_of(repo) : path;
}

}  // namespace flashback
