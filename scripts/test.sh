#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds, runs every test.
# Usage: scripts/test.sh [--sanitize | --tsan]   (ASan + UBSan build in build-asan/; ThreadSanitizer
#   build in build-tsan/, which runs the concurrency tests only)
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$root/scripts/setup.sh"
if [ "${1:-}" = "--tsan" ]; then
  # The C++ tests tagged [threads] (one model, many sequences, a shared retriever), in the test binary
  # alone: Python would need libtsan preloaded. LibTorch, Xapian and libgomp are not instrumented: one
  # intra-op thread keeps LibTorch's OpenMP pool out, and tests/tsan.supp names the third-party frames
  # whose reports are not flashback's (none of flashback's own). Any report fails the run (status 66).
  "$root/scripts/build.sh" --tsan flashback_tests
  build=${FLASHBACK_BUILD_DIR:-$root/build-tsan}
  export TSAN_OPTIONS=${TSAN_OPTIONS:-suppressions=$root/tests/tsan.supp:second_deadlock_stack=1}
  export FLASHBACK_THREADS=1 OMP_NUM_THREADS=1
  exec "$build/tests/flashback_tests" "[threads]"
fi
"$root/scripts/build.sh" "$@"
build=${FLASHBACK_BUILD_DIR:-$root/build}
# The Python package, pip-installed into .venv as a user would (scikit-build-core
# builds it in build/python/).
# The references beside it (llama.cpp; HF transformers on PyPI torch 2.x).
if [ "${1:-}" != "--sanitize" ]; then
  "$root/scripts/install_python.sh"
  "$root/scripts/install_references.sh"
fi
if [ "${1:-}" = "--sanitize" ]; then
  build=${FLASHBACK_BUILD_DIR:-$root/build-asan}
  # LibTorch is not instrumented: its own allocations are not ours to report.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi
cd "$build"
ctest --output-on-failure -j"$(nproc)" --timeout 900
# The second world: flashback pip-installed into PyPI's current torch 2.x (.venv-ref) and its C++ tests,
# CLI and HF/PEFT interop built against the LibTorch in that wheel (build-torch2/); the minutes-long
# tests (label "long") ran above.
if [ "${1:-}" != "--sanitize" ] && [ "${FLASHBACK_TORCH2:-1}" != 0 ]; then
  rc=0
  "$root/scripts/build_torch2.sh" || rc=$?
  if [ "$rc" = 3 ]; then
    echo "test.sh: warning: no torch 2.x venv: the torch 2 world was skipped" >&2
  elif [ "$rc" != 0 ]; then
    exit "$rc"
  else
    cd "${FLASHBACK_TORCH2_BUILD_DIR:-$root/build-torch2}"
    ctest --output-on-failure -j"$(nproc)" --timeout 900 -LE long
  fi
fi
