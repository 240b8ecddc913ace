// A fuzz harness per entry point that reads untrusted bytes (docs/reliability.md).
//
//   FLASHBACK_FUZZ_TARGET(safetensors) { ...parse data[0, size)... }
//
// Built with -DFLASHBACK_FUZZ=ON (clang) the body is libFuzzer's LLVMFuzzerTestOneInput, one
// executable per harness (build-fuzz/fuzz/fuzz_<name>). In the ordinary build every harness
// registers with fuzz_replay instead, which runs saved inputs (fuzz/regressions/<name>/, the
// generated seeds) through the same body as a test.
//
// The contract a harness checks: bad bytes end in flashback::Error (a FormatError or an
// InvalidArgument naming the input) or succeed; anything else (another exception, a crash, a
// sanitizer report, a broken property: FUZZ_CHECK) is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "flashback/error.hpp"

namespace flashback::fuzz {

using TargetFn = void (*)(const uint8_t* data, size_t size);
// Adds a harness to fuzz_replay's table (the ordinary build).
bool register_target(const char* name, TargetFn fn);

// The path of a file holding `bytes`, for the parsers that read paths (they map the file, as a
// user's checkpoint is mapped). One scratch directory per process, in /dev/shm where there is
// one, removed at exit; `name` is the file's name in it.
std::string write_input(std::string_view bytes, const std::string& name = "input");
// The scratch directory itself, and a directory `name` in it (created once), for inputs that are
// directories: an adapter, an index.
const std::string& scratch_dir();
std::string scratch_subdir(const std::string& name);

// Runs `fn`: flashback::Error is how bad input ends; any other exception escapes to the fuzzer.
template <class F>
bool expect_clean(F&& fn) {
  try {
    fn();
    return true;
  } catch (const flashback::Error&) {
    return false;
  }
}

// Reads every byte of a span a parser handed out, so a span past the mapping faults here.
inline void touch(const void* p, size_t n) {
  const volatile uint8_t* b = static_cast<const volatile uint8_t*>(p);
  uint8_t acc = 0;
  for (size_t i = 0; i < n; ++i) acc ^= b[i];
  static volatile uint8_t sink;
  sink = acc;
}

// Whether the span [p, p + n) a parser handed out lies inside the mapped file [base, base + size).
inline bool inside(const uint8_t* p, size_t n, const uint8_t* base, size_t size) {
  return n == 0 || (p >= base && n <= size && static_cast<size_t>(p - base) <= size - n);
}

[[noreturn]] inline void fail(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", file, line, what);
  std::abort();
}

}  // namespace flashback::fuzz

// A property that must hold for every input (an abort is a finding, like a crash).
#define FUZZ_CHECK(cond) ((cond) ? (void)0 : ::flashback::fuzz::fail(#cond, __FILE__, __LINE__))

#ifdef FLASHBACK_LIBFUZZER
#define FLASHBACK_FUZZ_TARGET(name)                                                 \
  static void fuzz_target_##name(const uint8_t* data, size_t size);                 \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {         \
    fuzz_target_##name(data, size);                                                 \
    return 0;                                                                       \
  }                                                                                 \
  static void fuzz_target_##name(const uint8_t* data, size_t size)
#else
#define FLASHBACK_FUZZ_TARGET(name)                                                 \
  static void fuzz_target_##name(const uint8_t* data, size_t size);                 \
  [[maybe_unused]] static const bool fuzz_registered_##name =                       \
      ::flashback::fuzz::register_target(#name, fuzz_target_##name);                \
  static void fuzz_target_##name(const uint8_t* data, size_t size)
#endif
