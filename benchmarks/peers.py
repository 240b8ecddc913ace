#!/usr/bin/env python3
"""flashback beside llama.cpp: the same GGUF files, the same machine, one run.

    .venv/bin/python benchmarks/peers.py [--repeats 3] [--models fp32,bf16,q4_1,q4_k_m]

The peer is PyPI's llama-cpp-python (its low-level API, the C functions
llama.cpp's own tools call). Per model, alternating flashback and llama.cpp
within each repeat (each measurement a fresh process, the order reversed on
odd repeats; decode and prefill take the median of 3 timed runs after a
warm-up inside the process, both engines alike):
  * decode tok/s after 512 and 2048 tokens of context (greedy, 32 steps);
  * prefill tok/s of 512 and 2048 tokens (one forward, logits of the last row);
  * the paper's runtime test at init 1536 / total 2048 (stride 16, documents
    of 128 random tokens): append (FlashBack: the input's cache kept; in
    llama.cpp `llama_memory_seq_rm` drops what follows it) and prepend
    (In-Context RALM: a cleared cache, everything re-encoded).
Models: a random 134M Llama (hidden 768, 12 layers, the Llama-2 tokenizer)
written by flashback as an F32 and a BF16 GGUF, and SmolLM2-135M's own Q4_1
GGUF (flashback keeping its blocks: --keep-quantized), and the 134M's F32
file quantized to Q4_K_M by llama.cpp's own quantizer (blocks kept too). The re-encoded and
decoded token counts of both engines must be equal
(checked). llama.cpp first gets its best settings: a tuning pass times flash
attention on/off, an F16/F32 KV cache and micro-batches of 512/2048 on each
workload (the paper's test on its 512/1024 point, in the same mode), and
every workload then runs with its winner. flashback's one setting, its KV
cache in fp32 or bf16 (--kv-dtype), is chosen the same way on the same
proxies.

Writes docs/bench/peers.json (every raw number) and the table between the
peers markers of docs/performance.md. --quick runs stories260K's GGUF on tiny
workloads (the smoke test); --from-json re-renders.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from standard import machine  # noqa: E402

BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
CONFIG_134M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
               "intermediate_size": 2048, "vocab_size": 32000, "max_position_embeddings": 4096,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


# Decode and prefill: timed runs within each process (after one warm-up), their median taken, by both
# engines alike (flashback's --repeats); the paper's test runs once per process.
IN_PROCESS = 3


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- workloads
# A workload is a dict: {"kind": "decode", "context": C, "tokens": N} |
# {"kind": "prefill", "tokens": T} | {"kind": "ralm", "mode": M, "init", "total", "stride", "doc"}.

def workloads(quick: bool) -> list[dict]:
    if quick:
        return [{"kind": "decode", "context": 32, "tokens": 8}, {"kind": "prefill", "tokens": 64},
                {"kind": "ralm", "mode": "append", "init": 48, "total": 160, "stride": 16, "doc": 16},
                {"kind": "ralm", "mode": "prepend", "init": 48, "total": 160, "stride": 16, "doc": 16}]
    ralm = {"init": 1536, "total": 2048, "stride": 16, "doc": 128}
    return [{"kind": "decode", "context": 512, "tokens": 32}, {"kind": "decode", "context": 2048, "tokens": 32},
            {"kind": "prefill", "tokens": 512}, {"kind": "prefill", "tokens": 2048},
            {"kind": "ralm", "mode": "append", **ralm}, {"kind": "ralm", "mode": "prepend", **ralm}]


def name(w: dict) -> str:
    if w["kind"] == "decode":
        return f"decode@{w['context']}"
    if w["kind"] == "prefill":
        return f"prefill {w['tokens']}"
    return f"{w['mode']} {w['init']}/{w['total']}"


def positions(w: dict) -> int:
    """Cache slots the workload needs (the layout never slides: total + the marks + a stride)."""
    if w["kind"] == "decode":
        return w["context"] + w["tokens"]
    if w["kind"] == "prefill":
        return w["tokens"]
    return w["total"] + 2 + w["stride"]


def rate(w: dict, seconds: float) -> float:
    """tokens/s for decode and prefill; seconds themselves for the paper's test (lower is better)."""
    return seconds if w["kind"] == "ralm" else w["tokens"] / seconds


