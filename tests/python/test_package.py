"""The installed Python package: the nn.Module over the C++ model, LoRA and the
mark rows under autograd and torch.optim, PEFT adapters, contexts, errors.
Runs in the venv the README's test command makes (flashback pip-installed)."""

import json
import subprocess
import sys

import pytest
import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig
from flashback.data import IGNORE_INDEX

from fbtest import SHARED

STORIES = SHARED / "models/stories260K/stories260K.bin"
FIXTURES = SHARED / "models/hf-fixtures"


def tiny(seed=0, vocab=61, tied=False):
    return LlamaForCausalLM.from_config({
        "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 70, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied}, seed=seed)


def perturb(model, scale=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.adapter_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("order", ["import flashback, torch", "import torch, flashback",
                                   "import sentencepiece, flashback", "import flashback, sentencepiece, torch"])
def test_import_in_any_order(order):
    if "sentencepiece" in order:
        pytest.importorskip("sentencepiece", reason="python3-sentencepiece is not in this venv")
    code = f"{order}; m = flashback.LlamaForCausalLM.from_pretrained({str(STORIES)!r}); print(m.vocab_size)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "512"


def test_built_for_this_torch():
    from flashback import _build_info
    assert _build_info.TORCH_VERSION == torch.__version__


def test_another_torch_fails_at_import_with_one_line():
    # As if the environment's torch had changed since flashback was built: the check runs before the
    # extension (built for the real one) is loaded.
    code = "import torch; torch.__version__ = '9.8.7+other'; import flashback"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: flashback was built against torch " + torch.__version__), last
    assert "this environment has torch 9.8.7+other" in last and "reinstall flashback" in last


def test_forward_takes_hf_arguments():
    m = tiny()
    x = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        want = m(x).logits
        out = m(input_ids=x, attention_mask=torch.ones_like(x), position_ids=torch.arange(9), past_key_values=None,
                labels=x, use_cache=False)
        assert torch.equal(out.logits, want) and out.loss.ndim == 0
        gapped = m(x, position_ids=torch.tensor([0, 1, 2, 3, 4, 10, 11, 12, 13])).logits  # RoPE is relative: a gap
        assert torch.allclose(gapped[:, :5], want[:, :5]) and not torch.allclose(gapped, want)
        loss, logits = m(x, labels=x, return_dict=False)
        assert torch.equal(logits, want) and torch.equal(loss, out.loss)
        with pytest.raises(ValueError, match="attention_mask must be all ones"):
            m(x, attention_mask=torch.ones_like(x).index_fill(1, torch.tensor([0]), 0))
        with pytest.raises(ValueError, match="past_key_values must be None"):
            m(x, past_key_values=[(want, want)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: benchmarks/gpu.sh tests the device")
def test_cuda_without_a_gpu_fails_with_one_line():
    m = tiny()
    with pytest.raises(flashback.InvalidArgument, match="CUDA is not available to this LibTorch") as e:
        m.to("cuda")
    assert "\n" not in str(e.value)
    assert m.device == torch.device("cpu")
    with pytest.raises(flashback.InvalidArgument, match="CUDA is not available"):
        LlamaForCausalLM.from_pretrained(STORIES, device="cuda")


def test_hub_cache_layouts(tmp_path, monkeypatch):
    src = tiny(seed=4)
    repo = tmp_path / "hub/models--org--tiny"
    src.save_pretrained(repo / "snapshots/aaa")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    x = torch.randint(0, 61, (1, 6))
    with torch.no_grad():
        want = src(x).logits
        for path in (repo, "org/tiny"):  # the only snapshot, without refs/main
            m = LlamaForCausalLM.from_pretrained(path, marks="none", tokenizer=None)
            assert torch.equal(m(x).logits, want)
    (repo / "snapshots/bbb").mkdir()
    with pytest.raises(flashback.FormatError, match="2 snapshots and no refs/main"):
        LlamaForCausalLM.from_pretrained("org/tiny", marks="none")
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("ccc")
    with pytest.raises(flashback.FormatError, match="refs/main names snapshot ccc"):
        LlamaForCausalLM.from_pretrained(repo, marks="none")
    with pytest.raises(flashback.FormatError, match="no such file or directory"):
        LlamaForCausalLM.from_pretrained("org/absent", marks="none")


def test_from_pretrained_takes_config_and_state_dict():
    src = tiny(seed=3)
    m = LlamaForCausalLM.from_pretrained(None, config=src.config.to_dict(), state_dict=src.state_dict())
    x = torch.randint(0, 61, (1, 7))
    with torch.no_grad():
        assert torch.equal(m(x).logits, src(x).logits)
    with pytest.raises(ValueError, match="needs both config= and state_dict="):
        LlamaForCausalLM.from_pretrained(None, config=src.config.to_dict())
    bad = dict(src.state_dict())
    bad["model.norm.weight"] = torch.ones(5)
    with pytest.raises(RuntimeError, match="size mismatch for model.norm.weight"):
        LlamaForCausalLM.from_pretrained(None, config=src.config.to_dict(), state_dict=bad)


def test_parameters_are_the_cpp_tensors():
    m = LlamaForCausalLM.from_pretrained(STORIES)
    names = [n for n, _ in m.named_parameters()]
    assert names[0] == "model.embed_tokens.weight" and "model.layers.4.mlp.down_proj.weight" in names
    for (n, p), (cn, ct) in zip(m.named_parameters(), m.core.named_parameters()):
        assert n == cn and p is ct and isinstance(p, torch.nn.Parameter)
        assert p.data_ptr() == ct.data_ptr()
    # A change made from Python is what the C++ forward computes with.
    x = torch.randint(0, 512, (1, 12))
    before = m(x).logits
    with torch.no_grad():
        m.get_parameter("model.norm.weight").mul_(2)
    assert (m(x).logits - before).abs().max() > 1e-3
    # state_dict has HF's names and loads back.
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    assert set(sd) == set(names)
    with torch.no_grad():
        m.get_parameter("model.norm.weight").zero_()
    m.load_state_dict(sd)
    assert torch.equal(m(x).logits, m(x).logits) and (m(x).logits - before).abs().max() > 1e-3


def test_every_checkpoint_format_loads_the_same_model(tmp_path):
    x = torch.randint(0, 512, (1, 16))
    ref = LlamaForCausalLM.from_pretrained(STORIES).eval()(x).logits
    gguf = LlamaForCausalLM.from_pretrained(SHARED / "models/stories260K/stories260K.gguf").eval()
    assert torch.equal(gguf(x).logits, ref)
    gguf.save_pretrained(tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(hf(x).logits, ref) and hf.tokenizer is not None
    sharded = LlamaForCausalLM.from_pretrained(FIXTURES / "tiny-llama-gqa-sharded")
    assert sharded.config.num_key_value_heads == 2 and sharded.tokenizer is None


def test_to_dtype_keeps_parameters_and_agrees():
    m = tiny()
    x = torch.randint(0, 61, (2, 9))
    ref = m(x).logits
    p0 = m.get_parameter("model.layers.0.self_attn.q_proj.weight")
    m.to(torch.bfloat16)
    assert m.dtype == torch.bfloat16 and p0.dtype == torch.bfloat16
    assert m.get_parameter("model.layers.0.self_attn.q_proj.weight") is p0
    assert (m(x).logits - ref).abs().max() < 0.1
    m.float()
    assert m.dtype == torch.float32
    # Module.to's other signatures, parsed without torch's private helpers
    assert m.to("cpu", torch.bfloat16).dtype == torch.bfloat16
    assert m.to(dtype=torch.float32, non_blocking=False).dtype == torch.float32
    assert m.to(torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert m.to(torch.device("cpu"), torch.float32, False).dtype == torch.float32 and m.device == torch.device("cpu")
    with pytest.raises(TypeError):
        m.to(torch.float64)
    with pytest.raises(TypeError):
        m.to(sideways=True)
    with pytest.raises(NotImplementedError):
        m.double()


def test_peft_fixture_from_python():
    ref = _load_reference(FIXTURES / "tiny-llama-gqa-marks-lora.reference.safetensors")
    for merge in (False, True):
        m = LlamaForCausalLM.from_pretrained(FIXTURES / "tiny-llama-gqa-marks",
                                             adapter=FIXTURES / "tiny-llama-gqa-marks-lora", merge_adapter=merge)
        m.eval()
        with torch.no_grad():
            diff = (m(ref["input_ids"]).logits - ref["logits"]).abs().max().item()
        assert diff < 1e-4, (merge, diff)
    cfg = flashback.read_adapter_config(FIXTURES / "tiny-llama-gqa-marks-lora")
    assert cfg.r == 8 and cfg.lora_alpha == 16 and list(cfg.trainable_token_indices) == [512, 513]


def _load_reference(path):
    # The reference file through the C++ reader, via a model-free route: the
    # adapter loader's safetensors reader is not exposed, so parse here.
    import struct
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": torch.float32, "I64": torch.int64}[v["dtype"]]
        out[k] = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=dt).reshape(v["shape"])
    return out


def test_fresh_adapter_is_noop_and_merge_agrees():
    m = tiny(vocab=61)
    m.eval()
    x = torch.randint(0, 61, (2, 15))
    base = m(x).logits.detach()
    m.add_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=flashback.modeling.LORA_TARGETS,
                             trainable_token_indices=[59, 60]))
    assert torch.equal(m(x).logits, base)
    perturb(m)
    unmerged = m(x).logits.detach()
    assert (unmerged - base).abs().max() > 1e-3
    m.merge_adapter()
    assert (m(x).logits - unmerged).abs().max() < 1e-5
    m.unmerge_adapter()
    assert (m(x).logits - unmerged).abs().max() < 1e-5
    with m.adapter_disabled():
        assert (m(x).logits - base).abs().max() < 1e-5


def test_lora_config_takes_peft_string_targets():
    # PEFT's spellings: "all-linear" = every linear layer but lm_head; one name as a string
    assert LoraConfig(target_modules="all-linear").target_modules == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert LoraConfig(target_modules="v_proj").target_modules == ("v_proj",)
    m = tiny(vocab=61)
    m.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", trainable_token_indices=[]))
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("mlp.down_proj.lora_A" in n for n in names) and any("self_attn.q_proj.lora_B" in n for n in names)


def test_gradients_reach_exactly_the_adapter():
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    assert m.marks == (512, 513)
    m.add_adapter(LoraConfig())  # paper defaults: r 16, alpha 32, dropout 0.05, q/k/v/o, the two marks
    m.train()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    expected = {f"model.layers.{l}.self_attn.{proj}.lora_{ab}.weight" for l in range(5)
                for proj in ("q_proj", "k_proj", "v_proj", "o_proj") for ab in "AB"}
    expected.add("model.embed_tokens.token_adapter.trainable_tokens_delta")
    assert trainable == expected
    ids = torch.tensor([[1] + list(range(20, 40)) + [512] + list(range(50, 70)) + [513] + list(range(80, 96))])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -16:] = ids[0, -16:]
    loss = m(ids, labels=labels, loss="target").loss
    loss.backward()
    for n, p in m.named_parameters():
        if n in expected:
            assert p.grad is not None, n
            if ".lora_A." not in n:  # A's gradient is zero while B is zero
                assert p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    # Both mark rows got a gradient: they are in the input.
    delta = m.get_parameter("model.embed_tokens.token_adapter.trainable_tokens_delta")
    assert (delta.grad.abs().sum(1) > 0).all()


def test_numerical_gradient_check():
    torch.manual_seed(0)
    m = tiny(vocab=61)
    m.add_adapter(LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=("q_proj", "v_proj", "down_proj"),
                             trainable_token_indices=[59, 60]))
    perturb(m, 0.3)
    m.eval()
    ids = torch.tensor([[1, 5, 59, 7, 9, 60, 11, 3, 4, 8]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 6:10] = ids[0, 6:10]
    m.mark_left = 59

    def f():
        return m(ids, labels=labels, loss="target").loss.double()

    loss = f()
    loss.backward()
    checked = 0
    for name, p in m.adapter_parameters():
        flat, grad = p.data.view(-1), p.grad.view(-1)
        for i in torch.topk(grad.abs(), 3).indices.tolist():  # the coordinates that matter most
            old = flat[i].item()
            eps = 1e-2 * max(1.0, abs(old))
            with torch.no_grad():
                flat[i] = old + eps
                up = f().item()
                flat[i] = old - eps
                down = f().item()
                flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert numeric == pytest.approx(grad[i].item(), rel=2e-2, abs=1e-4), (name, i)
            checked += 1
    assert checked == 3 * (2 * 3 * 2 + 1)


def test_adamw_leaves_frozen_rows_bit_identical():
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    frozen = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.add_adapter(LoraConfig(r=4, lora_alpha=8))
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    ids = torch.tensor([[1] + list(range(20, 60)) + [512] + list(range(100, 130)) + [513] + list(range(200, 216))])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -16:] = ids[0, -16:]
    delta0 = m.get_parameter("model.embed_tokens.token_adapter.trainable_tokens_delta").detach().clone()
    for _ in range(3):
        opt.zero_grad()
        m(ids, labels=labels, loss="target").loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # every embedding and head row, every base weight
    delta = m.get_parameter("model.embed_tokens.token_adapter.trainable_tokens_delta")
    assert not torch.equal(delta, delta0)
    # Merged, the mark rows land in the embedding; the other rows stay as they were.
    m.merge_adapter()
    emb = m.get_parameter("model.embed_tokens.weight")
    assert torch.equal(emb[:512], frozen["model.embed_tokens.weight"][:512])
    assert torch.equal(emb[512:], delta.detach())


def test_loss_excludes_marks_and_scores_targets_only():
    logits = torch.randn(2, 5, 10)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3], labels[1, 4] = 4, 7  # HF's convention: the tokens at 3 and 4, predicted by rows 2 and 3
    got = flashback.target_loss(logits, labels, mark_left=8)
    want = torch.nn.functional.cross_entropy(torch.stack([logits[0, 2, :8], logits[1, 3, :8]]), torch.tensor([4, 7]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    labels[0, 1] = 9
    with pytest.raises(ValueError, match="marking token"):
        flashback.target_loss(logits, labels, mark_left=8)


def test_loss_moves_labels_to_the_logits_device():
    """Labels made on the host score logits on another device, as HF's losses take them (a model on a GPU,
    collate() on the CPU). The meta device stands in for the GPU: torch 2.x refuses the mix unmoved."""
    logits = torch.randn(2, 5, 10, device="meta")
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3], labels[1, 4] = 4, 7
    assert flashback.causal_lm_loss(logits, labels).device.type == "meta"
    assert flashback.target_loss(logits, labels).device.type == "meta"


def test_labels_as_hf_takes_them():
    """model(input_ids, labels=...) shifts internally and ignores -100, as HF's LlamaForCausalLM; the output is
    a CausalLMOutput. Held to the formula of HF's ForCausalLMLoss written out here."""
    F = torch.nn.functional
    m = tiny(vocab=61).eval()
    ids = torch.randint(0, 59, (2, 12))
    out = m(ids, labels=ids)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 61), ids[:, 1:].reshape(-1))
    assert isinstance(out, flashback.CausalLMOutput)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert out[0] is out.loss and out["logits"] is out.logits and out.keys() == ["loss", "logits"]
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[1, 9] = IGNORE_INDEX
    logits = m(ids).logits
    assert m(ids).loss is None and m(ids)[0] is not None
    keep = labels[:, 1:] != IGNORE_INDEX
    want = F.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    assert m(ids, labels=labels).loss.item() == pytest.approx(want.item(), rel=1e-6)
    # FlashBack's loss by name: the marks (59, 60) out of the softmax, the head on the scored rows only.
    m.mark_left = 59
    target = m(ids, labels=labels, loss="target")
    assert target.logits is None
    want = F.cross_entropy(logits[:, :-1][keep][:, :59], labels[:, 1:][keep])
    assert target.loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert flashback.target_loss(logits, labels, 59).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="loss must be"):
        m(ids, labels=labels, loss="mse")


