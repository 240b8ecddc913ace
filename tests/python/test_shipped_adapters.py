"""Shipped adapters (shipped_adapters.hpp) are found by the model they were trained for: the CLI and
Python load the one whose fingerprint matches when the marks are added, --adapter overrides it and
--no-adapter / default_adapter=False turn it off. On stories260K with an adapter made here and found
through $FLASHBACK_ADAPTERS (the SmolLM2 adapter the project ships is tested in test_smollm2.py)."""

import json

import pytest
import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig

from fbtest import SHARED, STORIES, fails, run, tinystories_data

MODEL = STORIES / "stories260K.bin"
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play in the park."


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """adapters/stories/: a LoRA + mark-row adapter with non-zero weights, and its flashback.json."""
    root = tmp_path_factory.mktemp("shipped")
    m = LlamaForCausalLM.from_pretrained(MODEL, marks="add", default_adapter=False)
    m.add_adapter(LoraConfig(r=4, lora_alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in m.adapter_parameters():
            p.add_(torch.randn_like(p) * 0.05)  # B starts at zero: make the adapter change the model
    m.save_adapter(root / "adapters/stories", dtype=torch.bfloat16)
    flashback._C.write_shipped_adapter_info(str(root / "adapters/stories"), str(MODEL), "stories260K", "a test")
    d = tinystories_data(tmp_path_factory.mktemp("data"))
    return {"root": root / "adapters", "dir": root / "adapters/stories", "index": d / "index",
            "env": {"FLASHBACK_ADAPTERS": str(root / "adapters")}}


def test_saved_in_bf16_with_the_models_fingerprint(shipped):
    raw = (shipped["dir"] / "adapter_model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"BF16"}
    info = json.loads((shipped["dir"] / "flashback.json").read_text())
    assert info["fingerprint"] == flashback._C.model_fingerprint(str(MODEL))
    assert info["fingerprint"].startswith("llama-v512-h64-l5-a8-kv4-")


def test_the_fingerprint_is_the_models_across_formats(tmp_path):
    run("convert", "--model", MODEL, "--out", tmp_path / "hf")
    assert flashback._C.model_fingerprint(str(tmp_path / "hf")) == flashback._C.model_fingerprint(str(MODEL))
    # another model differs
    other = SHARED / "models/hf-fixtures/tiny-llama-gqa"
    assert flashback._C.model_fingerprint(str(other)) != flashback._C.model_fingerprint(str(MODEL))


def test_python_finds_it_when_marks_are_added(shipped, monkeypatch):
    monkeypatch.setenv("FLASHBACK_ADAPTERS", str(shipped["root"]))
    auto = LlamaForCausalLM.from_pretrained(MODEL, marks="add")
    assert auto.adapter_path == str(shipped["dir"]) and auto.has_adapter
    explicit = LlamaForCausalLM.from_pretrained(MODEL, marks="add", adapter=shipped["dir"])
    base = LlamaForCausalLM.from_pretrained(MODEL, marks="add", default_adapter=False)
    assert base.adapter_path is None and not base.has_adapter
    x = torch.tensor([auto.encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(auto(x).logits, explicit(x).logits, rtol=0, atol=0)
        assert (auto(x).logits - base(x).logits).abs().max() > 1e-3  # the adapter changes the model
    # without the marks the adapter (which carries their rows) does not apply
    assert LlamaForCausalLM.from_pretrained(MODEL).adapter_path is None


def test_the_cli_finds_it_and_flags_override(shipped):
    args = ("ralm", "--model", MODEL, "--index", shipped["index"], "--prompt", PROMPT, "-n", 24, "--json",
            "--mode", "append")
    auto = run(*args, env=shipped["env"])
    assert f"adapter: {shipped['dir']}" in auto.stderr
    explicit = run(*args, "--adapter", shipped["dir"])
    assert "adapter:" not in explicit.stderr
    assert json.loads(auto.stdout)["ids"] == json.loads(explicit.stdout)["ids"]
    off = run(*args, "--no-adapter", env=shipped["env"])
    plain = run(*args)
    assert "adapter:" not in off.stderr and json.loads(off.stdout)["ids"] == json.loads(plain.stdout)["ids"]
    assert json.loads(off.stdout)["ids"] != json.loads(auto.stdout)["ids"]
    # mode none adds no marks: no adapter
    none = run("ralm", "--model", MODEL, "--prompt", PROMPT, "-n", 4, "--mode", "none", env=shipped["env"])
    assert "adapter:" not in none.stderr
    fails(*args, "--adapter", shipped["dir"], "--no-adapter", contains=["--adapter and --no-adapter"])


def test_a_broken_flashback_json_is_one_line_naming_it(shipped, tmp_path):
    bad = tmp_path / "adapters/bad"
    bad.mkdir(parents=True)
    (bad / "flashback.json").write_text("{not json")
    fails("ralm", "--model", MODEL, "--index", shipped["index"], "--prompt", PROMPT, "-n", 4,
          env={"FLASHBACK_ADAPTERS": str(tmp_path / "adapters")}, contains=["flashback.json", "not valid JSON"])
