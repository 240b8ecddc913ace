#!/usr/bin/env bash
# Installs the built tree into a temporary prefix, builds examples/generate as
# a separate CMake project against it (find_package(flashback)), and checks
# its greedy output from stories260K against the golden text.
set -euo pipefail
build_dir=$1; source_dir=$2; shared=$3
work=$(mktemp -d /tmp/flashback-install-XXXXXX)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$source_dir/examples/generate" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" "${launcher[@]}" >/dev/null
cmake --build "$work/build" >/dev/null
out=$("$work/build/generate" "$shared/models/stories260K/stories260K.bin" "Once upon a time" 20)
echo "$out"
# Greedy from "Once upon a time" follows the golden greedy text from BOS.
golden="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day"
[ ${#out} -ge 70 ] || { echo "output too short" >&2; exit 1; }
[[ "$golden" == "$out"* ]] || { echo "output is not a prefix of the golden text: $golden" >&2; exit 1; }
