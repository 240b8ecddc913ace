#!/usr/bin/env bash
# The independent implementations the tests hold flashback to, beyond the
# light ones scripts/setup.sh caches (gguf, tokenizers):
#   - llama.cpp, as PyPI's llama-cpp-python (an sdist: built once, without
#     -march=native so the cached wheel runs on any x86-64 machine), installed
#     into flashback's .venv: tokenizer and logits peer;
#   - HF transformers on PyPI's current torch 2.x, in a venv of its own
#     (.venv-ref): the two torches cannot share a process with Debian's 1.13.
# Everything is cached under ~/.cache/flashback (offline after the first
# time). A reference that cannot be had is a warning here and a visible skip
# in the tests, never a failure of the set-up.
# Usage: scripts/install_references.sh    (after scripts/install_python.sh)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${FLASHBACK_CACHE:-$HOME/.cache/flashback}
wheels=$cache/wheels
refwheels=$cache/ref-wheels
venv=${FLASHBACK_VENV:-$root/.venv}
refvenv=${FLASHBACK_REF_VENV:-$root/.venv-ref}
llama_version=0.3.36
mkdir -p "$wheels" "$refwheels"
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}

warn() { echo "install_references: warning: $*" >&2; }

# llama.cpp
if ! ls "$wheels"/llama_cpp_python-$llama_version-*.whl >/dev/null 2>&1; then
  echo "install_references: building llama-cpp-python $llama_version (llama.cpp from source, ~10 min on 2 cores) into $wheels" >&2
  log=$cache/llama-cpp-python-build.log
  if CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF" \
     CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
     /usr/bin/python3 -m pip wheel -q --no-deps "llama-cpp-python==$llama_version" -w "$wheels" >"$log" 2>&1; then
    /usr/bin/python3 -m pip download -q --dest "$wheels" "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5" >&2 ||
      warn "cannot download llama-cpp-python's dependencies"
  else
    warn "llama-cpp-python did not build (offline? see $log): the llama.cpp comparisons will be skipped"
  fi
fi
if ls "$wheels"/llama_cpp_python-$llama_version-*.whl >/dev/null 2>&1; then
  # numpy stays Debian's (the .venv sees it): the wheel's other needs come from the cache
  "$venv/bin/pip" install -q --no-index --find-links "$wheels" "llama-cpp-python==$llama_version" ||
    warn "llama-cpp-python did not install into $venv"
fi

# PyPI's current torch 2.x with HF transformers and PEFT: the references, and the second torch world
# flashback is built and tested in (scripts/build_torch2.sh; pytest and scikit-build-core for that).
refs=(torch transformers accelerate gguf safetensors numpy peft pytest)
missing=()
for r in "${refs[@]}"; do
  ls "$refwheels"/"$r"-*.whl >/dev/null 2>&1 || missing+=("$r")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_references: caching ${missing[*]} in $refwheels (torch 2.x is a CUDA build: several GB, ~10 min the first time)" >&2
  /usr/bin/python3 -m pip download -q --dest "$refwheels" "${refs[@]}" >&2 ||
    warn "cannot download ${missing[*]} (offline?): the HF comparisons and the torch 2 world will be skipped"
fi
if ls "$refwheels"/torch-2*.whl "$refwheels"/transformers-*.whl >/dev/null 2>&1; then
  if [ ! -x "$refvenv/bin/python" ] || ! "$refvenv/bin/python" -c "import torch, transformers, accelerate, gguf, peft, pytest, scikit_build_core" 2>/dev/null; then
    echo "install_references: installing torch 2.x + transformers + peft into $refvenv" >&2
    [ -x "$refvenv/bin/python" ] || /usr/bin/python3 -m venv "$refvenv"
    "$refvenv/bin/pip" install -q --no-index --find-links "$refwheels" --find-links "$wheels" "${refs[@]}" \
      "scikit-build-core>=0.10" || warn "torch/transformers/peft did not install into $refvenv"
  fi
fi
exit 0
