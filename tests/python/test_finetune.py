"""Fine-tuning: the paper's examples from real retrieval, training that moves
only the adapter, exact resume, 2-process DDP == 1 process, and adapters that
reload in a fresh process (Python and the C++ CLI) with the same outputs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig
from flashback.data import IGNORE_INDEX, DataConfig, build_examples
from flashback.finetune import TrainConfig, finetune

from fbtest import REPO, SHARED

STORIES = SHARED / "models/stories260K/stories260K.bin"
TEXT = SHARED / "data/tinystories/tinystories_val_prefix.txt"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small disjoint split of TinyStories: corpus (indexed), train and held-out text."""
    root = tmp_path_factory.mktemp("ft")
    paras = [p for p in TEXT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    (root / "corpus.txt").write_text("\n\n".join(paras[:300]) + "\n")
    (root / "train.txt").write_text("\n\n".join(paras[300:330]) + "\n")
    (root / "heldout.txt").write_text("\n\n".join(paras[-8:]) + "\n")
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    flashback.build_bm25_index(root / "corpus.txt", root / "index", m.tokenizer, "paragraphs", 128)
    return root


def examples(root, model, name="train.txt", limit=None, **kw):
    ret = flashback.open_index(root / "index")
    stream = model.tokenizer.encode((root / name).read_text(), False, False)
    cfg = DataConfig(max_length=256, **kw)
    return build_examples(stream, model.tokenizer, ret, cfg, mark_left=model.mark_left if cfg.marks else None,
                          limit=limit)


def test_examples_follow_the_paper(data):
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    ex = examples(data, m)
    assert len(ex) > 20
    lengths = set()
    for e in ex:
        assert len(e.input_ids) <= 256 and e.input_ids[0] == 1
        # HF's labels: the target tokens themselves; with the block below the input in position (the default)
        # the first target is predicted from the input's end, with no document in view: not a target here
        scored = [i for i, l in enumerate(e.labels) if l != IGNORE_INDEX]
        assert scored == list(range(len(e.input_ids) - 15, len(e.input_ids)))
        assert [e.labels[i] for i in scored] == e.input_ids[-15:]
        ml = e.input_ids.index(512)
        mr = e.input_ids.index(513)
        assert 0 < mr - ml - 1 <= 128 and mr == len(e.input_ids) - 17  # append: the block right before the target
        # positions, written out: the input from 130 (128 + 2 marks), the block just below, the targets after the input
        n_block = mr - ml + 1
        assert e.position_ids == ([130 + i for i in range(ml)] + list(range(130 - n_block, 130)) +
                                  [130 + ml + i for i in range(16)])
        assert e.document
        lengths.add(ml)
    assert len(lengths) > 5  # random context lengths
    pre = examples(data, m, layout="prepend")
    assert all(e.input_ids[1] == 512 and e.position_ids is None for e in pre)
    paper = examples(data, m, doc_positions="after")  # the paper's layout: slot = position, 16 targets
    assert all(e.position_ids is None and e.labels[-16:] == e.input_ids[-16:] for e in paper)
    nomarks = examples(data, m, marks=False)
    assert all(512 not in e.input_ids and 513 not in e.input_ids for e in nomarks)
    # the no-retrieval control: no document and no marks, though marks are asked for (the C++ rule)
    none = examples(data, m, layout="none")
    assert all(e.document == "" and 512 not in e.input_ids for e in none) and len(none) == len(ex)
    with pytest.raises(ValueError, match="leaves no room"):
        examples(data, m, doc_tokens=250)
    # an empty training set: a clear error, not a crash
    with pytest.raises(ValueError, match="no training examples"):
        build_examples(m.tokenizer.encode("Too short.", False, False), m.tokenizer, None, DataConfig(),
                       mark_left=512)
    with pytest.raises(ValueError, match="training set is empty"):
        finetune(m, [], [], TrainConfig(steps=1, progress=False))


def _params(model):
    return {n: p.detach().clone() for n, p in model.adapter_parameters()}


def test_training_lowers_loss_and_touches_only_the_adapter(data, tmp_path):
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    base = {n: p.detach().clone() for n, p in m.named_parameters()}
    train = examples(data, m)
    evals = examples(data, m, "heldout.txt", limit=16)
    cfg = TrainConfig(steps=12, batch_size=4, lr=3e-3, weight_decay=0.1, warmup_steps=2, eval_every=6, progress=False)
    hist = finetune(m, train, evals, cfg, tmp_path / "run", lora=LoraConfig(r=8, lora_alpha=16))["history"]
    assert [h["step"] for h in hist] == list(range(1, 13))
    assert "eval_loss" in hist[5] and "eval_loss" in hist[11]
    assert hist[-1]["eval_loss"] < hist[5]["eval_loss"] or hist[-1]["eval_loss"] < evals_loss_before(data)
    for n, p in m.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert (tmp_path / "run/adapter/adapter_config.json").exists()
    assert (tmp_path / "run/checkpoint/trainer_state.pt").exists()
    assert json.loads((tmp_path / "run/history.json").read_text())[-1]["step"] == 12
    assert not list(tmp_path.glob("run/*.tmp*")) and not list(tmp_path.glob("run/*.old*"))


def evals_loss_before(root):
    from flashback.finetune import evaluate_loss
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    m.add_adapter(LoraConfig(r=8, lora_alpha=16))
    return evaluate_loss(m, examples(root, m, "heldout.txt", limit=16))


def test_resume_continues_exactly(data, tmp_path):
    cfg = dict(batch_size=4, lr=3e-3, warmup_steps=2, eval_every=0, progress=False)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1)
    a = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    train = examples(data, a)
    finetune(a, train, [], TrainConfig(steps=8, **cfg), tmp_path / "straight", lora=lora)
    b = LlamaForCausalLM.from_pretrained(STORIES, marks="add")

    class Interrupt(Exception):
        pass

    def stop_at_5(rec):
        if rec["step"] == 5:
            raise Interrupt  # killed after step 5; the last checkpoint is step 4's

    with pytest.raises(Interrupt):
        finetune(b, train, [], TrainConfig(steps=8, save_every=4, **cfg), tmp_path / "resumed", lora=lora,
                 on_step=stop_at_5)
    assert torch.load(tmp_path / "resumed/checkpoint/trainer_state.pt")["step"] == 4
    # a fresh model resumes from the checkpoint to 8
    c = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    hist = finetune(c, train, [], TrainConfig(steps=8, **cfg), tmp_path / "resumed", lora=lora)["history"]
    assert [h["step"] for h in hist] == list(range(1, 9))
    pa, pc = _params(a), _params(c)
    assert pa.keys() == pc.keys()
    for n in pa:
        assert torch.allclose(pa[n], pc[n], atol=1e-6, rtol=0), n


