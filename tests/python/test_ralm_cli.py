"""`flashback ralm` / `flashback eval` on stories260K with a real BM25 index
of TinyStories: KV reuse equals the --no-kv-reuse reference through the CLI,
the JSON contracts, side-by-side modes, and bad input."""

import json

import pytest

from fbtest import STORIES, fails, run, tinystories_data

MODEL = STORIES / "stories260K.bin"
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play in the park."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tinystories_data(tmp_path_factory.mktemp("ralm"))


def ralm(data, *extra):
    out = run("ralm", "--model", MODEL, "--index", data / "index", "--prompt", PROMPT, "-n", 40, "--json", *extra)
    return json.loads(out.stdout)


def evaluate(data, *extra):
    out = run("eval", "--model", MODEL, "--index", data / "index", "--text", data / "tinystories_heldout.txt",
              "--max-tokens", 240, "--json", *extra)
    return json.loads(out.stdout)


@pytest.mark.parametrize("mode", ["append", "prepend"])
@pytest.mark.parametrize("marks", ["--marks", "--no-marks"])
@pytest.mark.parametrize("k", ["1", "2"])
def test_kv_reuse_is_exact(data, mode, marks, k):
    args = ("--mode", mode, marks, "-k", k, "--stride", "8", "--doc-tokens", "48")
    fast, ref = ralm(data, *args), ralm(data, *args, "--no-kv-reuse")
    assert fast["ids"] == ref["ids"]
    assert fast["stats"]["retrievals"] == 5 and ref["stats"]["retrievals"] == 5
    # The reference recomputes everything: it re-encodes far more.
    assert ref["stats"]["tokens_reencoded"] > fast["stats"]["tokens_reencoded"]
    e_fast, e_ref = evaluate(data, *args), evaluate(data, *args, "--no-kv-reuse")
    assert e_fast["tokens"] == e_ref["tokens"] == 240
    assert abs(e_fast["nll"] - e_ref["nll"]) < 1e-5


def test_kv_dtype_bf16(data):
    """--kv-dtype bf16 on the fp32 model: KV reuse agrees with the recomputed reference to bf16's rounding of the
    keys and values (a value computed in another chunk may round to the other neighbour), and the mean NLL moves
    by that rounding only."""
    args = ("--mode", "append", "--stride", "8", "--doc-tokens", "48")
    fast, ref = ralm(data, *args, "--kv-dtype", "bf16"), ralm(data, *args, "--kv-dtype", "bf16", "--no-kv-reuse")
    assert fast["ids"] == ref["ids"]
    e16, e32 = evaluate(data, *args, "--kv-dtype", "bf16"), evaluate(data, *args)
    e16_ref = evaluate(data, *args, "--kv-dtype", "bf16", "--no-kv-reuse")
    assert e16["tokens"] == e32["tokens"] == 240
    assert abs(e16["nll"] - e16_ref["nll"]) < 1e-3 * e32["nll"]
    assert e16["nll"] != e32["nll"] and abs(e16["nll"] - e32["nll"]) < 1e-2 * e32["nll"]
    g = json.loads(run("generate", "--model", MODEL, "--prompt", PROMPT, "-n", 8, "--kv-dtype", "bf16", "--json").stdout)
    assert len(g["ids"]) == 8
    fails("ralm", "--model", MODEL, "--index", data / "index", "--prompt", "x", "--kv-dtype", "int8",
          contains=["kv_dtype: unknown dtype 'int8'"])
    fails("generate", "--model", MODEL, "--prompt", "x", "--kv-dtype", "int8", contains=["kv_dtype: unknown dtype 'int8'"])


def test_json_contracts(data):
    r = ralm(data, "--mode", "append")
    assert set(r) >= {"ids", "text", "stats"}
    assert len(r["ids"]) == 40 and all(i < 512 for i in r["ids"])  # marks are never generated
    s = r["stats"]
    assert set(s) >= {"retrievals", "tokens_reencoded", "tokens_decoded", "retrieve_seconds", "reencode_seconds",
                      "decode_seconds"}
    assert s["retrievals"] == 3 and s["tokens_decoded"] == 37  # 39 after the first, less 2 held for retrievals
    e = evaluate(data, "--mode", "prepend")
    assert set(e) >= {"ppl", "nll", "tokens", "stats"}
    assert e["ppl"] == pytest.approx(2.718281828 ** e["nll"], rel=1e-9)


