#include "flashback/runtime.hpp"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace flashback {

namespace {
int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return (end && *end == '\0' && n > 0 && n < 4096) ? static_cast<int>(n) : 0;
}
}  // namespace

int init_threads(int n) {
  if (n <= 0) n = env_int("FLASHBACK_THREADS");
  if (n <= 0) n = env_int("OMP_NUM_THREADS");
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  if (at::get_num_threads() != n) at::set_num_threads(n);
  return at::get_num_threads();
}

void ensure_default_threads() {
  static std::once_flag once;
  std::call_once(once, [] {
    // $FLASHBACK_THREADS is an explicit request: LibTorch 2.x starts with every core, not 1, so testing
    // for 1 alone dropped it (tests/test_concurrency.cpp says what that cost).
    if (env_int("FLASHBACK_THREADS") > 0 || at::get_num_threads() == 1) init_threads(0);
  });
}

}  // namespace flashback