def test_context_layout_matches_training_layout(tmp_path):
    from flashback.data import DataConfig, build_examples

    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    doc = m.encode("The cat sat on the mat. It was a sunny day.", bos=False)

    class OneDoc(flashback.Retriever):  # a retriever written in Python, called by the C++ retrieval
        def retrieve(self, q, k):
            return [{"text": "The cat sat on the mat. It was a sunny day."}]

    stream = m.encode("Once upon a time there was a little girl named Lily. She loved to play outside in the park "
                      "with her friends and her dog. One day she found a shiny stone under a big tree.", bos=False)
    assert len(stream) >= 56
    for layout in ("append", "prepend"):
        cfg = DataConfig(layout=layout, max_length=1 + 40 + len(doc) + 2 + 16, min_context=40, query_tokens=8,
                         doc_tokens=len(doc))
        ex = build_examples(stream, m.tokenizer, OneDoc(), cfg, mark_left=m.mark_left)[0]
        assert ex.document == "The cat sat on the mat. It was a sunny day."
        ctx = flashback.Context(m, layout, stride=16, doc_tokens=len(doc))  # the same room before the input
        ctx.reset([1] + stream[:40])  # room for exactly 40 context tokens: the first 40
        ctx.place([doc])
        ctx.append(ex.input_ids[-16:], all_rows=True)
        assert ctx.layout() == ex.input_ids, layout
        # the positions the context runs at are the example's (append: the block below the input in position)
        assert ctx.positions() == (ex.position_ids or list(range(len(ex.input_ids)))), layout
        # append, doc positions before: the first target is predicted from the input's end, not the block's
        n = 15 if layout == "append" else 16
        assert ex.labels[-n:] == ex.input_ids[-n:] and set(ex.labels[:-n]) == {IGNORE_INDEX}


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(flashback.FormatError, match="nowhere"):
        LlamaForCausalLM.from_pretrained(tmp_path / "nowhere")
    # an adapter with marks on a vocabulary without them
    base = LlamaForCausalLM.from_pretrained(FIXTURES / "tiny-llama-gqa")
    with pytest.raises(flashback.FormatError, match="adapter_config.json: trainable token 512 is outside"):
        base.load_adapter(FIXTURES / "tiny-llama-gqa-marks-lora")
    # an adapter for another architecture
    other = tiny(vocab=600)
    with pytest.raises(flashback.FormatError, match="another architecture"):
        other.load_adapter(FIXTURES / "tiny-llama-gqa-marks-lora")
    # a rank that disagrees with the tensors
    m = tiny()
    m.add_adapter(LoraConfig(r=4, lora_alpha=8, trainable_token_indices=[]))
    m.save_adapter(tmp_path / "a")
    cfg = json.loads((tmp_path / "a/adapter_config.json").read_text())
    cfg["r"] = 8
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(flashback.FormatError, match="adapter_model.safetensors.*shape"):
        tiny().load_adapter(tmp_path / "a")
    # marks asked of a model without them; a token outside the vocabulary
    with pytest.raises(ValueError, match="marking tokens"):
        flashback.Context(tiny(), "append", marks=True)
    with pytest.raises(flashback.InvalidArgument, match="outside the vocabulary"):
        tiny()(torch.tensor([[70]]))
    with pytest.raises(flashback.InvalidArgument, match="rank"):
        tiny().add_adapter(LoraConfig(r=0))


