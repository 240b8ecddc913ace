#!/usr/bin/env bash
# flashback in the second world the tests cover: PyPI's current torch 2.x (a CUDA build) in .venv-ref,
# where scripts/install_references.sh puts it beside HF transformers and PEFT. pip-installs flashback
# there as a user would; the same CMake build (build-torch2/) also builds the C++ tests and the CLI
# against the LibTorch inside the wheel, with FLASHBACK_CUDA on when that LibTorch has CUDA.
#
# CUDA: the wheel's LibTorch wants the CUDA toolkit it was built with. This machine's nvcc may be
# another release; PyPI's nvidia-cuda-nvcc at the wheel's CUDA runtime version is (installed into the
# venv from the cache), and build-torch2/cuda-toolkit lays the wheels' bin/include/lib out as a toolkit.
# Usage: scripts/build_torch2.sh   (after scripts/install_references.sh; prints nothing to do without torch 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${FLASHBACK_CACHE:-$HOME/.cache/flashback}
refvenv=${FLASHBACK_REF_VENV:-$root/.venv-ref}
build=${FLASHBACK_TORCH2_BUILD_DIR:-$root/build-torch2}
py=$refvenv/bin/python
if ! "$py" -c "import torch, sys; sys.exit(int(torch.__version__.split('.')[0]) < 2)" 2>/dev/null; then
  echo "build_torch2: warning: no torch 2.x in $refvenv (scripts/install_references.sh): the torch 2 world is skipped" >&2
  exit 3
fi
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
export CXX=${CXX:-c++}
pip=("$refvenv/bin/pip" install -q --no-index --find-links "$cache/ref-wheels" --find-links "$cache/wheels")

defines=(-DFLASHBACK_BUILD_TESTS=ON -DFLASHBACK_TEST_PYTHON="$py" -DFLASHBACK_TEST_HF=ON
         -DFLASHBACK_SHARED_DIR="${FLASHBACK_SHARED:-$root/../shared}" -DPython3_EXECUTABLE=/usr/bin/python3)
cuda=$("$py" -c "import torch; print(torch.version.cuda or '')")
if [ -n "$cuda" ]; then
  # nvcc and its nvvm at the CUDA runtime's exact version (cu12 wheels carry a -cu12 suffix)
  read -r suffix runtime < <("$py" - <<'EOF'
from importlib import metadata
for suffix in ("", "-cu13", "-cu12"):
    try:
        print(suffix or "-", metadata.version("nvidia-cuda-runtime" + suffix)); break
    except metadata.PackageNotFoundError:
        pass
EOF
  )
  [ "$suffix" = "-" ] && suffix=""
  if [ -z "${runtime:-}" ]; then
    echo "build_torch2: error: torch $cuda in $refvenv has no nvidia-cuda-runtime package to match nvcc to" >&2
    exit 1
  fi
  reqs=("nvidia-cuda-nvcc$suffix==$runtime")
  # CUDA 13 ships cicc (nvvm) and the crt headers (a dependency of nvcc from 13.1) as packages of their
  # own; pinned, or they run ahead of nvcc. --no-deps below: each one nvcc needs is named here.
  [ -z "$suffix" ] && reqs+=("nvidia-nvvm==$runtime" "nvidia-cuda-crt==$runtime")
  if ! "${pip[@]}" "${reqs[@]}" 2>/dev/null; then
    /usr/bin/python3 -m pip download -q --no-deps --dest "$cache/ref-wheels" "${reqs[@]}" >&2 &&
      "${pip[@]}" "${reqs[@]}" || { echo "build_torch2: error: cannot install ${reqs[*]} (offline?)" >&2; exit 1; }
  fi
  # The wheels' CUDA tree (site-packages/nvidia/cu13 or cuda_*/ per package for cu12) as one toolkit root.
  tk=$build/cuda-toolkit
  rm -rf "$tk" && mkdir -p "$tk/lib64"
  "$py" - "$tk" <<'EOF'
import os, sys, glob
from pathlib import Path
import nvidia
tk = Path(sys.argv[1])
roots = [Path(p) for base in nvidia.__path__ for p in glob.glob(os.path.join(base, "*")) if os.path.isdir(p)]
for r in roots:
    for sub in ("bin", "include", "nvvm"):
        for item in (r / sub).glob("*") if (r / sub).is_dir() else []:
            dest = tk / sub / item.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to(item)
    for lib in (r / "lib").glob("lib*.so*") if (r / "lib").is_dir() else []:
        # libcudart.so.13 -> lib64/libcudart.so.13 and the unversioned name CMake looks for
        for name in {lib.name, lib.name.split(".so")[0] + ".so"}:
            if not (tk / "lib64" / name).exists():
                (tk / "lib64" / name).symlink_to(lib)
EOF
  defines+=(-DFLASHBACK_CUDA=ON -DCUDAToolkit_ROOT="$tk" -DCUDA_TOOLKIT_ROOT_DIR="$tk" -DCMAKE_CUDA_COMPILER="$tk/bin/nvcc")
fi

cfg=(--config-settings=build-dir="$build")
for d in "${defines[@]}"; do cfg+=(--config-settings=cmake.define."${d#-D}"); done
echo "build_torch2: building flashback against torch $("$py" -c 'import torch; print(torch.__version__)') into $refvenv ($build)" >&2
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "${pip[@]}" --no-build-isolation --no-deps "${cfg[@]}" "$root"
# The C++ tests and the CLI: the same build dir, targets pip does not install.
cmake --build "$build" -j"$(nproc)"
"$py" -c "import flashback, torch; print('flashback', flashback.__version__, 'on torch', torch.__version__, 'in $refvenv')" >&2
