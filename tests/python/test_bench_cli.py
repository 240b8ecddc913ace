"""`flashback bench ralm`: the paper's runtime test on random weights. Checks
the accounting (what each mode re-encodes follows from the layout), the JSON
contract and bad arguments; speed itself is measured by benchmarks/, not here."""

import json

from fbtest import fails, run

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
