"""`flashback bench ralm`: the paper's runtime test on random weights. Checks
the accounting (what each mode re-encodes, counted by hand from the layouts),
the JSON contract and bad arguments; then smoke runs of bench prefill/decode/
retrieve (their work and bytes counted by hand for a tiny config) and of
benchmarks/standard.py. Speed itself is measured by benchmarks/standard.py,
never asserted here."""

import json
import statistics

import pytest
from fbtest import REPO, SHARED, STORIES, fails, find_cli, run

SMALL = "hidden=32,layers=2,heads=4,kv_heads=2,ffn=64,vocab=300"
# SMALL's parameters, by hand: per layer q 32x32 + k, v 16x32 + o 32x32 + gate, up 64x32 + down 32x64 + two
# norms of 32 = 9280; 2 layers, the final norm (32), the untied head 300x32 = 9600, the embedding 9600.
SMALL_PARAMS = 2 * 9280 + 32 + 9600 + 9600  # 37792
SMALL_READ_PER_TOKEN = SMALL_PARAMS - 9600   # every weight but the embedding table: 28192


def test_bench_ralm_accounting_and_json():
    init, total, stride, doc = 100, 300, 16, 40
    out = run("bench", "ralm", "--config", SMALL, "--init", init, "--total", total, "--stride", stride, "--doc", doc,
              "--repeats", 2, "--json", "--threads", 1)
    j = json.loads(out.stdout)
    assert j["bench"] == "ralm" and j["repeats"] == 2 and j["parameters"] == SMALL_PARAMS
    assert j["warmup"] == "short"  # auto on the CPU
    modes = {m["mode"]: m for m in j["modes"]}
    # 300 - 40 - 100 = 160 tokens generated, a retrieval before tokens 0, 16, ..., 144: 10 retrievals;
    # every generated token is appended but the last and the 9 held for the next retrieval: 150 decoded.
    for m in modes.values():
        assert m["generated"] == 160 and m["retrievals"] == 10 and m["tokens_decoded"] == 150
        assert len(m["seconds_all"]) == 2 and m["seconds"] == pytest.approx(statistics.median(m["seconds_all"]))
        assert 0 < m["model_share"] <= 1
    a, p = modes["append"], modes["prepend"]
    # append: the prompt and the first block (100 + 2 marks + 40), then each of 9 retrievals the 16 recent
    # tokens and a new block (16 + 42): 142 + 9 x 58
    assert a["first_place_tokens"] == 142 and a["tokens_reencoded"] == 664
    # prepend: every retrieval re-encodes the document and the whole text so far: 140, 156, ..., 284
    assert p["first_place_tokens"] == 140 and p["tokens_reencoded"] == 2120
    assert j["speedup_append_over_prepend"] == pytest.approx(statistics.median(p["seconds_all"]) /
                                                             statistics.median(a["seconds_all"]))


def test_bench_ralm_at_the_configs_maximum_length():
    """total = the config's max_pos (3584/4096 on a 4096-position config): the random model is given the positions
    the run needs, the cache's slots and the documents' room below the input, instead of failing."""
    j = json.loads(run("bench", "ralm", "--config", SMALL + ",max_pos=256", "--init", 200, "--total", 256,
                       "--doc", 24, "--json", "--threads", 1).stdout)
    assert {m["mode"]: m["generated"] for m in j["modes"]} == {"append": 32, "prepend": 32}
    # --kv-dtype bf16: the same run with every cache at half the bytes (the capacity is 256 + 2 + 16 slots)
    h = json.loads(run("bench", "ralm", "--config", SMALL + ",max_pos=256", "--init", 200, "--total", 256,
                       "--doc", 24, "--json", "--threads", 1, "--kv-dtype", "bf16").stdout)
    assert (j["kv_dtype"], h["kv_dtype"]) == ("fp32", "bf16")
    assert j["memory"]["kv_cache_bytes"] == 2 * 2 * 16 * 274 * 4 == 2 * h["memory"]["kv_cache_bytes"]
    # A checkpoint holds what it holds: one line naming it and the positions needed (256 + 2 + 16 slots, 26 below).
    fails("bench", "ralm", "--model", STORIES / "stories260K.bin", "--init", 400, "--total", 512, "--doc", 24,
          contains=("stories260K.bin", "holds 512 positions", "needs 556"))


