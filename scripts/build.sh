#!/usr/bin/env bash
# Configures and builds the C++ library, CLI, tests and the extension for the
# tests (scripts/setup.sh installs what this needs; test.sh and run.sh call it).
# Usage: scripts/build.sh [--sanitize | --tsan] [TARGET...]   (default: everything)
#   build dir: build/ (build-asan/ with --sanitize: ASan + UBSan; build-tsan/ with --tsan:
#   ThreadSanitizer); FLASHBACK_BUILD_DIR overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sanitize=OFF
tsan=OFF
if [ "${1:-}" = "--sanitize" ]; then sanitize=ON; shift; fi
if [ "${1:-}" = "--tsan" ]; then tsan=ON; shift; fi
build=${FLASHBACK_BUILD_DIR:-$root/build}
[ "$sanitize" = ON ] && build=${FLASHBACK_BUILD_DIR:-$root/build-asan}
[ "$tsan" = ON ] && build=${FLASHBACK_BUILD_DIR:-$root/build-tsan}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# The Python package is built by pip (scripts/install_python.sh, scikit-build-core
# in build/python/); this build registers its tests, which run in the venv
# that script makes (not under the sanitizers: Python would need ASan preloaded).
test_python="$root/.venv/bin/python"
if [ "$sanitize" = ON ] || [ "$tsan" = ON ]; then test_python=""; fi
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFLASHBACK_SANITIZE=$sanitize -DFLASHBACK_TSAN=$tsan -DFLASHBACK_SHARED_DIR="${FLASHBACK_SHARED:-$root/../shared}" \
    -DPython3_EXECUTABLE=/usr/bin/python3 -DFLASHBACK_TEST_PYTHON="$test_python" >/dev/null
fi
if [ $# -gt 0 ]; then
  cmake --build "$build" -j"$(nproc)" --target "$@"
else
  cmake --build "$build" -j"$(nproc)"
fi
