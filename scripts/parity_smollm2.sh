#!/usr/bin/env bash
# The SmolLM2 parity figures docs/models.md records: tests/python/test_smollm2_parity.py
# (HF transformers, llama.cpp) with the perplexity check on 20,000 WikiText-103
# test tokens instead of the suite's 4,000. About 15 minutes on 2 cores.
# Usage: scripts/parity_smollm2.sh [OUT.json]   (default build/smollm2_parity_20000.json)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build/smollm2_parity_20000.json}
"$root/scripts/install_references.sh"
FLASHBACK_SHARED=${FLASHBACK_SHARED:-$root/../shared} FLASHBACK_CLI=${FLASHBACK_CLI:-$root/build/flashback} \
FLASHBACK_THREADS=${FLASHBACK_THREADS:-$(nproc)} OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} \
FLASHBACK_PARITY_EVAL_TOKENS=20000 FLASHBACK_PARITY_JSON="$out" \
  "$root/.venv/bin/python" -m pytest -q -s -p no:cacheprovider "$root/tests/python/test_smollm2_parity.py"
echo "figures: $out" >&2
