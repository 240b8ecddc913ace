"""FlashBack on a real model: SmolLM2-135M (Q4_1 GGUF, byte-level BPE, no BOS by default, tied head).
The marking tokens grow 49,152 to 49,154 and the tied head reads the new rows; the cache-reusing
contexts equal their recomputed reference (greedy ids identical, NLL within 1e-5, fp32) for append
and prepend, with the paper's re-encoding counts; LoRA + the mark rows train, save as a PEFT adapter
and reload (Python and the CLI) to the same outputs."""

import json
import math
from pathlib import Path

import pytest
import torch

import flashback
from flashback import LlamaForCausalLM
from flashback.data import DataConfig, build_examples, wikitext_articles
from flashback.finetune import TrainConfig, finetune

from fbtest import REPO, SHARED, SMOL, run

WIKI = SHARED / "data/wikitext-103"

pytestmark = pytest.mark.skipif(not SMOL.exists(), reason=f"SmolLM2 is not at {SMOL}: scripts/setup.sh fetches it")


@pytest.fixture(scope="module")
def model():
    # the base model: the shipped adapter is tested on its own below
    return LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="add", default_adapter=False)


@pytest.fixture(scope="module")
def index(tmp_path_factory, model):
    """BM25 over the first articles of WikiText-103 valid, in titled passages of <= 128 tokens."""
    root = tmp_path_factory.mktemp("smol")
    raw = (WIKI / "wiki.valid.raw").read_text(encoding="utf-8")
    (root / "corpus.txt").write_text(raw[:300_000], encoding="utf-8")
    n = flashback.build_bm25_index(root / "corpus.txt", root / "index", model.tokenizer, "wikitext", 128)
    assert n > 200
    return root / "index"


@pytest.fixture(scope="module")
def text(model):
    raw = (WIKI / "wiki.test.raw").read_text(encoding="utf-8")[:20_000]
    ids = model.encode(raw)
    assert ids[0] != model.tokenizer.bos_id  # SmolLM2 adds no BOS: the text's first token anchors the window
    return ids


def test_marks_grow_the_vocabulary_and_the_tied_head_reads_them(model):
    assert model.vocab_size == 49154 and model.marks == (49152, 49153)
    assert model.tokenizer.vocab_size == 49154
    assert model.tokenizer.id_to_piece(49152) == "<MARK_L>" and model.tokenizer.id_to_piece(49153) == "<MARK_R>"
    assert model.config.tie_word_embeddings
    emb = model.get_parameter("model.embed_tokens.weight")
    assert emb.shape == (49154, 576)
    # mean-initialised rows (FlashBack's initialisation of new tokens)
    torch.testing.assert_close(emb[49152], emb[:49152].mean(0), rtol=0, atol=1e-6)
    ids = torch.tensor([model.encode("The tower is 324 metres tall.")])
    with torch.no_grad():
        h = model.hidden_states(ids)
        logits = model(ids).logits
    assert logits.shape[-1] == 49154
    # the tied head is the embedding matrix, the new rows included
    torch.testing.assert_close(logits[0, :, 49152:], h[0] @ emb[49152:].T, rtol=1e-5, atol=1e-4)
    # the marks are never produced by the tokenizer from text
    assert 49152 not in model.encode("<MARK_L> x <MARK_R>")


@pytest.mark.parametrize("mode", ["append", "prepend"])
def test_kv_reuse_is_exact_on_smollm2(model, index, text, mode):
    ret = flashback.open_index(index)
    ids = text[:120]
    fast = flashback.evaluate(model, ret, ids, mode=mode)
    slow = flashback.evaluate(model, ret, ids, mode=mode, kv_reuse=False)
    assert fast["tokens"] == slow["tokens"] == 119
    assert abs(fast["nll"] - slow["nll"]) <= 1e-5, (fast["nll"], slow["nll"])
    # a retrieval before every block of 16 (the first query, one token, may find nothing)
    assert len(fast["stats"]["reencoded_per_place"]) == math.ceil(119 / 16)
    assert fast["stats"]["retrievals"] >= math.ceil(119 / 16) - 1
    prompt, stride = 40, 16
    g_fast, s_fast = flashback.generate(model, ret, ids[:prompt], 3 * stride, mode=mode, stop_at_eos=False)
    g_slow, _ = flashback.generate(model, ret, ids[:prompt], 3 * stride, mode=mode, stop_at_eos=False, kv_reuse=False)
    assert list(g_fast) == list(g_slow)
    per_place = s_fast["reencoded_per_place"]
    assert len(per_place) == 3
    for i, n in enumerate(per_place[1:], start=1):
        # the paper's counts, with a block of <MARK_L> doc (1..128 tokens) <MARK_R>: append re-encodes the
        # last s tokens and the block, whatever the input's length; prepend the block and the whole input
        block = n - stride if mode == "append" else n - (prompt + i * stride)
        assert 3 <= block <= 130, (mode, per_place)


