#!/usr/bin/env bash
# Installs the Debian packages (if missing), configures and builds.
# Usage: scripts/build.sh [--sanitize] [TARGET...]   (default: everything)
#   build dir: build/ (or build-asan/ with --sanitize); FLASHBACK_BUILD_DIR overrides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sanitize=OFF
if [ "${1:-}" = "--sanitize" ]; then sanitize=ON; shift; fi
"$root/scripts/setup.sh"
build=${FLASHBACK_BUILD_DIR:-$root/build}
[ "$sanitize" = ON ] && build=${FLASHBACK_BUILD_DIR:-$root/build-asan}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# The Python extension is built in the normal build (the sanitizer build
# would need ASan preloaded into Python); its tests run in the venv that
# scripts/install_python.sh makes.
python=ON
[ "$sanitize" = ON ] && python=OFF
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFLASHBACK_SANITIZE=$sanitize -DFLASHBACK_SHARED_DIR="${FLASHBACK_SHARED:-$root/../shared}" \
    -DFLASHBACK_BUILD_PYTHON=$python -DPython_EXECUTABLE=/usr/bin/python3 \
    -DFLASHBACK_TEST_PYTHON="$root/.venv/bin/python" >/dev/null
fi
if [ $# -gt 0 ]; then
  cmake --build "$build" -j"$(nproc)" --target "$@"
else
  cmake --build "$build" -j"$(nproc)"
fi