# ----------------------------------------------------------------- llama.cpp
# Runs in a child process (`peers.py --llama-worker SPEC`), so that each
# measurement starts from a fresh process as flashback's do.

def llama_worker(spec: dict) -> dict:
    import ctypes

    import numpy as np
    import llama_cpp as lc

    @lc.llama_log_callback
    def quiet(level, text, user_data):  # noqa: ARG001
        pass

    lc.llama_log_set(quiet, ctypes.c_void_p())
    lc.llama_backend_init()
    w, s = spec["workload"], spec["setting"]
    mp = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(spec["model"].encode(), mp)
    if not model:
        raise SystemExit(f"{spec['model']}: llama.cpp could not load it")
    n_ctx = positions(w)
    cp = lc.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_ctx
    cp.n_ubatch = min(s["ubatch"], n_ctx)
    cp.n_threads = cp.n_threads_batch = spec["threads"]
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if s["flash_attn"] else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.type_k = cp.type_v = {"f16": lc.GGML_TYPE_F16, "f32": lc.GGML_TYPE_F32}[s["kv"]]
    cp.no_perf = True
    ctx = lc.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit(f"{spec['model']}: llama.cpp could not make a context for {s}")
    mem = lc.llama_get_memory(ctx)
    V = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(n_ctx, 0, 1)
    counts = {"reencoded": 0, "decoded": 0}

    def forward(tokens: list[int], pos: int) -> int:
        """Encodes tokens at positions pos.. of sequence 0; returns the argmax of the last row's logits."""
        n = len(tokens)
        batch.n_tokens = n
        for i, t in enumerate(tokens):
            batch.token[i] = int(t)
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n - 1
        rc = lc.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")
        return int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(V,)).argmax())

    rng = np.random.default_rng(spec.get("seed", 0))
    result: dict = {}
    if w["kind"] in ("decode", "prefill"):
        T = w["context"] if w["kind"] == "decode" else w["tokens"]
        prompt = rng.integers(0, V, T).tolist()
        times = []
        for r in range(1 + IN_PROCESS):  # the first run warms up, as flashback's bench does
            lc.llama_memory_clear(mem, True)
            t0 = time.perf_counter()
            tok = forward(prompt, 0)
            if w["kind"] == "decode":
                t0 = time.perf_counter()
                for i in range(w["tokens"]):
                    tok = forward([tok], T + i)
            if r:
                times.append(time.perf_counter() - t0)
        result["seconds"] = statistics.median(times)
    else:
        # The paper's runtime test, as flashback's bench ralm runs it (bench.cpp):
        # random ids avoid the last two, which play the marks; the last token
        # sampled before a retrieval is encoded by the next placement.
        mark_l, mark_r = V - 2, V - 1
        ids = rng.integers(1, V - 2, w["init"]).tolist()
        to_generate = w["total"] - w["doc"] - w["init"]
        kept = generated = 0  # kept: the input's tokens whose cache stays valid (append)
        t0 = time.perf_counter()
        while generated < to_generate:
            doc = rng.integers(1, V - 2, w["doc"]).tolist()
            if w["mode"] == "append":
                lc.llama_memory_seq_rm(mem, 0, kept, -1)
                chunk = ids[kept:] + [mark_l] + doc + [mark_r]
                tok = forward(chunk, kept)
                pos = kept + len(chunk)
                kept = len(ids)
            else:
                lc.llama_memory_clear(mem, True)
                chunk = doc + ids
                tok = forward(chunk, 0)
                pos = len(chunk)
            counts["reencoded"] += len(chunk)
            for i in range(min(w["stride"], to_generate - generated)):
                if i:
                    tok = forward([tok], pos)
                    pos += 1
                    counts["decoded"] += 1
                ids.append(tok)
                generated += 1
        result["seconds"] = time.perf_counter() - t0
        result.update(generated=generated, tokens_reencoded=counts["reencoded"], tokens_decoded=counts["decoded"])
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return result