def test_lora_and_mark_rows_train_and_reload_as_a_peft_adapter(model, index, text, tmp_path):
    m = LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="add", default_adapter=False)
    ret = flashback.open_index(index)
    cfg = DataConfig(max_length=256)
    ex = build_examples(text, m.tokenizer, ret, cfg, mark_left=m.mark_left, limit=3)
    assert len(ex) == 3 and all(m.tokenizer.bos_id not in e.input_ids for e in ex)  # no BOS: SmolLM2 adds none
    assert all(m.mark_left in e.input_ids and m.mark_left + 1 in e.input_ids for e in ex)
    hist = finetune(m, ex[:2], ex[2:], TrainConfig(steps=5, batch_size=2, lr=5e-3, warmup_steps=0, eval_every=0,
                                                   progress=False), tmp_path / "run")["history"]
    assert hist[-1]["loss"] < 0.9 * hist[0]["loss"], [h["loss"] for h in hist]  # it learns the two examples
    adapter = tmp_path / "run/adapter"
    cfgj = json.loads((adapter / "adapter_config.json").read_text())
    assert cfgj["r"] == 16 and cfgj["lora_alpha"] == 32 and cfgj["trainable_token_indices"] == [49152, 49153]
    m.eval()
    x = torch.tensor([ex[2].input_ids])
    with torch.no_grad():
        want = m(x).logits
    back = LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="add", adapter=adapter)
    with torch.no_grad():
        got = back(x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # the CLI reads the same adapter: FlashBack with the mark rows it trained
    out = run("eval", "-m", SMOL, "--adapter", adapter, "--index", index, "--mode", "append", "--dtype", "fp32",
              "--text", SHARED / "data/wikitext-103/wiki.test.raw", "--max-tokens", 64, "--json", timeout=600)
    r = json.loads(out.stdout)
    assert r["tokens"] == 64 and r["marks"] and math.isfinite(r["ppl"])


def test_one_step_of_the_papers_recipe_touches_only_lora_and_the_mark_rows(index, text):
    """LoRA r=16 alpha=32 dropout 0.05 on q/k/v/o + the two mark rows, one AdamW step: every base weight
    stays bit-identical, every LoRA matrix and both mark rows move, no other embedding row does."""
    m = LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="add", default_adapter=False)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    emb0 = m.get_parameter("model.embed_tokens.weight").detach().clone()
    ret = flashback.open_index(index)
    ex = build_examples(text, m.tokenizer, ret, DataConfig(max_length=256), mark_left=m.mark_left, limit=2)
    finetune(m, ex, [], TrainConfig(steps=1, batch_size=2, lr=1e-3, warmup_steps=0, eval_every=0, progress=False))
    cfg = m.adapter_config
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.05)
    assert sorted(cfg.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert list(cfg.trainable_token_indices) == [49152, 49153]
    trained = dict(m.named_parameters())
    for n, p in before.items():
        assert torch.equal(trained[n], p), f"{n} changed"  # bit-identical
    lora = {n: p for n, p in trained.items() if n not in before}
    assert len([n for n in lora if ".lora_B." in n]) == 4 * 30
    assert all(bool((p != 0).any()) for n, p in lora.items() if ".lora_B." in n)  # B moved off zero
    assert all(p.requires_grad for p in lora.values())
    m.merge_adapter()
    emb = m.get_parameter("model.embed_tokens.weight").detach()
    changed = (emb != emb0).any(dim=1).nonzero().flatten().tolist()
    assert changed == [49152, 49153], changed


def test_the_cli_lists_the_retrieved_titles(index):
    corpus_titles = {t for t, _ in wikitext_articles(WIKI / "wiki.valid.raw")}
    prompt = ("The Tower of London is a historic castle on the north bank of the River Thames in central London. "
              "It was founded towards the end of 1066 as part of the Norman Conquest of England.")
    out = run("ralm", "-m", SMOL, "--index", index, "--prompt", prompt, "-n", 32, "--mode", "append", "--json",
              "--no-adapter", timeout=600)
    r = json.loads(out.stdout)
    assert len(r["retrievals"]) == r["stats"]["retrievals"] == 2
    first, second = r["retrievals"]
    assert first["position"] == len(r["prompt_ids"]) and second["position"] == first["position"] + 16
    for rec in r["retrievals"]:
        assert len(rec["titles"]) == len(rec["scores"]) == 1 and rec["titles"][0] in corpus_titles
        assert rec["query"] and rec["scores"][0] > 0
    text = run("ralm", "-m", SMOL, "--index", index, "--prompt", prompt, "-n", 32, "--mode", "append", "--verbose",
               "--no-adapter", timeout=600)
    lines = [ln for ln in text.stderr.splitlines() if "retrieval @" in ln]
    assert len(lines) == 2 and f'"{first["titles"][0]}"' in lines[0]



SHIPPED = REPO / "adapters/SmolLM2-135M-Instruct"


def test_the_shipped_adapter_is_found_and_lowers_the_append_marks_nll(index, model):
    """The adapter flashback ships for SmolLM2 (scripts/results.py --ship) loads by default with the marks and
    lowers the append+marks NLL on held-out text it never saw (the start of the first WikiText-103 test article,
    in the results' held-out split)."""
    assert (SHIPPED / "adapter_model.safetensors").exists(), "the shipped adapter is missing"
    shipped = LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="add")
    found = Path(shipped.adapter_path)  # the source tree's, or the copy an install put under <prefix>/share
    assert found.name == SHIPPED.name, found
    assert (found / "adapter_model.safetensors").read_bytes() == (SHIPPED / "adapter_model.safetensors").read_bytes()
    ret = flashback.open_index(index)
    held = model.encode(wikitext_articles(WIKI / "wiki.test.raw")[0][1])[:400]
    base = flashback.evaluate(model, ret, held, mode="append")
    tuned = flashback.evaluate(shipped, ret, held, mode="append")
    assert tuned["nll"] < base["nll"] - 0.1, (tuned["nll"], base["nll"])
    out = run("eval", "-m", SMOL, "--index", index, "--mode", "append", "--dtype", "fp32", "--text",
              WIKI / "wiki.test.raw", "--max-tokens", 64, "--json", timeout=600)
    assert "adapter: " in out.stderr and f"{SHIPPED.name} (shipped for this model" in out.stderr, out.stderr
