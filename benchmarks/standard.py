#!/usr/bin/env python3
"""The standard benchmark set: runs `flashback bench` and writes the results.

    /usr/bin/python3 benchmarks/standard.py [--flashback build/flashback] [--repeats 3]

Runs, one after another on an otherwise idle machine:
  * bench decode (fp32 and bf16, 512-token context) against the read-bandwidth
    floor, with LibTorch's own ops timed beside the hand-written kernels;
  * bench prefill (fp32 and bf16, 512 tokens) against LibTorch's GEMM rate;
  * bench ralm, the paper's runtime test, append vs prepend, fp32, at
    init/total 512/1024, 1536/2048 and 3584/4096 (medians of --repeats);
  * bench retrieve on a BM25 index of WikiText-103 test (built on first use).

Writes docs/bench/standard.json (every raw result), docs/performance.png
(seconds per generated token against context length, append and prepend)
and the generated block of docs/performance.md between its markers.
Progress goes to stderr. --quick runs a tiny config (for the smoke test);
--from-json docs/bench/standard.json --only decode,ralm:512/1024 reruns parts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "hidden=768,layers=12,heads=12,kv_heads=12,ffn=2048,vocab=32000"
QUICK_CONFIG = "hidden=64,layers=2,heads=4,kv_heads=2,ffn=128,vocab=300"
BEGIN, END = "<!-- standard:begin -->", "<!-- standard:end -->"


def log(msg: str) -> None:
    print(f"[standard {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench(exe: str, *args: str) -> dict:
    cmd = [exe, "bench", *args, "--json"]
    log(" ".join(cmd[1:]))
    t0 = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"  done in {time.time() - t0:.0f} s")
    return result


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        has = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f" {f}" in text]
        flags = ", ".join(has)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores ({flags}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def ensure_wikitext_index(exe: str, shared: Path, cache_dir: Path) -> Path | None:
    corpus = shared / "data/wikitext-103/wiki.test.raw"
    tok = shared / "models/llama2-tokenizer/tokenizer.model"
    if not corpus.exists() or not tok.exists():
        log(f"no WikiText-103 test text or Llama-2 tokenizer under {shared}: skipping bench retrieve")
        return None
    index = cache_dir / "wikitext103-test-bm25"
    if not (index / "meta.json").exists():
        log(f"building the BM25 index of {corpus} -> {index}")
        subprocess.run([exe, "index", "--corpus", str(corpus), "--format", "wikitext", "--tokenizer", str(tok),
                        "--out", str(index)], check=True, stdout=subprocess.DEVNULL)
    return index


def parts(res: dict) -> list[str]:
    """The parts a result holds, by --only's names."""
    out = [p for p in ("decode", "prefill") if res.get(p)]
    out += [f"ralm:{x['init']}/{x['total']}" for x in res.get("ralm", [])]
    return out + (["retrieve"] if res.get("retrieve") else [])