def test_bench_ralm_bad_arguments():
    fails("bench", "ralm", "--config", SMALL, "--init", 100, "--total", 120, contains=("leaves nothing to generate",))
    fails("bench", "ralm", "--config", SMALL, "--init", 10, "--total", 200, "--modes", "append,sideways",
          contains=("sideways",))
    fails("bench", "ralm", "--config", "hidden=32,layers=x", contains=("layers",))
    fails("bench", "ralm", "--config", SMALL, "--init", 10, "--total", 200, "--warmup", "twice",
          contains=("--warmup", "twice"))
    fails("bench", "ralm", "--config", SMALL, "--dtype", "int8", "--init", 10, "--total", 200, contains=("int8",))


def test_bench_ralm_full_warmup():
    j = json.loads(run("bench", "ralm", "--config", SMALL, "--init", 40, "--total", 120, "--doc", 16, "--json",
                       "--threads", 1, "--warmup", "full").stdout)
    assert j["warmup"] == "full" and {m["mode"] for m in j["modes"]} == {"append", "prepend"}


def test_bench_ralm_reports_memory():
    j = json.loads(run("bench", "ralm", "--config", SMALL, "--init", 40, "--total", 120, "--doc", 16, "--json",
                       "--threads", 1).stdout)
    mem = j["memory"]
    cache_bytes = 2 * 2 * (120 + 2 + 16) * 16 * 4  # K and V, 2 layers, capacity total + 2 + stride, kv_dim 16, fp32
    assert mem["kv_cache_bytes"] == cache_bytes
    assert mem["weights_bytes"] == j["parameters"] * 4
    assert mem["peak_rss_bytes"] >= mem["process_before_model_bytes"] > 0
    assert mem["peak_over_weights_and_cache"] > 0
    for m in j["modes"]:
        assert isinstance(m["rss_growth_during_generation_bytes"], int)


def test_bench_ralm_streams_equal_their_solo_runs():
    # 2 and 3 streams through shared forwards: every stream's ids are checked against its solo run (the
    # command fails on a mismatch), the paper's accounting per stream is unchanged.
    out = run("bench", "ralm", "--config", SMALL, "--init", 40, "--total", 200, "--stride", 16, "--doc", 24,
              "--streams", "1,2,3", "--json", "--threads", 1)
    j = json.loads(out.stdout)
    rows = {(e["mode"], e["streams"]): e for e in j["streams"]}
    assert sorted(rows) == [(m, n) for m in ("append", "prepend") for n in (1, 2, 3)]
    for (mode, n), e in rows.items():
        assert e["ids_equal_solo"] is True
        assert e["tokens_per_second"] == pytest.approx(n * 136 / e["seconds"])
        if n > 1:
            assert e["max_sequences_per_forward"] == n and e["forwards"] > 0
    one = {m["mode"]: m for m in j["modes"]}
    assert rows[("append", 1)]["seconds"] == pytest.approx(one["append"]["seconds"])
    # The caches of the streams are part of the memory held.
    cache = 2 * 2 * (200 + 2 + 16) * 16 * 4
    assert j["memory"]["kv_cache_bytes"] == cache * (1 + 3)
    fails("bench", "ralm", "--config", SMALL, "--init", 40, "--total", 200, "--streams", "2,0", contains=("streams",))


