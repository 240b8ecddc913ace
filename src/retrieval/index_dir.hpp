// The index directory: meta.json and atomic replacement. Internal to
// flashback_retrieval (index_meta.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "flashback/retrieval/index.hpp"

namespace flashback::detail {

// An index is built in "<target>.tmp-XXXXXX" (a sibling: same filesystem, so
// the final rename is atomic) and swapped into place by commit(): a crash
// leaves the old index or none, never half of one. Until commit() the
// destructor removes the staging directory.
class StagingDir {
 public:
  // Creates the parent directories and the staging directory. Refuses a
  // target that exists and is not an index (a file, or a non-empty directory
  // without meta.json), before any work is done.
  explicit StagingDir(const std::string& target);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const std::string& path() const { return path_; }
  // Swaps the staging directory into place (renameat2 RENAME_EXCHANGE when
  // the target exists, then the old index is removed).
  void commit();

 private:
  std::string target_, path_;
  bool committed_ = false;
};

// Writes meta.json (atomically) from `info` plus kind-specific `extra` fields.
void write_index_info(const std::string& dir, const IndexInfo& info, const nlohmann::json& extra = nlohmann::json::object());
// meta.json as JSON, validated as read_index_info does.
nlohmann::json read_index_meta(const std::string& dir);

}  // namespace flashback::detail