def run_set(args, res: dict | None = None) -> dict:
    """Runs the set, or with res (an earlier standard.json) only the parts in args.only, replacing theirs."""
    exe = args.flashback
    config = QUICK_CONFIG if args.quick else CONFIG
    r = str(args.repeats)
    only = set(args.only.split(",")) if args.only else None
    want = lambda part: only is None or part in only  # noqa: E731
    if res is None:
        res = {"machine": machine(), "config": config, "repeats": args.repeats, "decode": [], "prefill": [], "ralm": []}
    now, here = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine()
    # When and where each part was measured: a rerun of some parts leaves the others' as they were.
    dates = res.setdefault("part_dates", {p: res["date"] for p in parts(res)} if "date" in res else {})
    machines = res.setdefault("part_machines", {p: res["machine"] for p in dates})
    res["date"], res["machine"] = now, here

    def stamp(part: str) -> None:
        dates[part], machines[part] = now, here
    ctx, steps, ptoks = ("64", "8", "64") if args.quick else ("512", "32", "512")
    if want("decode"):
        stamp("decode")
        res["decode"] = [bench(exe, "decode", "--config", config, "--dtype", dt, "--context", ctx, "--tokens", steps,
                               "--repeats", r, "--baseline") for dt in ("fp32", "bf16")]
    if want("prefill"):
        stamp("prefill")
        res["prefill"] = [bench(exe, "prefill", "--config", config, "--dtype", dt, "--tokens", ptoks, "--repeats", r)
                          for dt in ("fp32", "bf16")]
    points = [(48, 160), (96, 256)] if args.quick else [(512, 1024), (1536, 2048), (3584, 4096)]
    doc = "16" if args.quick else "128"
    for init, total in points:
        if not want(f"ralm:{init}/{total}"):
            continue
        run = bench(exe, "ralm", "--config", config, "--dtype", "fp32", "--init", str(init), "--total", str(total),
                    "--doc", doc, "--repeats", r)
        stamp(f"ralm:{init}/{total}")
        res["ralm"] = sorted([x for x in res["ralm"] if (x["init"], x["total"]) != (init, total)] + [run],
                             key=lambda x: x["total"])
    if not args.quick and want("retrieve"):
        index = ensure_wikitext_index(exe, Path(args.shared), Path(args.cache))
        if index is not None:
            text = Path(args.shared) / "data/wikitext-103/wiki.valid.raw"
            stamp("retrieve")
            res["retrieve"] = bench(exe, "retrieve", "--index", str(index), "--text", str(text), "--queries", "500",
                                    "--forbidden-titles",
                                    str(Path(args.shared) / "data/wikitext-103/forbidden_titles.txt"))
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, style in (("append", "o-"), ("prepend", "s--")):
        xs, ys = [], []
        for run in res["ralm"]:
            m = next(e for e in run["modes"] if e["mode"] == mode)
            xs.append(run["total"])
            ys.append(m["seconds"] / m["generated"])
        ax.plot(xs, ys, style, label=f"{mode} ({'FlashBack' if mode == 'append' else 'In-Context RALM'})")
    for run in res["ralm"]:
        ax.annotate(f"{run['speedup_append_over_prepend']:.2f}x", (run["total"], 0), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)
    ax.set_xlabel("context length at the end of generation (tokens)")
    ax.set_ylabel("seconds per generated token")
    ax.set_title(f"bench ralm, {res['config'].split(',vocab')[0]}, fp32, median of {res['ralm'][0]['repeats']}",
                 fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def markdown(res: dict) -> str:
    L = [BEGIN, "", f"Generated by `benchmarks/standard.py` on {res['date']}: {res['machine']}. Config `{res['config']}`,"
         f" Medians over repeats (ralm: {', '.join(str(r['repeats']) for r in res['ralm'])} per point; decode and prefill: "
         f"{res['decode'][0]['repeats'] if res['decode'] else '-'}; decode and prefill shares are medians of per-repeat "
         f"pairs, each repeat against the bandwidth / GEMM rate measured right after it).", ""]
    by_date: dict = {}
    machines = res.get("part_machines", {})
    for part, date in res.get("part_dates", {}).items():
        by_date.setdefault((date, machines.get(part, res["machine"])), []).append(part)
    if len(by_date) > 1:  # some parts were rerun alone (--only): say which were measured when, and where
        L[-1:-1] = ["Parts measured at different times: " +
                    "; ".join(f"{', '.join(ps)} on {d}" + (f" ({m})" if m != res["machine"] else "")
                              for (d, m), ps in sorted(by_date.items())) + "."]
    L += ["### Append vs prepend (`bench ralm`, fp32, stride 16, doc 128)", "",
          "| init / total | mode | seconds | s / token | re-encoded | encode s | decode s | other s | model share | RSS growth |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in res["ralm"]:
        for m in run["modes"]:
            L.append(f"| {run['init']} / {run['total']} | {m['mode']} | {m['seconds']:.2f} | "
                     f"{m['seconds'] / m['generated']:.4f} | {m['tokens_reencoded']:,} | {m['reencode_seconds']:.2f} | "
                     f"{m['decode_seconds']:.2f} | {m['other_seconds']:.3f} | {pct(m['model_share'])} | "
                     f"{m['rss_growth_during_generation_bytes'] / 2**20:.1f} MiB |")
    L += ["", "| init / total | speedup append/prepend | all runs append (s) | all runs prepend (s) | peak RSS / (weights + cache) |",
          "|---|---:|---|---|---:|"]
    for run in res["ralm"]:
        ap = next(e for e in run["modes"] if e["mode"] == "append")
        pp = next(e for e in run["modes"] if e["mode"] == "prepend")
        mem = run["memory"]
        L.append(f"| {run['init']} / {run['total']} | **{run['speedup_append_over_prepend']:.2f}x** | "
                 f"{', '.join(f'{s:.1f}' for s in ap['seconds_all'])} | {', '.join(f'{s:.1f}' for s in pp['seconds_all'])} | "
                 f"{mem['peak_over_weights_and_cache']:.3f} ({mem['peak_rss_bytes'] / 2**20:.0f} MiB; weights "
                 f"{mem['weights_bytes'] / 2**20:.0f} + cache {mem['kv_cache_bytes'] / 2**20:.0f} MiB; process before the model "
                 f"{mem['process_before_model_bytes'] / 2**20:.0f} MiB) |")
    L += ["", "![seconds per generated token against context length](performance.png)", ""]
    L += ["### Decode (`bench decode`, 512-token context)", "",
          "| dtype | tok/s | floor tok/s | share of floor | read bandwidth | LibTorch ops only | share | kernels speedup |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for d in res["decode"]:
        b = d.get("libtorch_only", {})
        L.append(f"| {d['dtype']} | {d['tokens_per_s']:.1f} | {d['floor_tokens_per_s']:.1f} | **{pct(d['fraction_of_floor'])}** | "
                 f"{d['read_bandwidth_gbs']:.1f} GB/s | {b.get('tokens_per_s', 0):.1f} | {pct(b.get('fraction_of_floor', 0))} | "
                 f"{d.get('speedup_over_libtorch', 0):.2f}x |")
    L += ["", "### Prefill (`bench prefill`, 512 tokens)", "",
          "| dtype | tok/s | GFLOP/s (useful) | best LibTorch fp32 GEMM here | share | the model's GEMM shapes alone | share | LibTorch GEMM in this dtype | this CPU's fp32 FMA peak | share (GEMM's) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in res["prefill"]:
        own = p.get("gemm_gflops_libtorch_dtype")
        fma = p.get("fma_peak_gflops_fp32")  # runs before the probe (or without AVX2) have none
        fma_cols = (f"{fma:.1f} | {pct(p['fraction_of_fma_peak'])} ({pct(p['gemm_fraction_of_fma_peak'])})"
                    if fma else "(not measured) | ")
        L.append(f"| {p['dtype']} | {p['tokens_per_s']:.1f} | {p['gflops']:.1f} | {p['gemm_gflops_fp32']:.1f} | "
                 f"**{pct(p['fraction_of_gemm'])}** | {p['gemm_gflops_fp32_model_shapes']:.1f} | "
                 f"{pct(p['fraction_of_gemm_model_shapes'])} | {f'{own:.1f}' if own else '(same)'} | {fma_cols} |")
    if "retrieve" in res:
        q = res["retrieve"]
        L += ["", "### Retrieval (`bench retrieve`, BM25 over WikiText-103 test)", "",
              f"{q['passages']:,} passages; {q['queries']} queries of {q['query_words']} words cut from WikiText-103 "
              f"valid, top-{q['k']}, forbidden titles excluded: median **{q['median_ms']:.2f} ms**, p90 {q['p90_ms']:.2f} ms,"
              f" mean {q['mean_ms']:.2f} ms, max {q['max_ms']:.2f} ms."]
    L += ["", END]
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flashback", default=str(ROOT / "build/flashback"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shared", default=os.environ.get("FLASHBACK_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--cache", default=str(ROOT / "build/data"), help="where the WikiText-103 index is kept")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="writes bench/standard.json, performance.png, performance.md")
    ap.add_argument("--from-json", help="start from a standard.json: re-render it, or rerun only --only's parts")
    ap.add_argument("--only", help="with --from-json: comma-separated parts to rerun "
                                   "(decode, prefill, ralm:512/1024, ralm:1536/2048, ralm:3584/4096, retrieve)")
    ap.add_argument("--quick", action="store_true", help="tiny config, a few seconds (smoke test)")
    args = ap.parse_args()

    out = Path(args.out)
    (out / "bench").mkdir(parents=True, exist_ok=True)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        if args.only:
            res = run_set(args, res)
    else:
        res = run_set(args)
    tmp = out / "bench/standard.json.tmp"
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out / "bench/standard.json")
    plot(res, out / "performance.png")
    md_path = out / "performance.md"
    block = markdown(res)
    text = md_path.read_text() if md_path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md_path.write_text(text)
    for run in res["ralm"]:
        log(f"ralm {run['init']}/{run['total']}: {run['speedup_append_over_prepend']:.2f}x")
    log(f"wrote {out / 'bench/standard.json'}, {out / 'performance.png'}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