def test_generate_and_evaluate_from_python(tmp_path):
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The little dog ran to the park and played with a red ball.\n\n"
                      "Tom and Sue baked a big cake for their mom.\n\n" * 3)
    n = flashback.build_bm25_index(corpus, tmp_path / "index", m.tokenizer, "paragraphs", 64)
    assert n == 6
    ret = flashback.open_index(tmp_path / "index")
    hits = ret.retrieve("a dog and a red ball", 1)
    assert "dog" in hits[0]["text"]
    ids, stats = flashback.generate(m, ret, "Once upon a time, a little dog", 24, mode="append")
    assert len(ids) == 24 and stats["retrievals"] >= 1
    ids2, _ = flashback.generate(m, ret, "Once upon a time, a little dog", 24, mode="append", kv_reuse=False)
    assert ids == ids2
    # The loop, stepped by hand: a token held before a retrieval is in the text, and place() encodes it.
    ctx = flashback.Context(m, "append", stride=4, doc_tokens=8)
    ctx.reset(m.encode("Once upon a time"))
    ctx.place([[30, 31, 32]])
    ctx.append([40])
    ctx.hold([41])
    assert ctx.text()[-2:] == [40, 41] and 41 not in ctx.layout()
    with pytest.raises(flashback.InvalidArgument, match="hold"):
        ctx.append([42])
    ctx.place([[33]])
    assert ctx.layout()[-5:-3] == [40, 41]  # the recent tokens joined the input, before the new block
    text = "Tom had a dog. The dog liked to run in the park with a ball. Tom and the dog were friends."
    a = flashback.evaluate(m, ret, text, mode="append")
    b = flashback.evaluate(m, ret, text, mode="append", kv_reuse=False)
    assert a["tokens"] == b["tokens"] > 0 and abs(a["nll"] - b["nll"]) < 1e-5  # mean NLL, as the CLI's
    assert a["nll_sum"] == pytest.approx(a["nll"] * a["tokens"], rel=1e-12)
    with pytest.raises(TypeError, match="unknown RALM option 'strde'"):
        flashback.evaluate(m, ret, text, strde=8)


