#!/usr/bin/env bash
# The main job on the embedded default: FlashBack on stories260K (from
# ../shared) with a BM25 index of TinyStories. The same prompt is continued
# with the document prepended (In-Context RALM) and appended (FlashBack), side
# by side, with the retrieval / re-encode / decode counters and times.
# Installs what it needs, builds the CLI, builds the index once.
# Usage: scripts/run.sh [extra flashback ralm flags, e.g. -n 256 --no-marks]
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$root/scripts/setup.sh"
"$root/scripts/build.sh" flashback_cli >&2
build=${FLASHBACK_BUILD_DIR:-$root/build}
data=$build/data
/usr/bin/python3 "$root/scripts/prepare_tinystories.py" "$shared" "$data"
model=$shared/models/stories260K/stories260K.bin
index=$data/tinystories-bm25
if [ ! -f "$index/meta.json" ]; then
  "$build/flashback" index --corpus "$data/tinystories_corpus.txt" --format paragraphs \
    --tokenizer "$shared/models/stories260K/tok512.model" --out "$index" >&2
fi
exec "$build/flashback" ralm --model "$model" --index "$index" \
  --prompt "Once upon a time, there was a little girl named Lily. She loved to play in the park." \
  -n 128 --mode prepend,append "$@"
