#!/usr/bin/env bash
# The GPU check, one prepared command for a lent GPU machine (short: a session has 15 minutes of device
# time). It builds flashback against the machine's PyTorch (its LibTorch, CUDA on), runs the CUDA tests
# (flashback_tests "[cuda]") and the Python workflow (benchmarks/gpu_python.py: logits, loss, gradients and
# finetune() against the CPU's), then the paper's runtime test on a Llama-2-7B-shaped model with random
# weights, `flashback bench ralm` and the same protocol in HF transformers (benchmarks/hf_ralm.py: eager,
# DynamicCache cropped for append) side by side, at init/total 512/1024, 1536/2048, 3584/4096. It checks
# that both encode the same tokens, writes every result to $OUT (or build-gpu/out) and prints the ratios.
#
# Here, first:   benchmarks/gpu.sh --fetch-deps     (the Debian -dev packages a bare GPU image lacks -> .gpu-deps/)
# There:         device run, carry [".gpu-deps"], command "benchmarks/gpu.sh"
# A dry run:     benchmarks/gpu.sh --device cpu --tiny   (a tiny model, fp32, on the CPU; FLASHBACK_GPU_BUILD
#                may name an existing build, e.g. build-torch2, PYTHON a Python with torch 2 + transformers,
#                FLASHBACK_GPU_PYTHON one with flashback installed for benchmarks/gpu_python.py)
# --points "I/T ..." orders the init/total points (the most wanted first), --hf-points "I/T ..." runs HF at
# those only (default: all), --repeats N flashback's repeats (each after a full-size untimed run of every
# mode: bench ralm's and hf_ralm.py's --warmup auto off the CPU); --budget S skips what would start
# after S seconds, so that the summary is still written inside a lease. Under the device tool everything
# comes back as one file, $OUT/gpu-out.tgz, rewritten after each step (its 8-file limit; a run cut short
# still returns what finished).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
device=cuda tiny=0 dtypes=fp16,bf16 hf_dtypes=fp16
points="512/1024 1536/2048 3584/4096" budget=0 decode_context=2048 hf_points= repeats=1
config=hidden=4096,layers=32,heads=32,kv_heads=32,ffn=11008,vocab=32000  # Llama-2-7B's shape
while [ $# -gt 0 ]; do
  case $1 in
    --fetch-deps)
      mkdir -p "$root/.gpu-deps" && cd "$root/.gpu-deps" &&
        apt-get download libpcre2-dev libpcre2-8-0 catch2 libcli11-dev nlohmann-json3-dev libxapian-dev libxapian30 \
          libeigen3-dev 2>/dev/null
      grep -qx '/.gpu-deps/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu-deps/' >>"$root/.git/info/exclude"
      ls "$root/.gpu-deps"; exit 0 ;;
    --device) device=$2; shift ;;
    --tiny) tiny=1 ;;
    --dtypes) dtypes=$2; shift ;;
    --points) points=$2; shift ;;
    --hf-points) hf_points=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --budget) budget=$2; shift ;;
    --hf-dtypes) hf_dtypes=$2; shift ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$tiny" = 1 ]; then
  config=hidden=64,layers=2,heads=4,kv_heads=2,ffn=128,vocab=300 points="96/256" dtypes=fp32 hf_dtypes=fp32
  decode_context=128
fi
out=$root/build-gpu/out
rm -rf "$out" && mkdir -p "$out"
py=${PYTHON:-python3}
start=$SECONDS
log() { echo "[gpu.sh $(date +%H:%M:%S) +$((SECONDS - start))s] $*" | tee -a "$out/gpu.log" >&2; }
# Everything so far as one file under $OUT (written aside, then renamed: a cut-short run leaves the last whole one).
ship() { [ -n "${OUT:-}" ] && tar czf "$OUT/.gpu-out.tgz" -C "$out" . && mv "$OUT/.gpu-out.tgz" "$OUT/gpu-out.tgz" || true; }
# Runs a step unless the budget is spent; the step's commands run under "${tmo[@]}", which stops them when it is.
tmo=()
step() {
  tmo=()
  if [ "$budget" -gt 0 ]; then
    local left=$((budget - (SECONDS - start)))
    if [ "$left" -le 0 ]; then log "skipped (budget spent): $*"; return 0; fi
    tmo=(timeout "$left")
  fi
  "$@" || log "failed or stopped (rc $?): $*"
  ship
}
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())" 2>&1 | tee -a "$out/gpu.log" >&2
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv >>"$out/gpu.log" 2>&1 || true