def run_llama(model: Path, w: dict, setting: dict, threads: int) -> dict:
    spec = {"model": str(model), "workload": w, "setting": setting, "threads": threads}
    out = subprocess.run([sys.executable, __file__, "--llama-worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llama.cpp worker failed on {name(w)} {setting}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- flashback

def run_flashback(exe: str, model: dict, w: dict, threads: int, kv: str) -> dict:
    common = ["--model", model["path"], "--dtype", model["flashback_dtype"], *model.get("flashback_flags", []),
              "--kv-dtype", kv, "--threads", str(threads), "--repeats", str(1 if w["kind"] == "ralm" else IN_PROCESS), "--json"]
    if w["kind"] == "decode":
        args = ["decode", "--context", str(w["context"]), "--tokens", str(w["tokens"])]
    elif w["kind"] == "prefill":
        args = ["prefill", "--tokens", str(w["tokens"])]
    else:
        args = ["ralm", "--modes", w["mode"], *(f"--{k}={w[k]}" for k in ("init", "total", "stride", "doc"))]
    out = subprocess.run([exe, "bench", *args, *common], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"flashback bench {' '.join(args)} failed: {out.stderr.strip()}")
    j = json.loads(out.stdout.strip().splitlines()[-1])
    if w["kind"] == "decode":
        return {"seconds": j["seconds_per_token"] * w["tokens"], "fraction_of_floor": j["fraction_of_floor"]}
    if w["kind"] == "prefill":
        return {"seconds": j["seconds"], "fraction_of_gemm": j["fraction_of_gemm"]}
    m = j["modes"][0]
    return {"seconds": m["seconds"], "generated": m["generated"], "tokens_reencoded": m["tokens_reencoded"],
            "tokens_decoded": m["tokens_decoded"]}


# ----------------------------------------------------------------- models

def random_134m(cache: Path, shared: Path, key: str) -> Path:
    """The random 134M written by flashback as an F32 or BF16 GGUF (key fp32 | bf16), once."""
    path = cache / f"random-134M-seed0-{key.upper()}.gguf"
    if not path.exists():
        import flashback._C as C
        tok = C.Tokenizer.from_file(str(shared / "models/llama2-tokenizer/tokenizer.model"))
        log(f"writing {path}")
        C.Model.random(json.dumps(CONFIG_134M), 0, "float32").save_gguf(str(path), tok, key)
    return path


def make_models(args) -> list[dict]:
    """The GGUF files to run: (label, path, the dtype flashback runs it in)."""
    shared = Path(args.shared)
    if args.quick:
        return [{"key": "stories", "label": "stories260K F32", "path": str(shared / "models/stories260K/stories260K.gguf"),
                 "flashback_dtype": "fp32"}]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for key in args.models.split(","):
        if key in ("fp32", "bf16"):
            path = random_134m(cache, shared, key)
            out.append({"key": key, "label": f"134M {key.upper()}", "path": str(path), "flashback_dtype": key})
        elif key == "q4_k_m":
            # The F32 file quantized by llama.cpp's own quantizer: Q4_K, Q6_K where its recipe says (the
            # 134M's rows, 768 and 2048 long, all hold whole super-blocks of 256); flashback keeps the blocks.
            path = cache / "random-134M-seed0-Q4_K_M.gguf"
            if not path.exists():
                f32 = random_134m(cache, shared, "fp32")
                import ctypes
                import llama_cpp
                log(f"quantizing {f32} to {path} (llama.cpp, Q4_K_M)")
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
                tmp = path.with_suffix(".tmp")
                if llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
                    raise SystemExit(f"{f32}: llama.cpp could not quantize it to Q4_K_M")
                tmp.replace(path)
            out.append({"key": key, "label": "134M Q4_K_M", "path": str(path), "flashback_dtype": "fp32",
                        "flashback_flags": ["--keep-quantized"]})
        elif key == "q4_1":
            path = Path(args.smollm2)
            if not path.exists():
                raise SystemExit(f"{path}: SmolLM2-135M's GGUF is missing (scripts/fetch_model.sh fetches it)")
            # Its blocks kept as they are (the head reads the Q8_0 embedding's blocks; lookups a dense copy).
            out.append({"key": key, "label": "SmolLM2-135M Q4_1", "path": str(path), "flashback_dtype": "fp32",
                        "flashback_flags": ["--keep-quantized"]})
        else:
            raise SystemExit(f"--models: unknown model {key!r} (fp32, bf16, q4_1, q4_k_m)")
    return out


# ----------------------------------------------------------------- the run

def settings(quick: bool) -> list[dict]:
    grid = [{"flash_attn": fa, "kv": kv, "ubatch": ub} for fa in (False, True) for kv in ("f16", "f32")
            for ub in (512, 2048)]
    return grid[:2] if quick else grid


def proxies_of(ws: list[dict], quick: bool) -> dict:
    """What each workload's settings are timed on: itself, or the paper's test at a shorter point, in the same
    mode (its decode steps count too: flash attention wins llama.cpp's 2048-token prefill but slows its decode
    2-4x here)."""
    return {name(w): {**w, "init": 512, "total": 1024} if w["kind"] == "ralm" and not quick else w for w in ws}


def pick(p: dict, cands: list) -> dict:
    """The winner of (setting, rate) pairs on proxy p: least seconds for the paper's test, else most tokens/s."""
    return (min if p["kind"] == "ralm" else max)(cands, key=lambda c: c[1])[0]


def tune_flashback(exe: str, model: dict, ws: list[dict], threads: int, quick: bool) -> dict:
    """flashback's KV cache dtype per workload, timed once each on the proxies llama.cpp's settings are."""
    best, table = {}, []
    for label, p in proxies_of(ws, quick).items():
        cands = []
        for kv in ("fp32", "bf16"):
            cands.append((kv, rate(p, run_flashback(exe, model, p, threads, kv)["seconds"])))
            log(f"  tune {model['label']} {name(p)} flashback KV {kv.upper()}: {cands[-1][1]:.3f}")
        best[label] = pick(p, cands)
        table.append({"workload": label, "proxy": name(p), "all": [{"kv_dtype": k, "value": x} for k, x in cands],
                      "best": best[label]})
    return {"best": best, "timings": table}


def tune(model: dict, ws: list[dict], threads: int, quick: bool) -> dict:
    """llama.cpp's best setting per workload: each setting timed once on a proxy of it."""
    proxies = proxies_of(ws, quick)
    timed: dict[tuple, float] = {}
    for s in settings(quick):
        for p in proxies.values():
            biggest = p["tokens"] if p["kind"] == "prefill" else 1 if p["kind"] == "decode" else p["total"]
            if s["ubatch"] > 512 and biggest <= 512:
                continue  # a micro-batch above every batch changes nothing
            key = (json.dumps(s, sort_keys=True), name(p))
            if key not in timed:
                timed[key] = rate(p, run_llama(Path(model["path"]), p, s, threads)["seconds"])
                log(f"  tune {model['label']} {name(p)} {setting_text(s)}: {timed[key]:.3f}")
    best, table = {}, []
    for label, p in proxies.items():
        cands = [(json.loads(k), v) for (k, q), v in timed.items() if q == name(p)]
        s = pick(p, cands)
        best[label] = s
        table.append({"workload": label, "proxy": name(p), "unit": "seconds" if p["kind"] == "ralm" else "tokens/s",
                      "all": [{"setting": c, "value": x} for c, x in cands], "best": s})
    return {"best": best, "timings": table}


def run_all(args, save, res: dict | None = None) -> dict:
    """Runs every model of --models; `save(res)` after each one, so that a long run stopped midway keeps what it
    measured. With res (an earlier peers.json) the models run replace theirs there and the others stay."""
    ws = workloads(args.quick)
    threads = args.threads or os.cpu_count()
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if res is None:
        res = {"models": []}
    elif (res["threads"], res["repeats"]) != (threads, args.repeats):
        raise SystemExit(f"--from-json: its runs used {res['threads']} threads and {res['repeats']} repeats; "
                         "this run would not be comparable (--threads, --repeats)")
    for m in res["models"]:
        m.setdefault("date", res["date"])  # the run that measured it
        m.setdefault("machine", res["machine"])
    res.update({"machine": machine(), "date": now, "threads": threads, "repeats": args.repeats,
                "llama_cpp_python": __import__("llama_cpp").__version__})
    for model in make_models(args):
        log(f"{model['label']}: {model['path']}")
        tuned = tune(model, ws, threads, args.quick)
        ours = tune_flashback(args.flashback, model, ws, threads, args.quick)
        entry = {**model, "date": now, "machine": machine(), "tuning": tuned["timings"],
                 "flashback_tuning": ours["timings"], "workloads": []}
        runs = {name(w): {"flashback": [], "llama.cpp": []} for w in ws}
        for rep in range(args.repeats):
            for w in ws:
                order = ["flashback", "llama.cpp"] if rep % 2 == 0 else ["llama.cpp", "flashback"]
                for engine in order:
                    if engine == "flashback":
                        r = run_flashback(args.flashback, model, w, threads, ours["best"][name(w)])
                    else:
                        r = run_llama(Path(model["path"]), w, tuned["best"][name(w)], threads)
                    runs[name(w)][engine].append(r)
                    log(f"{model['label']} repeat {rep + 1}/{args.repeats} {name(w)} {engine}: {r['seconds']:.3f} s")
        for w in ws:
            rr = runs[name(w)]
            if w["kind"] == "ralm":
                for key in ("generated", "tokens_reencoded", "tokens_decoded"):
                    a, b = rr["flashback"][0][key], rr["llama.cpp"][0][key]
                    if a != b:
                        raise SystemExit(f"{name(w)}: flashback and llama.cpp differ in {key}: {a} vs {b}")
            e = {"workload": name(w), **w, "llama_cpp_setting": tuned["best"][name(w)],
                 "flashback_kv_dtype": ours["best"][name(w)]}
            for engine in ("flashback", "llama.cpp"):
                vals = [rate(w, r["seconds"]) for r in rr[engine]]
                e[engine] = {"median": statistics.median(vals), "all": vals}
                if engine == "flashback":
                    for k in ("fraction_of_floor", "fraction_of_gemm"):
                        if k in rr[engine][0]:
                            e[engine][k] = statistics.median(r[k] for r in rr[engine])
            if w["kind"] == "ralm":
                e["tokens_reencoded"] = rr["flashback"][0]["tokens_reencoded"]
                e["tokens_decoded"] = rr["flashback"][0]["tokens_decoded"]
                e["unit"] = "seconds"
                e["ratio"] = e["llama.cpp"]["median"] / e["flashback"]["median"]
            else:
                e["unit"] = "tokens/s"
                e["ratio"] = e["flashback"]["median"] / e["llama.cpp"]["median"]
            entry["workloads"].append(e)
        for engine in ("flashback", "llama.cpp"):
            ap = [e for e in entry["workloads"] if e["kind"] == "ralm" and e["mode"] == "append"]
            pp = [e for e in entry["workloads"] if e["kind"] == "ralm" and e["mode"] == "prepend"]
            if ap and pp:
                entry.setdefault("append_over_prepend", {})[engine] = pp[0][engine]["median"] / ap[0][engine]["median"]
        # A model rerun keeps its place in the table; a new one goes last.
        at = next((i for i, m in enumerate(res["models"])
                   if m.get("key", m["label"]) == model["key"] or m["label"] == model["label"]), None)
        if at is None:
            res["models"].append(entry)
        else:
            res["models"][at] = entry
        save(res)
    return res


def setting_text(s: dict) -> str:
    return f"FA {'on' if s['flash_attn'] else 'off'}, KV {s['kv'].upper()}, ubatch {s['ubatch']}"


def kv_text(m: dict, e: dict) -> str:
    """flashback's cache dtype on a workload (runs before it was tuned kept the model's: fp32 for quantized)."""
    kv = e.get("flashback_kv_dtype", m["flashback_dtype"])
    return f"{kv.upper()}{'' if 'flashback_kv_dtype' in e else ' (untuned)'}"


def markdown(res: dict) -> str:
    L = [BEGIN, "", f"Generated by `benchmarks/peers.py` on {res['date']}: {res['machine']}; {res['threads']} threads for "
         f"both engines; llama-cpp-python {res['llama_cpp_python']}; medians of {res['repeats']} alternating repeats, "
         "each a fresh process. Ratio > 1: flashback faster.", ""]
    dated = len({m.get("date", res["date"]) for m in res["models"]}) > 1  # models rerun alone: say when each ran
    for m in res["models"]:
        flags = " ".join(m.get("flashback_flags", []))
        when = f", measured {m.get('date', res['date'])} on {m.get('machine', res['machine'])}" if dated else ""
        L += [f"#### {m['label']} (flashback: `--dtype {m['flashback_dtype']}{' ' + flags if flags else ''}`{when})", "",
              "| workload | flashback | llama.cpp | flashback / llama.cpp | flashback's KV cache | llama.cpp's best setting | all runs flashback | all runs llama.cpp |",
              "|---|---:|---:|---:|---|---|---|---|"]
        for e in m["workloads"]:
            fmt = (lambda v: f"{v:.2f} s") if e["unit"] == "seconds" else (lambda v: f"{v:.1f} tok/s")
            L.append(f"| {e['workload']} | {fmt(e['flashback']['median'])} | {fmt(e['llama.cpp']['median'])} | "
                     f"**{e['ratio']:.2f}x** | {kv_text(m, e)} | {setting_text(e['llama_cpp_setting'])} | "
                     f"{', '.join(f'{v:.3g}' for v in e['flashback']['all'])} | "
                     f"{', '.join(f'{v:.3g}' for v in e['llama.cpp']['all'])} |")
        if "append_over_prepend" in m:
            a = m["append_over_prepend"]
            L += ["", f"Append/prepend (the paper's ratio): flashback **{a['flashback']:.2f}x**, "
                      f"llama.cpp {a['llama.cpp']:.2f}x."]
        L.append("")
    L.append(END)
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-worker", help=argparse.SUPPRESS)
    ap.add_argument("--flashback", default=str(ROOT / "build/flashback"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="both engines (default: every core)")
    ap.add_argument("--models", default="fp32,bf16,q4_1,q4_k_m",
                    help="comma-separated: fp32, bf16 (the random 134M), q4_1 (SmolLM2), q4_k_m (the 134M, by llama.cpp)")
    ap.add_argument("--shared", default=os.environ.get("FLASHBACK_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--cache", default=str(Path(os.environ.get("FLASHBACK_CACHE", Path.home() / ".cache/flashback")) / "peers"),
                    help="where the random 134M GGUFs are written once")
    ap.add_argument("--smollm2", default=str(Path(os.environ.get("FLASHBACK_CACHE", Path.home() / ".cache/flashback"))
                                             / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=str(ROOT / "docs"), help="writes bench/peers.json and the block in performance.md")
    ap.add_argument("--from-json", help="re-render a peers.json; with --models, rerun those models and keep its others")
    ap.add_argument("--quick", action="store_true", help="stories260K, tiny workloads (smoke test)")
    args = ap.parse_args()
    if args.llama_worker:
        print(json.dumps(llama_worker(json.loads(args.llama_worker))))
        return 0
    from flashback.io import write_text_atomic

    out = Path(args.out)
    (out / "bench").mkdir(parents=True, exist_ok=True)
    md_path = out / "performance.md"

    def save(res: dict) -> None:
        write_text_atomic(out / "bench/peers.json", json.dumps(res, indent=1) + "\n")
        text = md_path.read_text() if md_path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
        block = markdown(res)
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        write_text_atomic(md_path, text)

    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        if "--models" in sys.argv[1:] or any(a.startswith("--models=") for a in sys.argv[1:]):
            res = run_all(args, save, res)
        else:
            save(res)
    else:
        res = run_all(args, save)
    for m in res["models"]:
        log(m["label"] + ": " + ", ".join(f"{e['workload']} {e['ratio']:.2f}x" for e in m["workloads"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
