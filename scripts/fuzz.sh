#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser (fuzz/, docs/reliability.md): builds the libFuzzer
# harnesses with clang, ASan and UBSan in build-fuzz/, writes the seed corpora (../shared and
# flashback's own writers), and runs each harness, two at a time.
# Usage: scripts/fuzz.sh [--tests] [--seconds N | --long] [--text] [HARNESS...]
#   default: 30 seconds per harness; --long: 1,000,000 executions per harness; --text: only the
#   LibTorch-free harnesses (all but the adapter's, which needs the instrumented LibTorch library);
#   --tests: first build and run the C++ tests (LibTorch's included) in the same ASan + UBSan build.
#   CI runs `--tests --seconds 30`.
#   The corpus grows in build-fuzz/corpus/<harness>/ across runs; findings (crash-*, leak-*,
#   timeout-*, oom-*) land in build-fuzz/artifacts/<harness>/ and fail the run: each becomes an
#   input in fuzz/regressions/<harness>/ (replayed by the ordinary suite) and a fix.
#   A summary per harness (executions, seconds, coverage, findings): build-fuzz/fuzz-summary.json.
set -euo pipefail
source "$(dirname "$0")/common.sh"
seconds=30
runs=""
text_only=0
tests=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --long) runs=1000000; seconds=0; shift ;;
    --text) text_only=1; shift ;;
    --tests) tests=1; shift ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
build=${FLASHBACK_FUZZ_BUILD_DIR:-$root/build-fuzz}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
if [ ! -f "$build/build.ninja" ]; then
  CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHBACK_FUZZ=ON \
    -DFLASHBACK_BUILD_TESTS=ON -DFLASHBACK_BUILD_CLI=OFF -DFLASHBACK_SHARED_DIR="$shared" \
    -DPython3_EXECUTABLE=/usr/bin/python3 -DFLASHBACK_TEST_PYTHON= >/dev/null
fi
# LibTorch (the adapter harness, the C++ tests) is not instrumented: its allocations are not ours to report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ "$tests" = 1 ]; then
  echo "fuzz.sh: the C++ tests under ASan + UBSan in $build" >&2
  cmake --build "$build" -j"$(nproc)" --target flashback_text_tests flashback_tests
  # Two processes, one per core, split by source file (Catch2's -# tags; the second takes what the first
  # does not, so every test runs once): test_context and test_golden are 67 s of the 129 s instrumented.
  first="[#test_context],[#test_golden]"
  export FLASHBACK_THREADS=1
  { "$build/tests/flashback_tests" -# "$first" && "$build/tests/flashback_text_tests"; } >"$build/tests-1.log" 2>&1 &
  pid=$!
  rc=0 rc1=0
  "$build/tests/flashback_tests" -# "$(echo "$first" | sed 's/^/~/; s/,/~/g')" >"$build/tests-2.log" 2>&1 || rc=$?
  wait "$pid" || rc1=$?
  cat "$build/tests-1.log" "$build/tests-2.log" >&2
  [ "$rc" = 0 ] && [ "$rc1" = 0 ] || { echo "fuzz.sh: the C++ tests failed under ASan + UBSan" >&2; exit 1; }
  unset FLASHBACK_THREADS
fi
harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then
  harnesses=(safetensors gguf dequantize llama2c llama2c_tokenizer sentencepiece_model tokenizer_json config_json
             encode_decode corpus index_meta)
  [ "$text_only" = 1 ] || harnesses+=(adapter)
fi
echo "fuzz.sh: building ${harnesses[*]} in $build" >&2
cmake --build "$build" -j"$(nproc)" --target fuzz_seeds $(printf 'fuzz_%s ' "${harnesses[@]}")
"$build/fuzz/fuzz_seeds" "$build/seeds" "$shared" >&2

# Leaks count while fuzzing (libFuzzer checks each input); LibTorch's one-time allocations do not leak.
export ASAN_OPTIONS=${ASAN_OPTIONS/detect_leaks=0:/}
run_one() {
  local h=$1 dict="" max_len=65536
  case "$h" in
    gguf) dict=$root/fuzz/dict/gguf.dict ;;
    config_json|tokenizer_json|index_meta|adapter|safetensors|corpus) dict=$root/fuzz/dict/json.dict ;;
  esac
  # Tokenizing costs per byte (~10 ms per KB instrumented): texts short enough for a million runs.
  case "$h" in
    encode_decode) max_len=512 ;;
    corpus) max_len=1024 ;;
  esac
  mkdir -p "$build/corpus/$h" "$build/artifacts/$h"
  local args=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 -max_len=$max_len -print_final_stats=1
              -artifact_prefix="$build/artifacts/$h/")
  [ -n "$dict" ] && args+=(-dict="$dict")
  if [ -n "$runs" ]; then args+=(-runs="$runs"); else args+=(-max_total_time="$seconds"); fi
  local start=$SECONDS rc=0 stamp
  stamp=$(mktemp)  # findings are this run's: an older one is already a regression input or waits to be
  local inputs=("$build/corpus/$h" "$build/seeds/$h")  # new units go to the first
  [ -d "$root/fuzz/regressions/$h" ] && inputs+=("$root/fuzz/regressions/$h")
  "$build/fuzz/fuzz_$h" "${args[@]}" "${inputs[@]}" >"$build/fuzz-$h.log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  local execs cov ft corp findings
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/fuzz-$h.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$build/fuzz-$h.log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$build/fuzz-$h.log" | tail -1 | cut -d' ' -f2)
  corp=$(find "$build/corpus/$h" -type f | wc -l)
  findings=$(find "$build/artifacts/$h" -type f -newer "$stamp" | wc -l)
  rm -f "$stamp"
  printf '{"harness": "%s", "executions": %s, "seconds": %s, "coverage_edges": %s, "features": %s, "corpus": %s, "findings": %s, "exit": %s}\n' \
    "$h" "${execs:-0}" "$took" "${cov:-0}" "${ft:-0}" "$corp" "$findings" "$rc" >"$build/fuzz-$h.json"
  echo "fuzz.sh: $h: ${execs:-0} executions in ${took} s, coverage ${cov:-0} edges, $corp in corpus, $findings findings (exit $rc)" >&2
  [ "$rc" = 0 ] && [ "$findings" = 0 ] || { tail -40 "$build/fuzz-$h.log" >&2; return 1; }
}
export -f run_one
export build root seconds runs
status=0
printf '%s\n' "${harnesses[@]}" | xargs -P "$(nproc)" -I{} bash -c 'run_one {}' || status=1
{ echo "["; for h in "${harnesses[@]}"; do cat "$build/fuzz-$h.json" 2>/dev/null | sed '$!s/$//'; done | paste -sd, -; echo "]"; } \
  >"$build/fuzz-summary.json"
exit $status
