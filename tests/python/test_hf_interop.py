"""Models and adapters moving between flashback and the real HF transformers + PEFT, both ways, in one
process: the torch 2.x venv scripts/build_torch2.sh installs flashback into (ctest: python_hf_interop).

Models: random LlamaConfigs (MHA, GQA, MQA; tied and untied; rope_theta 10000 and 500000) saved by HF load
in flashback with HF's logits, and flashback's save_pretrained loads in HF with flashback's (1e-4, fp32).
Adapters: a PEFT LoRA with trainable_token_indices for the two marks, trained a few steps in HF, loads in
flashback (merged and not) with PEFT's logits; one trained in flashback loads with
PeftModel.from_pretrained and gives flashback's. The marks flashback adds equal HF's
resize_token_embeddings with the rows set to the mean. SmolLM2 through both: test_smollm2_parity.py."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF transformers is not installed in this venv "
                                   "(scripts/install_references.sh puts it in .venv-ref)")
peft = pytest.importorskip("peft", reason="PEFT is not installed in this venv (scripts/install_references.sh)")

import flashback  # noqa: E402
from fbtest import SHARED  # noqa: E402

TOL = 1e-4
VOCAB = 512  # stories260K's tokenizer: the marks need one
TOKENIZER = SHARED / "models/stories260K/tok512.model"
SHAPES = {
    "mha-untied-theta1e4": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                                rope_theta=10000.0),
    "gqa-tied-theta5e5": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                              rope_theta=500000.0),
    "mqa-untied-theta5e5": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                                rope_theta=500000.0),
}


def hf_config(shape, vocab=VOCAB, **extra):
    kw = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              max_position_embeddings=256, rms_norm_eps=1e-5, **SHAPES[shape])
    theta = kw.pop("rope_theta")
    cfg = transformers.LlamaConfig(**kw, **extra)
    # transformers 5 keeps theta in rope_parameters, 4.x at the top level
    if isinstance(getattr(cfg, "rope_parameters", None), dict):
        cfg.rope_parameters["rope_theta"] = theta
    cfg.rope_theta = theta
    return cfg


def hf_model(shape, seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(hf_config(shape, vocab)).to(torch.float32).eval()
    with torch.no_grad():  # HF initialises the norms to ones: make them count
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape))
    return m


def ids(seed=1, batch=2, length=24, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def hf_logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def fb_logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


def max_diff(a, b):
    return float((a - b).abs().max())


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_hf_save_pretrained_loads_in_flashback(shape, tmp_path):
    hf = hf_model(shape)
    hf.save_pretrained(tmp_path / "hf")
    fb = flashback.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype="float32", marks="none")
    assert fb.config.to_dict()["num_key_value_heads"] == hf.config.num_key_value_heads
    x = ids()
    assert max_diff(fb_logits(fb, x), hf_logits(hf, x)) < TOL


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_flashback_save_pretrained_loads_in_hf(shape, tmp_path):
    hf_model(shape, seed=3).save_pretrained(tmp_path / "hf")
    fb = flashback.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype="float32", marks="none")
    fb.save_pretrained(tmp_path / "fb")
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "fb", dtype=torch.float32).eval()
    assert back.config.tie_word_embeddings == SHAPES[shape]["tie_word_embeddings"]
    x = ids(seed=4)
    assert max_diff(hf_logits(back, x), fb_logits(fb, x)) < TOL


def test_llama3_rope_scaling_is_refused_with_one_line(tmp_path):
    cfg = hf_config("gqa-tied-theta5e5", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 64})
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    with pytest.raises(flashback.FormatError, match="rope scaling type 'llama3' is not supported") as e:
        flashback.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype="float32", marks="none")
    assert "config.json" in str(e.value) and "\n" not in str(e.value)


def test_state_dict_of_an_hf_model_loads(tmp_path):
    hf = hf_model("gqa-tied-theta5e5", seed=5)
    fb = flashback.LlamaForCausalLM.from_pretrained(None, config=hf.config.to_dict(), state_dict=hf.state_dict())
    x = ids(seed=6)
    assert max_diff(fb_logits(fb, x), hf_logits(hf, x)) < TOL


def test_forward_takes_what_hf_users_pass(tmp_path):
    hf = hf_model("mqa-untied-theta5e5", seed=7)
    hf.save_pretrained(tmp_path / "hf")
    fb = flashback.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype="float32", marks="none")
    x = ids(seed=8)
    kw = dict(input_ids=x, attention_mask=torch.ones_like(x), labels=x, past_key_values=None, use_cache=False)
    with torch.no_grad():
        ours, theirs = fb(**kw), hf(**kw)
    assert max_diff(ours.logits, theirs.logits.float()) < TOL
    assert abs(float(ours.loss) - float(theirs.loss)) < 1e-5
    with pytest.raises(ValueError, match="attention_mask"):
        fb(input_ids=x, attention_mask=torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] * 0 + 1], 1))
    with pytest.raises(ValueError, match="past_key_values"):
        fb(input_ids=x, past_key_values=((torch.zeros(1),),))


# ---------------------------------------------------------------- marks and adapters
def grown_hf(shape, seed):
    """HF's model grown by two tokens as FlashBack's marks: resize_token_embeddings, rows set to the mean."""
    hf = hf_model(shape, seed=seed)
    hf.resize_token_embeddings(VOCAB + 2)
    with torch.no_grad():
        for emb in {id(e): e for e in (hf.get_input_embeddings(), hf.get_output_embeddings())}.values():
            emb.weight[VOCAB:] = emb.weight[:VOCAB].mean(0)
    return hf


@pytest.mark.parametrize("shape", ["mha-untied-theta1e4", "gqa-tied-theta5e5"])
def test_marks_added_by_flashback_equal_hf_resize(shape, tmp_path):
    hf_model(shape, seed=9).save_pretrained(tmp_path / "hf")
    fb = flashback.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype="float32", marks="add",
                                                    tokenizer=TOKENIZER, default_adapter=False)
    assert fb.marks == (VOCAB, VOCAB + 1)
    hf = grown_hf(shape, seed=9)
    x = ids(seed=10, vocab=VOCAB + 2)
    x[:, 5], x[:, 12] = VOCAB, VOCAB + 1
    assert max_diff(fb_logits(fb, x), hf_logits(hf, x)) < TOL


def peft_config(r=8):
    return peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                           trainable_token_indices=[VOCAB, VOCAB + 1])


@pytest.mark.parametrize("merge", [False, True])
def test_peft_adapter_trained_in_hf_loads_in_flashback(merge, tmp_path):
    base = grown_hf("gqa-tied-theta5e5", seed=11)
    base.save_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, peft_config())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(5):
        x = ids(seed=100 + step, vocab=VOCAB + 2)
        x[:, 3], x[:, 9] = VOCAB, VOCAB + 1
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    x = ids(seed=12, vocab=VOCAB + 2)
    x[:, 4], x[:, 15] = VOCAB, VOCAB + 1
    want = hf_logits(model, x)
    assert max_diff(want, hf_logits(grown_hf("gqa-tied-theta5e5", seed=11), x)) > 1e-2  # it trained
    fb = flashback.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype="float32", marks="none")
    fb.load_adapter(tmp_path / "adapter", merge=merge)
    assert max_diff(fb_logits(fb, x), want) < TOL


def test_flashback_adapter_loads_with_peft(tmp_path):
    hf_model("mha-untied-theta1e4", seed=13).save_pretrained(tmp_path / "hf")
    fb = flashback.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype="float32", marks="add",
                                                    tokenizer=TOKENIZER, default_adapter=False)
    fb.add_adapter(flashback.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in fb.parameters() if p.requires_grad], lr=1e-2)
    fb.train()
    for step in range(5):
        x = ids(seed=200 + step, vocab=VOCAB + 2)
        x[:, 2], x[:, 7] = VOCAB, VOCAB + 1
        fb(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    fb.eval()
    fb.save_adapter(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] == [VOCAB, VOCAB + 1]
    base = grown_hf("mha-untied-theta1e4", seed=13)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = ids(seed=14, vocab=VOCAB + 2)
    x[:, 6], x[:, 20] = VOCAB, VOCAB + 1
    want = fb_logits(fb, x)
    assert max_diff(want, hf_logits(grown_hf("mha-untied-theta1e4", seed=13), x)) > 1e-2  # it trained
    assert max_diff(hf_logits(model, x), want) < TOL


# ---------------------------------------------------------------- the local hub cache
def test_hub_cache_folder_and_repo_id_load_as_hf_loads_them(tmp_path, monkeypatch):
    hf = hf_model("gqa-tied-theta5e5", seed=15)
    repo = tmp_path / "hub/models--flashback-test--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    hf.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub reads HF_HUB_CACHE once, at import: HF is given the folder
    theirs = transformers.LlamaForCausalLM.from_pretrained("flashback-test/tiny-llama", local_files_only=True,
                                                           cache_dir=tmp_path / "hub", dtype=torch.float32).eval()
    x = ids(seed=16)
    want = hf_logits(theirs, x)
    for path in (repo, "flashback-test/tiny-llama"):
        fb = flashback.LlamaForCausalLM.from_pretrained(path, dtype="float32", marks="none")
        assert max_diff(fb_logits(fb, x), want) < TOL, path
