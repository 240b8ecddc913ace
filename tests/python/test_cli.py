"""The `flashback` CLI contract: generate / tokenize / info / convert, and one
clear error line with a non-zero exit status for bad input."""

import json
import shutil

import pytest

from fbtest import SHARED, fails, run

STORIES = SHARED / "models/stories260K"
GOLDEN = json.loads((STORIES / "golden.json").read_text())


def generate_json(model, prompt, n, *extra):
    out = run("generate", "--model", model, "--prompt", prompt, "-n", n, "--json", *extra).stdout
    return json.loads(out)


@pytest.mark.parametrize("model", ["stories260K.bin", "stories260K.gguf"])
def test_generate_json_matches_golden(model):
    golden = GOLDEN["greedy_from_bos_64_steps_ids_incl_bos"]
    got = generate_json(STORIES / model, "Once upon a time", 60)
    assert got["prompt_ids"] == golden[:5]  # BOS first
    assert got["ids"] == golden[5:65]
    assert GOLDEN["greedy_text"].startswith("Once upon a time" + got["text"])


def test_generate_streams_text():
    out = run("generate", "--model", STORIES / "stories260K.bin", "--prompt", "Once upon a time", "-n", 20).stdout
    assert out.strip() == "Once upon a time" + generate_json(STORIES / "stories260K.bin", "Once upon a time", 20)["text"]


def test_sampling_is_seeded():
    args = (STORIES / "stories260K.bin", "Lily", 30, "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95")
    a = generate_json(*args, "--seed", "7")
    b = generate_json(*args, "--seed", "7")
    c = generate_json(*args, "--seed", "8")
    assert a["ids"] == b["ids"]
    assert a["ids"] != c["ids"]


def test_tokenizer_bin_works_as_tokenizer():
    got = generate_json(STORIES / "stories260K.bin", "Once upon a time", 8, "--tokenizer", STORIES / "tok512.bin")
    assert got["prompt_ids"] == [1, 403, 407, 261, 378]


def test_info_json():
    info = json.loads(run("info", "--model", STORIES / "stories260K.bin", "--json").stdout)
    assert info["parameters"] == 260032
    assert info["config"]["num_key_value_heads"] == 4
    assert info["format"] == "llama2c"


def test_convert_round_trip(tmp_path):
    for src in ("stories260K.bin", "stories260K.gguf"):
        out = tmp_path / src
        run("convert", "--model", STORIES / src, "--out", out)
        assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.model"}
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "llama" and config["num_key_value_heads"] == 4
        a = generate_json(STORIES / src, "Once upon a time", 24)
        b = generate_json(out, "Once upon a time", 24)
        assert a == {**b, "prefill_seconds": a["prefill_seconds"], "decode_seconds": a["decode_seconds"]}


def test_converted_tokenizer_loads_in_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    run("convert", "--model", SHARED / "models/llama-2-tiny-random/llama-2-tiny-random.gguf", "--out", tmp_path / "m")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "m/tokenizer.model"))
    assert sp.encode("Hello world") == GOLDEN["llama2_tokenizer_model_examples"]["Hello world"]


def expect_error(args, *needles):
    fails(*args, contains=needles)


def test_errors_are_one_clear_line(tmp_path):
    bin_model = STORIES / "stories260K.bin"
    expect_error(["generate", "--model", tmp_path / "nope", "--prompt", "x"], "nope", "no such file")
    short = tmp_path / "short.bin"
    short.write_bytes(bin_model.read_bytes()[:5000])
    expect_error(["generate", "--model", short, "--prompt", "x"], "short.bin", "truncated")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes((STORIES / "stories260K.gguf").read_bytes()[:70000])
    expect_error(["info", "--model", cut], "cut.gguf")
    expect_error(["generate", "--model", bin_model, "--prompt", "x " * 600, "-n", "4"], "exceed the maximum of 512")
    expect_error(["generate", "--model", bin_model, "--prompt", "x", "--tokenizer", tmp_path / "none.model"],
                 "none.model")
    bad_tok = tmp_path / "bad.model"
    bad_tok.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    expect_error(["generate", "--model", bin_model, "--prompt", "x", "--tokenizer", bad_tok], "bad.model")
    big_vocab = SHARED / "models/llama2-tokenizer/tokenizer.model"
    expect_error(["generate", "--model", bin_model, "--prompt", "x", "--tokenizer", big_vocab],
                 "32000 pieces", "only 512")
    expect_error(["generate", "--model", bin_model, "--prompt", "x", "--dtype", "int4"], "unknown dtype")
    (tmp_path / "dir").mkdir()
    expect_error(["convert", "--model", tmp_path / "dir", "--out", tmp_path / "o"], "no config.json")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(bin_model, lonely / "m.bin")
    expect_error(["generate", "--model", lonely / "m.bin", "--prompt", "x"], "no tokenizer found")


def test_bad_flags_exit_nonzero():
    proc = run("generate", "--prompt", "x", check=False)
    assert proc.returncode != 0 and "--model" in proc.stderr
    proc = run("frobnicate", check=False)
    assert proc.returncode != 0
