"""`flashback bench ralm`: the paper's runtime test on random weights. Checks
the accounting (what each mode re-encodes follows from the layout), the JSON
contract and bad arguments; then smoke runs of bench prefill/decode/retrieve
and of benchmarks/standard.py on a tiny config. Speed itself is measured by
benchmarks/standard.py, never asserted here."""

import json

import pytest
from fbtest import REPO, SHARED, fails, find_cli, run

SMALL = "hidden=32,layers=2,heads=4,kv_heads=2,ffn=64,vocab=300"


def test_bench_ralm_accounting_and_json():
    init, total, stride, doc = 100, 300, 16, 40
    out = run("bench", "ralm", "--config", SMALL, "--init", init, "--total", total, "--stride", stride, "--doc", doc,
              "--repeats", 2, "--json", "--threads", 1)
    j = json.loads(out.stdout)
    assert j["bench"] == "ralm" and j["repeats"] == 2 and j["parameters"] > 0
    modes = {m["mode"]: m for m in j["modes"]}
    gen = total - doc - init
    retrievals = -(-gen // stride)
    for m in modes.values():
        assert m["generated"] == gen and m["retrievals"] == retrievals and m["tokens_decoded"] == gen - 1
        assert len(m["seconds_all"]) == 2 and m["seconds"] > 0
        assert 0 < m["model_share"] <= 1
    a, p = modes["append"], modes["prepend"]
    # append: the input once, then each later retrieval the recent stride tokens + <MARK_L> doc <MARK_R>
    assert a["first_place_tokens"] == init + doc + 2
    assert a["tokens_reencoded"] == init + doc + 2 + (retrievals - 1) * (stride + doc + 2)
    # prepend: every retrieval re-encodes the document and the whole text so far
    want = sum(doc + init + i * stride for i in range(retrievals))
    assert p["tokens_reencoded"] == want
    assert j["speedup_append_over_prepend"] == p["seconds"] / a["seconds"]


def test_bench_ralm_bad_arguments():
    fails("bench", "ralm", "--config", SMALL, "--init", 100, "--total", 120, contains=("leaves nothing to generate",))
    fails("bench", "ralm", "--config", SMALL, "--init", 10, "--total", 200, "--modes", "append,sideways",
          contains=("sideways",))
    fails("bench", "ralm", "--config", "hidden=32,layers=x", contains=("layers",))
    fails("bench", "ralm", "--config", SMALL, "--dtype", "int8", "--init", 10, "--total", 200, contains=("int8",))


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


def test_bench_prefill_and_decode_smoke():
    p = json.loads(run("bench", "prefill", "--config", SMALL, "--tokens", 24, "--repeats", 1, "--json",
                       "--threads", 1).stdout)
    assert p["bench"] == "prefill" and p["tokens"] == 24 and p["seconds"] > 0
    assert p["tokens_per_s"] == 24 / p["seconds"] and p["gemm_gflops_fp32"] > 0 and p["fraction_of_gemm"] > 0
    for dtype in ("fp32", "bf16"):
        d = json.loads(run("bench", "decode", "--config", SMALL, "--dtype", dtype, "--context", 20, "--tokens", 4,
                           "--repeats", 1, "--baseline", "--json", "--threads", 1).stdout)
        assert d["bench"] == "decode" and d["dtype"] == dtype and d["context"] == 20
        elem = 4 if dtype == "fp32" else 2
        # every weight but the embedding table, plus K and V at the middle step's context (20 + 4 / 2)
        matmul_params = d["parameters"] - 300 * 32
        assert d["bytes_read_per_token"] == (matmul_params + 2 * 2 * 16 * 22) * elem
        assert d["read_bandwidth_gbs"] > 0 and d["floor_tokens_per_s"] > 0
        assert abs(d["fraction_of_floor"] - d["tokens_per_s"] / d["floor_tokens_per_s"]) < 1e-9
        assert d["libtorch_only"]["tokens_per_s"] > 0 and d["speedup_over_libtorch"] > 0
    fails("bench", "decode", "--config", SMALL, "--dtype", "int8", contains=("int8",))
    fails("bench", "prefill", "--config", "hidden=32,heads=5", contains=("num_attention_heads (5)",))


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


def test_standard_script_quick(tmp_path):
    import os
    import subprocess
    import sys

    script = REPO / "benchmarks/standard.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--repeats", "1", "--flashback", str(find_cli()),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FLASHBACK_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
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
    subprocess.run([sys.executable, str(script), "--from-json", str(tmp_path / "bench/standard.json"), "--out",
                    str(tmp_path)], check=True, capture_output=True)
    md2 = (tmp_path / "performance.md").read_text()
    assert md2.count("<!-- standard:begin -->") == 1 and "prose before" in md2 and "prose after" in md2
    # --only reruns one part and keeps the others.
    before = json.loads((tmp_path / "bench/standard.json").read_text())
    subprocess.run([sys.executable, str(script), "--quick", "--repeats", "1", "--flashback", str(find_cli()), "--out",
                    str(tmp_path), "--from-json", str(tmp_path / "bench/standard.json"), "--only", "ralm:48/160"],
                   check=True, capture_output=True, env={**os.environ, "FLASHBACK_THREADS": "1"})
    after = json.loads((tmp_path / "bench/standard.json").read_text())
    assert [(r["init"], r["total"]) for r in after["ralm"]] == [(48, 160), (96, 256)]
    assert after["ralm"][1] == before["ralm"][1] and after["decode"] == before["decode"]
    assert after["ralm"][0]["modes"][0]["seconds_all"] != before["ralm"][0]["modes"][0]["seconds_all"]