def test_generate_batch_gives_each_prompt_its_generate(tmp_path):
    """Batched streams from Python: each prompt's ids and retrievals are generate()'s for it (greedy), and with
    sampling prompt i draws with seed + i."""
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The little dog ran to the park and played with a red ball.\n\n"
                      "Tom and Sue baked a big cake for their mom.\n\n"
                      "The cat slept in the sun by the window all day.\n\n")
    flashback.build_bm25_index(corpus, tmp_path / "index", m.tokenizer, "paragraphs", 64)
    ret = flashback.open_index(tmp_path / "index")
    prompts = ["Once upon a time, a little dog", "Tom and Sue", m.encode("The cat slept")]
    for mode in ("append", "prepend", "none"):
        got = flashback.generate_batch(m, ret, prompts, 20, mode=mode, stride=4)
        assert len(got) == 3
        for p, (ids, stats) in zip(prompts, got):
            want_ids, want_stats = flashback.generate(m, ret, p, 20, mode=mode, stride=4)
            assert ids == want_ids, (mode, p)
            assert [r["titles"] for r in stats["retrieved"]] == [r["titles"] for r in want_stats["retrieved"]]
            assert stats["retrievals"] == want_stats["retrievals"]
            assert stats["batch"]["max_sequences"] == 3
        assert (got[0][1]["retrievals"] > 0) == (mode != "none")
    sampled = flashback.generate_batch(m, ret, [prompts[0]] * 2, 16, temperature=1.0, seed=7)
    for i, (ids, _) in enumerate(sampled):
        assert ids == flashback.generate(m, ret, prompts[0], 16, temperature=1.0, seed=7 + i)[0]
    assert sampled[0][0] != sampled[1][0]
    assert flashback.generate_batch(m, ret, [], 8) == []
    with pytest.raises(flashback.InvalidArgument, match="outside the vocabulary"):
        flashback.generate_batch(m, None, [[1, 2], [1, 100000]], 4)


