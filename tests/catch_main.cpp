#define CATCH_CONFIG_RUNNER
#include <cstdlib>

#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  // One intra-op thread per test process unless told otherwise: CTest runs
  // test processes in parallel, and OpenMP threads fighting over 2 cores
  // make LibTorch tens of times slower.
  setenv("FLASHBACK_THREADS", "1", /*overwrite=*/0);
  return Catch::Session().run(argc, argv);
}