def test_bench_prefill_and_decode_smoke():
    p = json.loads(run("bench", "prefill", "--config", SMALL, "--tokens", 24, "--repeats", 1, "--json",
                       "--threads", 1).stdout)
    assert p["bench"] == "prefill" and p["tokens"] == 24 and p["seconds"] > 0
    # Useful work, by hand: 2 flops per weight but the head's per token x 24 tokens, the head once (last
    # row), causal attention: 2 layers x 2 products (QK^T, PV) x 2 flops x 32 x (1 + 2 + ... + 24 = 300)
    useful = 2 * (SMALL_READ_PER_TOKEN - 9600) * 24 + 2 * 9600 + 2 * 2 * 2 * 32 * 300
    assert p["gflops"] * 1e9 * p["seconds"] == pytest.approx(useful, rel=1e-9)
    assert p["gemm_gflops_fp32"] > 0 and p["fraction_of_gemm"] == pytest.approx(
        statistics.median(p["fraction_of_gemm_all"]))
    for dtype, kv in (("fp32", None), ("bf16", None), ("fp32", "bf16")):
        d = json.loads(run("bench", "decode", "--config", SMALL, "--dtype", dtype, "--context", 20, "--tokens", 4,
                           "--repeats", 1, "--baseline", "--json", "--threads", 1,
                           *(("--kv-dtype", kv) if kv else ())).stdout)
        assert d["bench"] == "decode" and d["dtype"] == dtype and d["context"] == 20 and d["kv_dtype"] == (kv or dtype)
        elem, kv_elem = (4 if dtype == "fp32" else 2), (4 if (kv or dtype) == "fp32" else 2)
        # every weight but the embedding table, plus K and V (2 layers x kv_dim 16) at the middle step's
        # context (20 + 4 / 2 = 22 positions), each in its own dtype
        assert d["bytes_read_per_token"] == SMALL_READ_PER_TOKEN * elem + 2 * 2 * 16 * 22 * kv_elem
        assert d["read_bandwidth_gbs"] > 0 and d["floor_tokens_per_s"] > 0
        assert d["fraction_of_floor"] == pytest.approx(statistics.median(d["fraction_of_floor_all"]))
        assert d["libtorch_only"]["tokens_per_s"] > 0 and d["speedup_over_libtorch"] > 0
    fails("bench", "decode", "--config", SMALL, "--dtype", "int8", contains=("int8",))
    fails("bench", "decode", "--config", SMALL, "--kv-dtype", "int8", contains=("kv_dtype: unknown dtype 'int8'",))
    fails("bench", "prefill", "--config", "hidden=32,heads=5", contains=("num_attention_heads (5)",))


def test_bench_measures_the_checkpoint_given_with_model():
    """--model: a real file's weights instead of random ones (the file llama.cpp runs, side by side)."""
    stories = SHARED / "models/stories260K/stories260K.bin"
    # stories260K, by hand: per layer q 64x64 + k, v 32x64 + o 64x64 + gate, up, down 3 x 172x64 + two norms
    # of 64 = 45440; 5 layers, the final norm (64) and the tied embedding 512x64 (once).
    params = 5 * 45440 + 64 + 512 * 64
    j = json.loads(run("bench", "ralm", "--model", stories, "--init", 100, "--total", 300, "--doc", 40,
                       "--json", "--threads", 1).stdout)
    assert j["config"] == str(stories) and j["parameters"] == params
    assert {m["mode"]: m["tokens_reencoded"] for m in j["modes"]} == {"append": 664, "prepend": 2120}  # as above
    p = json.loads(run("bench", "prefill", "-m", stories, "--tokens", 24, "--repeats", 1, "--json",
                       "--threads", 1).stdout)
    assert p["config"] == str(stories) and p["parameters"] == params and p["seconds"] > 0
    d = json.loads(run("bench", "decode", "-m", stories, "--dtype", "bf16", "--context", 20, "--tokens", 4,
                       "--repeats", 1, "--json", "--threads", 1).stdout)
    assert d["dtype"] == "bf16" and d["tokens_per_s"] > 0
    # 600 + 2 + 16 cache slots, and below the input the room of a default 128-token document and its two marks.
    fails("bench", "ralm", "-m", stories, "--init", 100, "--total", 600,
          contains=(str(stories), "holds 512 positions", "needs 748"))
    fails("bench", "decode", "-m", SHARED / "nothing-here.gguf", contains=("nothing-here.gguf",))