def test_documents_change_the_prediction_and_none_needs_no_index(data):
    none = json.loads(run("eval", "--model", MODEL, "--text", data / "tinystories_heldout.txt", "--max-tokens", 240,
                          "--mode", "none", "--json").stdout)
    prepend = evaluate(data, "--mode", "prepend", "--no-marks")
    assert none["stats"]["retrievals"] == 0
    assert prepend["stats"]["retrievals"] > 10
    assert abs(none["nll"] - prepend["nll"]) > 1e-3


def test_side_by_side(data):
    out = run("ralm", "--model", MODEL, "--index", data / "index", "--prompt", PROMPT, "-n", 32,
              "--mode", "prepend,append").stdout
    assert "== prepend + marks" in out and "== append + marks" in out
    table = out[out.index("mode "):].splitlines()
    assert table[1].startswith("prepend") and table[2].startswith("append")


def test_prompts_file_runs_batched_streams_equal_to_single_runs(data, tmp_path):
    """--prompts-file: every prompt as a batched stream; each JSON line's ids and retrievals are those of the
    prompt's own --prompt run (greedy)."""
    prompts = [PROMPT, "Tom had a big red ball.", "The cat sat in the sun and"]
    f = tmp_path / "prompts.txt"
    f.write_text(prompts[0] + "\n\n" + prompts[1] + "\r\n" + prompts[2] + "\n")  # blank lines skipped, CRLF too
    for mode in ("append", "prepend"):
        args = ("--mode", mode, "--stride", "8", "--doc-tokens", "32", "-n", "24")
        out = run("ralm", "--model", MODEL, "--index", data / "index", "--prompts-file", f, "--json", *args).stdout
        lines = [json.loads(line) for line in out.splitlines()]
        assert [r["prompt_index"] for r in lines] == [0, 1, 2]
        for p, got in zip(prompts, lines):
            want = json.loads(run("ralm", "--model", MODEL, "--index", data / "index", "--prompt", p, "--json",
                                  *args).stdout)
            assert got["ids"] == want["ids"] and got["text"] == want["text"], (mode, p)
            assert [r["titles"] for r in got["retrievals"]] == [r["titles"] for r in want["retrievals"]]
            assert got["stats"]["retrievals"] == want["stats"]["retrievals"] == 3
    text = run("ralm", "--model", MODEL, "--index", data / "index", "--prompts-file", f, "-n", "8",
               "--mode", "prepend,append")
    assert text.stdout.count("== append + marks, prompt ") == 3 and "batch s" in text.stdout
    assert "3 prompts as batched streams" in text.stderr
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    fails("ralm", "--model", MODEL, "--index", data / "index", "--prompts-file", blank, contains=["blank.txt", "no prompts"])
    fails("ralm", "--model", MODEL, "--index", data / "index", "--prompts-file", tmp_path / "gone.txt",
          contains=["gone.txt"])
    fails("ralm", "--model", MODEL, "--index", data / "index", "--prompts-file", f, "--prompt", "x",
          contains=["--prompt or --prompts-file"])
    fails("ralm", "--model", MODEL, "--index", data / "index", contains=["--prompt or --prompts-file"])


def test_bad_input(data, tmp_path):
    base = ("--model", MODEL, "--prompt", "x", "-n", "4")
    fails("ralm", *base, "--mode", "append", contains=["--index is required"])
    fails("ralm", *base, "--index", tmp_path / "nope", contains=["nope"])
    fails("ralm", *base, "--index", data / "index", "--mode", "sideways", contains=["unknown mode 'sideways'"])
    # documents too long: for the room kept below the input (the default positions) / for the window (the paper's)
    fails("ralm", *base, "--index", data / "index", "--doc-tokens", "600",
          contains=["602 positions before the input", "maximum position (512)"])
    fails("ralm", *base, "--index", data / "index", "--doc-tokens", "600", "--doc-positions", "after",
          contains=["leave no room for the input"])
    fails("ralm", *base, "--index", data / "index", "--doc-positions", "sideways", contains=["unknown doc positions 'sideways'"])
    fails("ralm", *base, "--index", data / "index", "--max-length", "4096", contains=["exceeds"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails("eval", "--model", MODEL, "--index", data / "index", "--text", empty, contains=["no tokens to score"])
    fails("eval", "--model", MODEL, "--index", data / "index", "--text", tmp_path / "missing.txt",
          contains=["missing.txt"])
    proc = run("ralm", *base, "--index", data / "index", "--stride", "0", check=False)
    assert proc.returncode != 0 and "stride" in proc.stderr
