// Where the tests find ../shared: $FLASHBACK_SHARED, else the configured default.
#pragma once

#include <cstdlib>
#include <string>

namespace flashback::test {

inline std::string shared_dir() {
  const char* env = std::getenv("FLASHBACK_SHARED");
  return env && *env ? std::string(env) : std::string(FLASHBACK_SHARED_DEFAULT);
}

inline std::string shared(const std::string& rel) { return shared_dir() + "/" + rel; }

}  // namespace flashback::test