def test_gradient_accumulation_matches_one_big_batch(data, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0)
    runs = []
    for accum in (1, 2):
        m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
        finetune(m, examples(data, m), [], TrainConfig(steps=3, batch_size=4, grad_accum=accum, lr=3e-3,
                 warmup_steps=1, eval_every=0, progress=False), None, lora=lora)
        runs.append(_params(m))
    for n in runs[0]:
        assert torch.allclose(runs[0][n], runs[1][n], atol=1e-5, rtol=1e-4), n


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
import flashback
from flashback import LlamaForCausalLM, LoraConfig
from flashback.finetune import TrainConfig, finetune
sys.path.insert(0, {tests!r})
from test_finetune import examples
from pathlib import Path
dist.init_process_group("gloo")
m = LlamaForCausalLM.from_pretrained({model!r}, marks="add")
train = examples(Path({root!r}), m)
finetune(m, train, [], TrainConfig(steps=5, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=0, progress=False),
         {out!r}, lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
dist.destroy_process_group()
"""


def test_ddp_two_processes_match_one(data, tmp_path):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               FLASHBACK_THREADS="1", OMP_NUM_THREADS="1")
    script = DDP_SCRIPT.format(tests=str(Path(__file__).parent), model=str(STORIES), root=str(data),
                               out=str(tmp_path / "ddp"))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    one = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    train = examples(data, one)
    finetune(one, train, [], TrainConfig(steps=5, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=0, progress=False),
             tmp_path / "one", lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    two = LlamaForCausalLM.from_pretrained(STORIES, marks="add", adapter=tmp_path / "ddp/adapter")
    p1 = _params(one)
    p2 = {n: p.detach() for n, p in two.named_parameters() if n in p1}
    assert p1.keys() == p2.keys()
    moved = 0
    for n in p1:
        assert torch.allclose(p1[n], p2[n], atol=1e-5, rtol=1e-4), (n, (p1[n] - p2[n]).abs().max())
        moved += int(".lora_B." in n and p1[n].abs().max() > 0)
    assert moved > 0  # training did something


def test_round_trip_fresh_process_python_and_cli(data, tmp_path):
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    train = examples(data, m)
    finetune(m, train, [], TrainConfig(steps=6, batch_size=4, lr=5e-3, warmup_steps=1, eval_every=0, progress=False),
             tmp_path / "run", lora=LoraConfig(r=8, lora_alpha=16))
    m.eval()
    x = torch.tensor([[1] + list(range(30, 70)) + [512] + list(range(100, 160)) + [513] + list(range(200, 216))])
    # Both sides under no_grad: the trained model's adapter still requires grad, and a forward that autograd
    # records takes LibTorch's attention instead of the inference kernel (~1e-5 apart in the logits).
    with torch.no_grad():
        want = m(x).logits
    torch.save(x, tmp_path / "x.pt")
    code = (f"import torch, flashback; x = torch.load({str(tmp_path / 'x.pt')!r});"
            f"m = flashback.LlamaForCausalLM.from_pretrained({str(STORIES)!r}, marks='add', "
            f"adapter={str(tmp_path / 'run/adapter')!r}, merge_adapter=MERGE).eval();"
            f"torch.set_grad_enabled(False);"
            f"torch.save(m(x).logits, {str(tmp_path / 'y.pt')!r})")
    for merge in (False, True):
        out = subprocess.run([sys.executable, "-c", code.replace("MERGE", str(merge))], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        got = torch.load(tmp_path / "y.pt")
        diff = (got - want).abs().max().item()
        if not merge:
            assert diff < 1e-5, diff  # the same adapter, the same computation
        else:
            # merging re-rounds W + (alpha/r) B A in fp32: ~1 ulp of the logits' scale
            assert diff < 1e-5 * max(1.0, want.abs().max().item()), diff

    # The C++ CLI with --adapter scores text exactly as the in-memory Python model does.
    text = (data / "heldout.txt").read_text()[:600]
    (tmp_path / "eval.txt").write_text(text)
    py = flashback.evaluate(m, flashback.open_index(data / "index"), m.encode(text), mode="append")
    cli = Path(sys.executable).parent / "flashback"
    for extra in ([], ["--adapter-unmerged"]):
        proc = subprocess.run([str(cli), "eval", "--model", str(STORIES), "--index", str(data / "index"),
                               "--text", str(tmp_path / "eval.txt"), "--mode", "append", "--adapter",
                               str(tmp_path / "run/adapter"), "--json", *extra], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["tokens"] == py["tokens"]
        assert abs(res["nll"] - py["nll"]) < 1e-6, (res["nll"], py["nll"])  # both the mean NLL per token
    # and without the adapter the CLI disagrees (the adapter mattered)
    proc = subprocess.run([str(cli), "eval", "--model", str(STORIES), "--index", str(data / "index"), "--text",
                           str(tmp_path / "eval.txt"), "--mode", "append", "--json"], capture_output=True, text=True)
    assert abs(json.loads(proc.stdout)["nll"] - py["nll"]) > 1e-3


def test_finetune_command_line(data, tmp_path):
    out = subprocess.run([sys.executable, "-m", "flashback.finetune", "--model", str(STORIES), "--train-text",
                          str(data / "train.txt"), "--eval-text", str(data / "heldout.txt"), "--index",
                          str(data / "index"), "--out", str(tmp_path / "cli"), "--steps", "3", "--batch-size", "2",
                          "--max-length", "256", "--eval-examples", "4", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["steps"] == 3 and res["eval_loss"] > 0
    assert flashback.read_adapter_config(tmp_path / "cli/adapter").r == 16
    (tmp_path / "empty.txt").write_text("")
    bad = subprocess.run([sys.executable, "-m", "flashback.finetune", "--model", str(STORIES), "--train-text",
                          str(tmp_path / "empty.txt"), "--index", str(data / "index"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "empty.txt: no training examples" in bad.stderr


def test_cli_adapter_errors_are_one_line(data):
    from fbtest import fails
    idx = data / "index"
    fails("eval", "--model", STORIES, "--index", idx, "--text", data / "heldout.txt", "--mode", "append",
          "--adapter", SHARED / "models/hf-fixtures/tiny-llama-gqa-marks-lora",
          contains=("adapter_model.safetensors", "another architecture"))
    fails("eval", "--model", STORIES, "--index", idx, "--text", data / "heldout.txt", "--mode", "append",
          "--adapter", data / "no-such-adapter", contains=("no-such-adapter",))
    # an adapter whose token rows need the marks, on a model loaded without them
    fails("eval", "--model", SHARED / "models/hf-fixtures/tiny-llama-gqa", "--mode", "none", "--text",
          data / "heldout.txt", "--tokenizer", SHARED / "models/stories260K/tok512.model",
          "--adapter", SHARED / "models/hf-fixtures/tiny-llama-gqa-marks-lora",
          contains=("adapter_config.json", "outside the model's vocabulary"))