# ---- build (an existing build dir is only brought up to date)
build=${FLASHBACK_GPU_BUILD:-$root/build-gpu}
prefix=/tmp/flashback-gpu-deps
wipe_build() { find "$build" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +; }  # keeps $out
configure() {  # full (retrieval + Python, from the carried Xapian/Eigen) | core
  local torch_cmake extra=()
  torch_cmake=$("$py" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  if [ "$1" = full ]; then
    extra=(-DFLASHBACK_WITH_RETRIEVAL=ON -DFLASHBACK_BUILD_PYTHON=ON
           -DXAPIAN_SHARED_LIBRARY="$prefix/usr/lib/x86_64-linux-gnu/libxapian.so" -DXAPIAN_INCLUDE_DIR="$prefix/usr/include"
           -DPython_EXECUTABLE="$(command -v "$py")" -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir 2>/dev/null)")
  else
    extra=(-DFLASHBACK_WITH_RETRIEVAL=OFF -DFLASHBACK_BUILD_PYTHON=OFF)
  fi
  log "configuring $build ($1) against $torch_cmake"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_cmake;$prefix/usr" \
    -DFLASHBACK_THIRD_PARTY_DIR="$prefix/usr/include" -DPython3_EXECUTABLE="$(command -v "$py")" "${extra[@]}" \
    >>"$out/configure.log" 2>&1
}
build_all() {
  local targets=(flashback_cli flashback_tests)
  grep -q "FLASHBACK_BUILD_PYTHON:BOOL=ON" "$build/CMakeCache.txt" && targets+=(flashback_python)
  log "building ${targets[*]} in $build"
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >>"$out/build.log" 2>&1
}
if [ ! -f "$build/CMakeCache.txt" ]; then
  if ls "$root"/.gpu-deps/*.deb >/dev/null 2>&1; then
    mkdir -p "$prefix" && for d in "$root"/.gpu-deps/*.deb; do dpkg -x "$d" "$prefix"; done
  fi
  # With Xapian and Eigen among the carried packages: retrieval and the Python extension too (the Python
  # check below). If that fails to configure or build: the library, CLI and C++ tests alone.
  if [ -f "$prefix/usr/include/xapian.h" ] && configure full && build_all; then
    :
  else
    [ -f "$prefix/usr/include/xapian.h" ] && { log "the full build failed (configure.log, build.log): the core alone"; wipe_build; }
    configure core || { tail -30 "$out/configure.log"; ship; exit 1; }
  fi
fi
build_all || { tail -40 "$out/build.log"; ship; exit 1; }
exe=$build/flashback
log "built"
ship

# ---- the CUDA tests (skipped, visibly, on a machine without a GPU)
log "flashback_tests [cuda]"
"$build/tests/flashback_tests" "[cuda]" >"$out/cuda_tests.log" 2>&1 || log "flashback_tests [cuda] failed (rc $?)"
tail -4 "$out/cuda_tests.log" >&2
ship

# ---- the Python workflow on the device (benchmarks/gpu_python.py): the extension just built, laid out as
# the package beside its Python files; else a Python that already has flashback (FLASHBACK_GPU_PYTHON).
fbpy=${FLASHBACK_GPU_PYTHON:-$py}
pkg=()
if ls "$build"/python/flashback/_C*.so >/dev/null 2>&1; then
  rm -rf "$build/pkg" && mkdir -p "$build/pkg/flashback"
  cp "$root"/python/flashback/*.py "$build"/python/flashback/_C*.so "$build"/python/flashback/_build_info.py "$build/pkg/flashback/"
  pkg=(env PYTHONPATH="$build/pkg")
fi
if "${pkg[@]}" "$fbpy" -c "import flashback" >/dev/null 2>&1; then
  log "gpu_python.py"
  "${pkg[@]}" "$fbpy" "$root/benchmarks/gpu_python.py" --device "$device" >"$out/gpu_python.json" 2>>"$out/gpu.log" ||
    log "gpu_python.py failed (rc $?)"
  cut -c1-400 "$out/gpu_python.json" >&2
else
  log "gpu_python.py skipped: no flashback Python here (a build without the extension, FLASHBACK_GPU_PYTHON unset)"
fi
ship

# ---- the paper's runtime test, flashback and HF side by side
summary() {  # label file: one line of a run's JSON (its last line): seconds per mode, the speedup
  tail -1 "$2" | "$py" -c "import json,sys; j=json.loads(sys.stdin.read()); print('$1', j['dtype'], j['init'], j['total'], *[(m['mode'], round(m['seconds'], 2)) for m in j['modes']], 'speedup', round(j.get('speedup_append_over_prepend') or 0, 2))" >&2
}
bench_fb() {  # dtype init total
  "${tmo[@]}" "$exe" bench ralm --config "$config" --dtype "$1" --device "$device" --init "$2" --total "$3" --repeats "$repeats" --json \
    >"$out/flashback-$1-$2-$3.json" 2>>"$out/gpu.log"
  summary flashback "$out/flashback-$1-$2-$3.json"
}
bench_hf() {  # dtype init total
  "${tmo[@]}" "$py" "$root/benchmarks/hf_ralm.py" --config "$config" --dtype "$1" --device "$device" --init "$2" --total "$3" \
    >"$out/hf-$1-$2-$3.json" 2>>"$out/gpu.log"
  summary hf "$out/hf-$1-$2-$3.json"
}
bench_decode() {  # dtype context: tokens/s of decode steps against the device's own read bandwidth
  "${tmo[@]}" "$exe" bench decode --config "$config" --dtype "$1" --device "$device" --context "$2" --repeats 3 \
    >"$out/decode-$1-$2.txt" 2>>"$out/gpu.log"
  cat "$out/decode-$1-$2.txt" >&2
}
# The GPU's clocks and load once a second while everything runs (a light, launch-bound load may run at
# lower clocks than a heavy one: the two modes' times are read against this).
if [ "$device" != cpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -s puc -o T >"$out/dmon.log" 2>&1 &
  dmon=$!
  trap 'kill $dmon 2>/dev/null || true' EXIT
fi
for dt in ${dtypes//,/ }; do
  log "flashback bench decode $dt at $decode_context"
  step bench_decode "$dt" "$decode_context"
done
for point in $points; do
  init=${point%/*} total=${point#*/}
  for dt in ${dtypes//,/ }; do
    log "flashback bench ralm $dt $init/$total"
    step bench_fb "$dt" "$init" "$total"
    for hdt in ${hf_dtypes//,/ }; do
      [ "$hdt" = "$dt" ] || continue  # HF beside the flashback run of its dtype, while both are fresh
      [ -z "$hf_points" ] || [[ " $hf_points " == *" $point "* ]] || continue
      log "hf_ralm $hdt $init/$total"
      step bench_hf "$hdt" "$init" "$total"
    done
  done
done

summary=0
"$py" - "$out" <<'EOF' || summary=$?
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows, bad = [], []
def last_json(f):  # a step stopped by the budget leaves an empty or partial file: left out of the table
    try:
        return json.loads(f.read_text().strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None
for f in sorted(out.glob("flashback-*.json")):
    fb = last_json(f)
    if fb is None:
        continue
    m = {e["mode"]: e for e in fb["modes"]}
    row = {"dtype": fb["dtype"], "init": fb["init"], "total": fb["total"], "flashback_append_s": m["append"]["seconds"],
           "flashback_prepend_s": m["prepend"]["seconds"], "flashback_speedup": fb.get("speedup_append_over_prepend")}
    hf_file = out / f"hf-{fb['dtype']}-{fb['init']}-{fb['total']}.json"
    hf = last_json(hf_file) if hf_file.exists() else None
    if hf is not None:
        h = {e["mode"]: e for e in hf["modes"]}
        for mode in ("append", "prepend"):  # the same protocol: the same tokens encoded and decoded
            if h[mode]["tokens_encoded"] != m[mode]["tokens_reencoded"] or h[mode]["generated"] != m[mode]["generated"]:
                bad.append(f"{hf_file.name} {mode}: HF encoded {h[mode]['tokens_encoded']} / generated "
                           f"{h[mode]['generated']}, flashback {m[mode]['tokens_reencoded']} / {m[mode]['generated']}")
        row.update({"hf_append_s": h["append"]["seconds"], "hf_prepend_s": h["prepend"]["seconds"],
                    "hf_speedup": hf["speedup_append_over_prepend"],
                    "flashback_append_over_hf_append": h["append"]["seconds"] / m["append"]["seconds"]})
    rows.append(row)
(out / "gpu.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
for r in rows:
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
if bad:
    sys.exit("gpu.sh: the two protocols differ: " + "; ".join(bad))
EOF
log "done: $out/gpu.json"
ship
exit "$summary"