def test_kernels_switch_gives_the_same_decode():
    """Cached decode with the hand-written kernels and with LibTorch's ops: the same logits (fp32 rounding)."""
    m = LlamaForCausalLM.from_pretrained(STORIES).eval()
    other = LlamaForCausalLM.from_pretrained(STORIES).eval()
    other.kernels = "libtorch"  # per model: `m` keeps its kernels
    assert m.kernels == "auto" and other.kernels == "libtorch"
    ids = torch.tensor([[1, 403, 407, 261, 378, 300, 42, 7]])
    outs = []
    for model in (m, other):
        cache = model.core.make_cache(1, 16)
        with torch.inference_mode():
            first = model.core.forward_cached(ids[:, :5], cache)
            steps = [model.core.forward_cached(ids[:, t:t + 1], cache) for t in range(5, 8)]
        outs.append(torch.cat([first] + steps, 1))
    assert (outs[0] - outs[1]).abs().max().item() < 1e-4
    with pytest.raises(flashback.InvalidArgument, match="unknown kernels"):
        m.kernels = "fastest"
    full = m(ids)
    full = full.logits if hasattr(full, "logits") else full
    assert (outs[0] - full).abs().max().item() < 1e-4


def test_one_options_vocabulary_with_the_cli():
    """RalmOptions' fields are the CLI's flags, with the same help text and defaults: one vocabulary."""
    from fbtest import find_cli
    o = flashback.RalmOptions()
    assert (o.stride, o.query_tokens, o.doc_tokens, o.k, o.marks, o.kv_reuse, o.max_length, o.window_keep,
            o.doc_positions, o.kv_dtype) == (16, 32, 128, 1, True, True, 0, 0.5, "before", "")
    assert flashback.RalmOptions.fields == ["stride", "query_tokens", "doc_tokens", "k", "marks", "kv_reuse",
                                            "max_length", "window_keep", "doc_positions", "kv_dtype"]
    for command in ("ralm", "eval"):
        text = " ".join(subprocess.run([str(find_cli()), command, "--help"], capture_output=True,
                                       text=True).stdout.split())
        for name in flashback.RalmOptions.fields:
            flag = "-k" if name == "k" else "--" + name.replace("_", "-")
            assert flag in text, (command, flag)
            doc = " ".join(getattr(flashback.RalmOptions, name).__doc__.split())
            assert doc[:40] in text, (command, name, doc)
        assert "--no-marks" in text and "--no-kv-reuse" in text


