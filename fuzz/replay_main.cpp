// fuzz_replay: the harnesses without libFuzzer, for the ordinary test suite.
//   fuzz_replay <harness> <file or directory>...   runs each file (a directory: each file in it)
//   fuzz_replay --list                              the harnesses
// Exit 0 when every input ends cleanly (parsed, or a flashback::Error); 1 naming the input whose
// run threw anything else (std::bad_alloc included: the address space is capped at 8 GiB); a
// crash or a failed FUZZ_CHECK aborts, as under libFuzzer.
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <vector>

#include "harness.hpp"

namespace flashback::fuzz {
namespace {
std::map<std::string, TargetFn>& targets() {
  static std::map<std::string, TargetFn> t;
  return t;
}
}  // namespace

bool register_target(const char* name, TargetFn fn) {
  targets()[name] = fn;
  return true;
}

}  // namespace flashback::fuzz

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
#if !defined(__SANITIZE_ADDRESS__)
#if defined(__has_feature)
#if !__has_feature(address_sanitizer)
#define FLASHBACK_REPLAY_LIMIT_MEMORY 1
#endif
#else
#define FLASHBACK_REPLAY_LIMIT_MEMORY 1
#endif
#endif
#ifdef FLASHBACK_REPLAY_LIMIT_MEMORY
  // A malformed file may not make a parser allocate what it claims (a 100 GB tensor, 10^9 tokens):
  // past 8 GiB of address space an allocation fails, escapes as std::bad_alloc and fails the run,
  // as libFuzzer's -malloc_limit_mb does under the fuzzers. (ASan reserves terabytes: not there.)
  const rlimit limit{rlim_t(8) << 30, rlim_t(8) << 30};
  setrlimit(RLIMIT_AS, &limit);
#endif
  const auto& targets = flashback::fuzz::targets();
  if (argc == 2 && std::string(argv[1]) == "--list") {
    for (const auto& [name, fn] : targets) std::cout << name << "\n";
    return 0;
  }
  if (argc < 3) {
    std::cerr << "usage: fuzz_replay <harness> <file or directory>... | --list\n";
    return 2;
  }
  const auto it = targets.find(argv[1]);
  if (it == targets.end()) {
    std::cerr << "fuzz_replay: no harness '" << argv[1] << "' (--list)\n";
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 2; i < argc; ++i) {
    std::error_code ec;
    if (fs::is_directory(argv[i], ec)) {
      for (const auto& e : fs::recursive_directory_iterator(argv[i]))
        if (e.is_regular_file()) inputs.push_back(e.path());
    } else if (fs::is_regular_file(argv[i], ec)) {
      inputs.push_back(argv[i]);
    } else {
      std::cerr << "fuzz_replay: " << argv[i] << ": no such file or directory\n";
      return 2;
    }
  }
  std::sort(inputs.begin(), inputs.end());
  for (const auto& p : inputs) {
    std::ifstream in(p, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    try {
      it->second(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const std::exception& e) {
      std::cerr << "fuzz_replay " << argv[1] << ": " << p.string() << ": escaped: " << e.what() << "\n";
      return 1;
    }
  }
  std::cout << "fuzz_replay " << argv[1] << ": " << inputs.size() << " inputs, all clean\n";
  return 0;
}
