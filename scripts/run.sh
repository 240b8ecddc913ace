#!/usr/bin/env bash
# The main job on the embedded default: stories260K (from ../shared) continues
# a prompt. Installs what it needs and builds the CLI first.
# Usage: scripts/run.sh [extra flashback generate flags...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$root/scripts/build.sh" flashback_cli >&2
build=${FLASHBACK_BUILD_DIR:-$root/build}
exec "$build/flashback" generate --model "$shared/models/stories260K/stories260K.bin" \
  --prompt "Once upon a time" -n 128 "$@"
