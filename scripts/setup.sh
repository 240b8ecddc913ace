#!/usr/bin/env bash
# Installs every Debian package flashback needs. Idempotent: quick when all is present.
# Usage: scripts/setup.sh [--python] [--dev]
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache
  libtorch-dev libopenblas0-openmp
  libeigen3-dev catch2 libcli11-dev nlohmann-json3-dev libxapian-dev
  pybind11-dev python3-pybind11 python3-dev python3-torch python3-numpy python3-venv python3-pip
  python3-setuptools python3-wheel-whl python3-sentencepiece python3-pytest
  python3-tqdm python3-matplotlib python3-nbconvert python3-nbclient python3-ipykernel
  clang libclang-rt-14-dev
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${#missing[@]} Debian package(s): ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done" >&2
