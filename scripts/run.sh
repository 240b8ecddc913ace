#!/usr/bin/env bash
# The main job on the embedded default: stories260K (from ../shared) continues
# a prompt. Installs what it needs and builds the CLI first.
# Usage: scripts/run.sh [extra flashback generate flags...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${FLASHBACK_SHARED:-$root/../shared}
if [ ! -d "$shared/models/stories260K" ]; then
  echo "error: the shared models/data folder is not at $shared (set FLASHBACK_SHARED=/path/to/shared)" >&2
  exit 1
fi
export FLASHBACK_SHARED=$(cd "$shared" && pwd)
"$root/scripts/build.sh" flashback_cli >&2
build=${FLASHBACK_BUILD_DIR:-$root/build}
exec "$build/flashback" generate --model "$shared/models/stories260K/stories260K.bin" \
  --prompt "Once upon a time" -n 128 "$@"
