#!/usr/bin/env bash
# Makes .venv (Debian's Python with its torch, numpy, pytest, sentencepiece,
# tqdm, matplotlib, nbconvert visible) and pip-installs flashback into it,
# offline: the build requirement (scikit-build-core) comes from the cache
# scripts/setup.sh fills; scikit-build-core builds in build/python/.
# Usage: scripts/install_python.sh [--editable]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
venv=${FLASHBACK_VENV:-$root/.venv}
wheels=${FLASHBACK_CACHE:-$HOME/.cache/flashback}/wheels
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# The compiler build.sh's CMake picks (scikit-build-core would take Python's
# sysconfig one, the same gcc under another name, which ccache tells apart).
export CXX=${CXX:-c++}
pip=("$venv/bin/pip" install -q --no-index --find-links "$wheels")
"${pip[@]}" "scikit-build-core>=0.10"
# The tests' references, when scripts/setup.sh could cache them.
for ref in gguf tokenizers; do
  if ls "$wheels"/"$ref"-*.whl >/dev/null 2>&1; then "${pip[@]}" "$ref"; fi
done
editable=()
[ "${1:-}" = "--editable" ] && editable=(-e)
"${pip[@]}" --no-build-isolation --no-deps "${editable[@]}" "$root"
"$venv/bin/python" -c "import flashback; print('flashback', flashback.__version__, 'installed in $venv')" >&2
# A Jupyter kernel that runs this venv's Python (the notebooks import flashback).
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (flashback)" >/dev/null 2>&1
