#!/usr/bin/env python3
"""The Python workflow on a device, against the same steps on the CPU (benchmarks/gpu.sh runs it on a lent
GPU; `--device cpu` runs the same checks CPU against CPU, so the harness is known to hold).

A small random Llama with the two marks, FlashBack's layout of examples (input, <MARK_L> doc <MARK_R>,
the labelled target tokens), then:
  * logits of model.to(device) equal the CPU's (fp32, 1e-4);
  * FlashBack's loss (loss="target") and the adapter's gradients equal the CPU's;
  * flashback.finetune with labels made on the host (collate()) on the device: the same loss history and
    adapter as on the CPU (LoRA dropout off: nothing random differs between the two);
  * a longer fine-tune on the device lowers the loss.
Prints one JSON line with every figure; exits 1 naming what differed.

    python benchmarks/gpu_python.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig
from flashback.data import IGNORE_INDEX, Example
from flashback.finetune import TrainConfig, finetune

VOCAB = 203  # the last two are the marks


def model(seed: int = 0) -> LlamaForCausalLM:
    m = LlamaForCausalLM.from_config({
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}, seed=seed)
    m.mark_left = VOCAB - 2
    return m


def examples(n: int, seed: int, stride: int = 16, doc: int = 24, context: int = 40) -> list:
    """FlashBack's layout: context, <MARK_L> doc <MARK_R>, then `stride` target tokens, the only labels (the
    same run of ids in every example, so a fine-tune has something to learn)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ctx = torch.randint(1, VOCAB - 2, (context,), generator=g).tolist()
        d = torch.randint(1, VOCAB - 2, (doc,), generator=g).tolist()
        tgt = [10 + 7 * i for i in range(stride)]
        ids = ctx + [VOCAB - 2] + d + [VOCAB - 1] + tgt
        labels = [IGNORE_INDEX] * (len(ids) - stride) + tgt
        out.append(Example(input_ids=ids, labels=labels))
    return out


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / (1.0 + b.abs().max()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=60, help="the longer fine-tune on the device")
    args = ap.parse_args()
    dev = torch.device(args.device)
    res: dict = {"check": "gpu_python", "device": str(dev), "torch": torch.__version__, "flashback": flashback.__version__}
    bad = []
    t0 = time.perf_counter()

    # Logits, loss and gradients of one batch.
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0)
    cpu, there = model(), model().to(dev)
    for m in (cpu, there):
        torch.manual_seed(3)
        m.add_adapter(lora)
        m.mark_only_adapter_trainable()
    with torch.no_grad():  # a non-zero B on both, so every gradient is non-trivial
        g = torch.Generator().manual_seed(4)
        for (n, p), (_, q) in zip(cpu.adapter_parameters(), there.adapter_parameters()):
            step = torch.randn(p.shape, generator=g) * 0.1
            p.add_(step)
            q.add_(step.to(q.device))
    batch = examples(4, seed=1)
    ids, labels = flashback.data.collate(batch)  # on the host, as finetune makes them
    assert str(there.device).startswith(dev.type), there.device
    res["logits_rel"] = max_rel(there(ids.to(dev)).logits, cpu(ids).logits)
    if res["logits_rel"] > 1e-4:
        bad.append(f"logits differ from the CPU's by {res['logits_rel']:.2e}")
    losses = []
    for m in (cpu, there):
        m.train()
        out = m(ids, labels=labels, loss="target")
        out.loss.backward()
        losses.append(out.loss)
    res["loss_rel"] = max_rel(losses[1], losses[0])
    grads = [max_rel(q.grad, p.grad) for (_, p), (_, q) in zip(cpu.adapter_parameters(), there.adapter_parameters())]
    res["grad_rel_max"] = max(grads)
    if res["loss_rel"] > 1e-5 or res["grad_rel_max"] > 1e-4:
        bad.append(f"loss / gradients differ from the CPU's by {res['loss_rel']:.2e} / {res['grad_rel_max']:.2e}")

    # finetune() on each: the same history and adapter.
    train = examples(32, seed=2)
    cfg = TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=0, progress=False)
    runs = []
    for d in (torch.device("cpu"), dev):
        m = model().to(d)
        hist = finetune(m, train, [], cfg, lora=lora)["history"]
        runs.append((m, [h["loss"] for h in hist]))
    res["finetune_loss_cpu"], res["finetune_loss_device"] = runs[0][1], runs[1][1]
    res["finetune_loss_rel"] = max(abs(a - b) / (1.0 + abs(b)) for a, b in zip(runs[1][1], runs[0][1]))
    res["finetune_adapter_rel"] = max(max_rel(q, p) for (_, p), (_, q) in
                                      zip(runs[0][0].adapter_parameters(), runs[1][0].adapter_parameters()))
    if res["finetune_loss_rel"] > 1e-4 or res["finetune_adapter_rel"] > 1e-3:
        bad.append(f"finetune on {dev} differs from the CPU's: losses {res['finetune_loss_rel']:.2e}, "
                   f"adapter {res['finetune_adapter_rel']:.2e}")

    # A longer run on the device learns the rule.
    m = model().to(dev)
    cfg = TrainConfig(steps=args.steps, batch_size=8, lr=2e-2, warmup_steps=2, eval_every=0, progress=False)
    hist = finetune(m, examples(256, seed=5), [], cfg, lora=LoraConfig(r=8, lora_alpha=16))["history"]
    first, last = sum(h["loss"] for h in hist[:4]) / 4, sum(h["loss"] for h in hist[-4:]) / 4
    res["long_run_loss_first4"], res["long_run_loss_last4"] = first, last
    if not last < 0.9 * first:
        bad.append(f"{args.steps} steps on {dev} did not lower the loss enough ({first:.3f} -> {last:.3f})")
    res["seconds"] = time.perf_counter() - t0
    res["ok"] = not bad
    print(json.dumps(res))
    if bad:
        print("gpu_python: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
