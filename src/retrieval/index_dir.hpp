// The index directory's meta.json. Internal to flashback_retrieval.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "flashback/io/atomic_dir.hpp"
#include "flashback/retrieval/index.hpp"

namespace flashback::detail {

// Every index directory holds this file; StagedDirectory (io/atomic_dir.hpp)
// replaces only directories that do.
inline constexpr const char* kIndexMarker = "meta.json";

// Writes meta.json (atomically) from `info` plus kind-specific `extra` fields.
void write_index_info(const std::string& dir, const IndexInfo& info, const nlohmann::json& extra = nlohmann::json::object());
// meta.json as JSON, validated as read_index_info does.
nlohmann::json read_index_meta(const std::string& dir);

}  // namespace flashback::detail