def test_bench_retrieve_smoke(tmp_path):
    if run("bench", "retrieve", "--help", check=False).returncode != 0:
        pytest.skip("built without retrieval")
    tok = SHARED / "models/stories260K/tok512.model"
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"Story {i}: the cat saw a dog number {i} near the red house and they played."
                                for i in range(50)) + "\n")
    index = tmp_path / "index"
    run("index", "--corpus", text, "--format", "paragraphs", "--tokenizer", tok, "--out", index)
    j = json.loads(run("bench", "retrieve", "--index", index, "--text", text, "--queries", 30, "--query-words", 6,
                       "--json").stdout)
    assert j["bench"] == "retrieve" and j["queries"] == 30 and j["passages"] == 50 and j["answered"] == 30
    assert 0 < j["median_ms"] <= j["p90_ms"] <= j["max_ms"]
    fails("bench", "retrieve", "--index", tmp_path / "nope", "--text", text, contains=("nope",))
    fails("bench", "retrieve", "--index", index, "--text", tmp_path / "missing.txt", contains=("missing.txt",))


def run_script(script, *args, threads_env=True, check=True):
    """benchmarks/<script> with this Python, the CLI under test and one LibTorch thread; the finished process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLASHBACK_THREADS": "1"} if threads_env else None
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_standard_script_quick(tmp_path):
    run_script("standard.py", "--quick", "--repeats", 1, "--flashback", find_cli(), "--out", tmp_path)
    res = json.loads((tmp_path / "bench/standard.json").read_text())
    assert [d["dtype"] for d in res["decode"]] == ["fp32", "bf16"]
    assert [(r["init"], r["total"]) for r in res["ralm"]] == [(48, 160), (96, 256)]
    assert (tmp_path / "performance.png").stat().st_size > 1000
    md = (tmp_path / "performance.md").read_text()
    assert "<!-- standard:begin -->" in md and "<!-- standard:end -->" in md
    for r in res["ralm"]:
        assert f"**{r['speedup_append_over_prepend']:.2f}x**" in md
    # Re-rendering keeps one generated block and the text around it.
    (tmp_path / "performance.md").write_text("# Title\n\nprose before\n\n" + md[md.index("<!-- standard:begin"):] + "\nprose after\n")
    run_script("standard.py", "--from-json", tmp_path / "bench/standard.json", "--out", tmp_path, threads_env=False)
    md2 = (tmp_path / "performance.md").read_text()
    assert md2.count("<!-- standard:begin -->") == 1 and "prose before" in md2 and "prose after" in md2
    # --only reruns one part (here with 2 repeats, so the rerun shows) and keeps the others as they were.
    before = json.loads((tmp_path / "bench/standard.json").read_text())
    assert set(before["part_dates"].values()) == {before["date"]}  # a full run: every part measured then
    assert sorted(before["part_dates"]) == ["decode", "prefill", "ralm:48/160", "ralm:96/256"]
    before["part_dates"] = {p: "2000-01-01 00:00 UTC" for p in before["part_dates"]}  # as if measured long ago
    (tmp_path / "bench/standard.json").write_text(json.dumps(before))
    run_script("standard.py", "--quick", "--repeats", 2, "--flashback", find_cli(), "--out", tmp_path,
               "--from-json", tmp_path / "bench/standard.json", "--only", "ralm:48/160")
    after = json.loads((tmp_path / "bench/standard.json").read_text())
    assert [(r["init"], r["total"]) for r in after["ralm"]] == [(48, 160), (96, 256)]
    assert after["ralm"][1] == before["ralm"][1] and after["decode"] == before["decode"]
    assert after["ralm"][0]["repeats"] == 2 and len(after["ralm"][0]["modes"][0]["seconds_all"]) == 2
    assert before["ralm"][0]["repeats"] == 1
    # Each part keeps the date it was measured; the block says which parts are from when.
    assert after["part_dates"]["ralm:48/160"] == after["date"] != "2000-01-01 00:00 UTC"
    assert {p: d for p, d in after["part_dates"].items() if p != "ralm:48/160"} == {
        "decode": "2000-01-01 00:00 UTC", "prefill": "2000-01-01 00:00 UTC", "ralm:96/256": "2000-01-01 00:00 UTC"}
    md3 = (tmp_path / "performance.md").read_text()
    assert f"decode, prefill, ralm:96/256 on 2000-01-01 00:00 UTC; ralm:48/160 on {after['date']}" in md3


def test_peers_script_quick(tmp_path):
    """benchmarks/peers.py beside llama.cpp on stories260K's GGUF: both engines run the same workloads and the
    paper's test re-encodes and decodes the same token counts in both (the script refuses to report otherwise)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install_references.sh)")
    run_script("peers.py", "--quick", "--repeats", 2, "--flashback", find_cli(), "--out", tmp_path)
    res = json.loads((tmp_path / "bench/peers.json").read_text())
    (m,) = res["models"]
    assert [e["workload"] for e in m["workloads"]] == ["decode@32", "prefill 64", "append 48/160", "prepend 48/160"]
    for e in m["workloads"]:
        for engine in ("flashback", "llama.cpp"):
            assert len(e[engine]["all"]) == 2 and e[engine]["median"] == pytest.approx(statistics.median(e[engine]["all"]))
        faster = e["flashback"]["median"] / e["llama.cpp"]["median"]
        assert e["ratio"] == pytest.approx(1 / faster if e["unit"] == "seconds" else faster)
    # flashback's KV cache dtype is tuned as llama.cpp's settings are: both timed on each proxy, the faster kept.
    for t, e in zip(m["flashback_tuning"], m["workloads"]):
        (f32, b16) = t["all"]
        assert (f32["kv_dtype"], b16["kv_dtype"]) == ("fp32", "bf16") and t["workload"] == e["workload"]
        faster = (min if e["unit"] == "seconds" else max)((f32, b16), key=lambda c: c["value"])
        assert e["flashback_kv_dtype"] == t["best"] == faster["kv_dtype"]
    ralm = {e["mode"]: e for e in m["workloads"] if e["kind"] == "ralm"}
    # 160 - 16 - 48 = 96 generated, 6 retrievals: append re-encodes 48 + 18, then 5 x (16 + 18); prepend
    # 16 + 48, 16 + 64, ..., 16 + 128; 96 - 1 - 5 held tokens decoded.
    assert ralm["append"]["tokens_reencoded"] == 66 + 5 * 34
    assert ralm["prepend"]["tokens_reencoded"] == sum(16 + 48 + 16 * i for i in range(6))
    assert ralm["append"]["tokens_decoded"] == ralm["prepend"]["tokens_decoded"] == 90
    a = m["append_over_prepend"]
    assert a["flashback"] == pytest.approx(ralm["prepend"]["flashback"]["median"] / ralm["append"]["flashback"]["median"])
    md = (tmp_path / "performance.md").read_text()
    assert md.count("<!-- peers:begin -->") == 1 and f"**{m['workloads'][0]['ratio']:.2f}x**" in md
    assert f"| **{m['workloads'][0]['ratio']:.2f}x** | {m['workloads'][0]['flashback_kv_dtype'].upper()} | FA " in md
    # --from-json with --models reruns those models and keeps the others, each with the date it was measured.
    other = {**m, "key": "other", "label": "other model", "date": "2000-01-01 00:00 UTC"}
    (tmp_path / "bench/peers.json").write_text(json.dumps({**res, "models": [other, m]}))
    rerun = ("--quick", "--flashback", find_cli(), "--out", tmp_path, "--from-json", tmp_path / "bench/peers.json",
             "--models", "fp32")
    run_script("peers.py", *rerun, "--repeats", 2)
    merged = json.loads((tmp_path / "bench/peers.json").read_text())
    assert [x["label"] for x in merged["models"]] == ["other model", "stories260K F32"]
    assert merged["models"][0] == other and merged["models"][1]["date"] == merged["date"] != other["date"]
    assert "other model (flashback: `--dtype fp32`, measured 2000-01-01 00:00 UTC on " in (tmp_path / "performance.md").read_text()
    proc = run_script("peers.py", *rerun, "--repeats", 3, threads_env=False, check=False)
    assert proc.returncode != 0 and "2 repeats" in proc.stderr  # not comparable: refused, nothing written
    assert json.loads((tmp_path / "bench/peers.json").read_text()) == merged
