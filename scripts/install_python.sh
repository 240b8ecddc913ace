#!/usr/bin/env bash
# Makes .venv (Debian's Python with its torch, numpy, pytest, sentencepiece,
# tqdm, matplotlib, nbconvert visible) and pip-installs flashback into it,
# offline. The CMake build directory is reused: FLASHBACK_CMAKE_BUILD_DIR, else build/.
# Usage: scripts/install_python.sh [--editable]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
venv=${FLASHBACK_VENV:-$root/.venv}
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
export FLASHBACK_CMAKE_BUILD_DIR=${FLASHBACK_CMAKE_BUILD_DIR:-$root/build}
if [ "${1:-}" = "--editable" ]; then
  "$venv/bin/pip" install --no-build-isolation --no-deps -q -e "$root"
else
  "$venv/bin/pip" install --no-build-isolation --no-deps -q "$root"
fi
"$venv/bin/python" -c "import flashback; print('flashback', flashback.__version__, 'installed in $venv')" >&2
# A Jupyter kernel that runs this venv's Python (the notebooks import flashback).
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (flashback)" >/dev/null 2>&1
