# Sourced by the scripts: repository root and the shared models/data folder.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${FLASHBACK_SHARED:-$root/../shared}
if [ ! -d "$shared/models/stories260K" ]; then
  echo "error: the shared models/data folder is not at $shared (set FLASHBACK_SHARED=/path/to/shared)" >&2
  exit 1
fi
shared=$(cd "$shared" && pwd)
export FLASHBACK_SHARED=$shared