def test_contexts_size_their_cache_like_the_cli():
    """max_length defaults to 512 (the paper's) or the model's maximum when smaller; the cache holds exactly that."""
    def model(max_pos):
        return LlamaForCausalLM.from_config({
            "vocab_size": 61, "hidden_size": 32, "intermediate_size": 70, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": max_pos,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0})
    big = flashback.Context(model(4096), "append", marks=False)
    assert big.options.max_length == 512 and big.raw.cache_capacity() == 512
    small = flashback.Context(model(64), "prepend", marks=False)
    assert small.options.max_length == 64 and small.raw.cache_capacity() == 64
    none = flashback.Context(model(4096), "none", max_length=100)  # marks asked for, but mode none has none
    assert none.raw.cache_capacity() == 100 and none.options.marks is False and none.mode == "none"
    with pytest.raises(flashback.InvalidArgument, match="exceeds"):
        flashback.Context(model(64), "none", max_length=100)
    # appended documents before the input in position need their room below the model's maximum
    with pytest.raises(flashback.InvalidArgument, match="positions before the input .* maximum position"):
        flashback.Context(model(64), "append", marks=False)
    assert flashback.Context(model(64), "append", marks=False, doc_positions="after").options.max_length == 64


def test_kv_dtype_keeps_the_cache_in_bf16(tmp_path):
    """kv_dtype="bf16" on an fp32 model: the contexts' and make_cache's caches are bf16 (half the bytes), and KV
    reuse and recomputing agree to bf16's rounding of the keys and values, as the fp32 cache's scores do."""
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    assert flashback.Context(m, "append").cache_dtype == "float32"
    assert flashback.Context(m, "append", kv_dtype="bf16").cache_dtype == "bfloat16"
    wide, narrow = m.core.make_cache(1, 64), m.core.make_cache(1, 64, "bf16")
    assert (wide.dtype, narrow.dtype) == ("float32", "bfloat16")
    assert wide.bytes_allocated() == 2 * narrow.bytes_allocated()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The little dog ran to the park and played with a red ball.\n\n"
                      "Tom and Sue baked a big cake for their mom.\n\n")
    flashback.build_bm25_index(corpus, tmp_path / "index", m.tokenizer, "paragraphs", 64)
    ret = flashback.open_index(tmp_path / "index")
    text = "Tom had a dog. The dog liked to run in the park with a ball. Tom and the dog were friends."
    a = flashback.evaluate(m, ret, text, mode="append", stride=4, kv_dtype="bf16")
    b = flashback.evaluate(m, ret, text, mode="append", stride=4, kv_dtype="bf16", kv_reuse=False)
    c = flashback.evaluate(m, ret, text, mode="append", stride=4)
    # A key computed in another chunk differs in its last fp32 bits and may round to the other bf16 neighbour:
    # reuse and recomputing then differ by about bf16's rounding (2^-8 relative on a few values), not 1e-5.
    assert abs(a["nll"] - b["nll"]) < 1e-3 * c["nll"]
    assert a["nll"] != c["nll"] and abs(a["nll"] - c["nll"]) < 1e-2 * c["nll"]
    with pytest.raises(flashback.InvalidArgument, match="kv_dtype: unknown dtype 'int8'"):
        flashback.Context(m, "append", kv_dtype="int8")
    with pytest.raises(flashback.InvalidArgument, match="kv_dtype: unknown dtype"):
        m.core.make_cache(1, 8, "q8")


def test_atomic_directory_from_python(tmp_path):
    from flashback.io import atomic_directory, write_text_atomic
    target = tmp_path / "ckpt"
    with atomic_directory(target, "state.txt", "a checkpoint") as t:
        (t / "state.txt").write_text("1")
        (t / "sub").mkdir()
        (t / "sub/x").write_text("x")
    assert (target / "state.txt").read_text() == "1" and (target / "sub/x").read_text() == "x"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(target, "state.txt", "a checkpoint") as t:
            (t / "state.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "state.txt").read_text() == "1"  # the old one, whole
    with atomic_directory(target, "state.txt", "a checkpoint") as t:
        (t / "state.txt").write_text("3")
    assert (target / "state.txt").read_text() == "3" and not (target / "sub").exists()
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious").write_text("x")
    with pytest.raises(flashback.FlashbackError, match="not a checkpoint .no state.txt.; refusing"):
        with atomic_directory(home, "state.txt", "a checkpoint"):
            pass
    assert (home / "precious").read_text() == "x"
    write_text_atomic(tmp_path / "h.json", "[1]\n")
    assert (tmp_path / "h.json").read_text() == "[1]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "h.json", "home"]  # no staging left behind


def test_type_stub_matches_the_extension():
    """py.typed promises types: _C.pyi (scripts/make_stub.py) must list what the extension defines."""
    import ast
    from pathlib import Path

    stub = ast.parse((Path(flashback.__file__).parent / "_C.pyi").read_text())
    top = {n.name: n for n in stub.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    constants = {n.target.id for n in stub.body if isinstance(n, ast.AnnAssign) and n.target.id != "__all__"}
    assert set(top) | constants == {n for n in dir(flashback._C) if not n.startswith("_")}
    assert (Path(flashback.__file__).parent / "py.typed").exists()
    for name, node in top.items():
        if not isinstance(node, ast.ClassDef):
            continue
        declared = {n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
        declared |= {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
        defined = {k for k in vars(getattr(flashback._C, name)) if not k.startswith("_")}
        assert declared == defined, name


def test_from_pretrained_returns_eval_mode_as_hf_does(tmp_path):
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    assert not m.training and not m.core.training
    m.add_adapter()
    with torch.no_grad():
        for _, p in m.adapter_parameters():
            p.normal_(0, 0.05)
    m.save_adapter(tmp_path / "a")
    back = LlamaForCausalLM.from_pretrained(STORIES, marks="add", adapter=tmp_path / "a")
    assert not back.training
    x = torch.tensor([[1, 403, 407, 512, 300, 513, 500]])
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, m.eval()(x).logits, rtol=0, atol=0)  # no dropout in either
        back.train()
        assert back.training and not torch.equal(back(x).logits, m(x).logits)  # LoRA dropout once trained
