"""Fine-tuning for the FlashBack layout: LoRA + the two marking-token rows,
everything else frozen; loss on the target tokens only (flashback.data).

    python -m flashback.finetune --model stories260K.bin --train-text train.txt \\
        --index build/data/index --out runs/append --steps 200

API: `finetune(model, train_examples, eval_examples, TrainConfig(...), out_dir)`.

AdamW, linear warmup then cosine decay, gradient accumulation, a progress bar,
periodic evaluation, checkpoints written atomically (adapter + optimizer +
scheduler + RNG state) and exact resume. Under torch.distributed (gloo or
nccl) the model is wrapped in DistributedDataParallel and each rank takes its
share of every global batch: N processes reproduce 1 process with the same
global batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from .data import DataConfig, Example, build_examples, collate, collate_positions
from .io import atomic_directory, write_text_atomic
from .loss import IGNORE_INDEX
from .modeling import LlamaForCausalLM, LoraConfig


@dataclass
class TrainConfig:
    steps: int = 200             # optimizer steps
    batch_size: int = 8          # examples per optimizer step, over all ranks and accumulation
    grad_accum: int = 1          # micro-batches per step (per rank)
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0    # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0   # 0: no clipping
    eval_every: int = 50         # steps; 0: only at the end
    save_every: int = 0          # steps; 0: only at the end
    seed: int = 0
    progress: bool = True

    def validate(self, world: int) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if self.batch_size % (world * self.grad_accum):
            raise ValueError(f"batch_size {self.batch_size} must be divisible by world size {world} x grad_accum "
                             f"{self.grad_accum}")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


def lr_lambda(cfg: TrainConfig):
    """Linear warmup to 1, then cosine to min_lr_ratio at the last step."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch_order(n: int, step: int, batch: int, seed: int) -> List[int]:
    """The example indices of global step `step`: epochs of seeded permutations."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    perm = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(perm)
    if n < batch:
        perm = (perm * (batch // n + 1))[:batch]
        return perm
    return perm[k * batch:(k + 1) * batch]


@torch.no_grad()
def evaluate_loss(model: LlamaForCausalLM, examples: Sequence[Example], batch_size: int = 8) -> float:
    """Mean target-token loss over `examples` (eval mode, no dropout)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        ids, labels = collate(chunk)
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        total += float(model(ids, position_ids=collate_positions(chunk), labels=labels, loss="target").loss) * n
        count += n
    model.train(was)
    return total / max(1, count)


def finetune(model: LlamaForCausalLM, train_examples: Sequence[Example], eval_examples: Sequence[Example],
             cfg: TrainConfig, out_dir: Optional[os.PathLike] = None, *, lora: Optional[LoraConfig] = None,
             resume: bool = True, on_step: Optional[Callable[[Dict], None]] = None) -> Dict:
    """Trains the adapter of `model` (added with `lora` if the model has none)
    on `train_examples`. Writes out_dir/checkpoint (atomically, every save_every
    steps and at the end), out_dir/adapter (the final PEFT adapter) and
    out_dir/history.json. With resume and an existing checkpoint, training
    continues from it exactly. on_step(record) is called after every step
    (after its checkpoint). Returns the history."""
    rank, world = _rank_world()
    cfg.validate(world)
    if not train_examples:
        raise ValueError("the training set is empty")
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint" if out is not None else None
    state = None
    torch.manual_seed(cfg.seed)  # the same LoRA init on every rank and run
    if resume and ckpt is not None and (ckpt / "trainer_state.pt").exists():
        state = torch.load(ckpt / "trainer_state.pt")
        if state["config"]["batch_size"] != cfg.batch_size or state["config"]["seed"] != cfg.seed:
            raise ValueError(f"{ckpt}: the checkpoint was made with another batch size or seed")
        if model.has_adapter:
            raise ValueError("resuming loads the checkpoint's adapter: pass a model without one")
        model.load_adapter(ckpt / "adapter", trainable=True)
    elif not model.has_adapter:
        model.add_adapter(lora or LoraConfig())
    model.mark_only_adapter_trainable()

    torch.manual_seed(cfg.seed + 1 + rank)  # dropout masks differ between ranks
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    history: List[Dict] = []
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = state["history"]
        step = state["step"]
        torch.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    micro = cfg.batch_size // (world * cfg.grad_accum)

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        rngs = [torch.get_rng_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rank != 0:
            return

        with atomic_directory(ckpt, marker="trainer_state.pt", kind="a fine-tuning checkpoint") as tmp:
            model.save_adapter(tmp / "adapter")
            torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "history": history, "rng": rngs, "config": asdict(cfg)}, tmp / "trainer_state.pt")

    bar = None
    if cfg.progress and rank == 0:
        try:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=step, desc="finetune", unit="step", dynamic_ncols=True)
        except ImportError:
            bar = None
    t0 = time.time()
    while step < cfg.steps:
        order = _batch_order(len(train_examples), step, cfg.batch_size, cfg.seed)
        mine = order[rank * (cfg.batch_size // world):(rank + 1) * (cfg.batch_size // world)]
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for a in range(cfg.grad_accum):
            chunk = [train_examples[i] for i in mine[a * micro:(a + 1) * micro]]
            ids, labels = collate(chunk)
            sync = a == cfg.grad_accum - 1 or world == 1
            ctx = net.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                loss = net(ids, position_ids=collate_positions(chunk), labels=labels, loss="target").loss / cfg.grad_accum
                loss.backward()
            step_loss += float(loss)
        if world > 1:
            # NCCL reduces device tensors only; gloo host ones.
            t = torch.tensor([step_loss], device=model.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            step_loss = float(t) / world
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        rec = {"step": step, "loss": step_loss, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            if eval_examples:
                rec["eval_loss"] = evaluate_loss(model, eval_examples)
        history.append(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in rec.items() if k in ("loss", "eval_loss")})
        elif cfg.progress and rank == 0 and (step % 10 == 0 or step == cfg.steps):
            print(f"step {step}/{cfg.steps} loss {step_loss:.4f}" +
                  (f" eval {rec['eval_loss']:.4f}" if "eval_loss" in rec else ""), file=sys.stderr, flush=True)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
            save_checkpoint()
        if on_step is not None:
            on_step(rec)
    if bar is not None:
        bar.close()
    if out is not None and rank == 0:
        model.save_adapter(out / "adapter")
        write_text_atomic(out / "history.json", json.dumps(history, indent=1) + "\n")
    return {"history": history}


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    """The flags take their defaults from the dataclasses (and those from the C++ options): one source."""
    lora, data, train = LoraConfig(), DataConfig(), TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m flashback.finetune", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="HF directory, llama2.c .bin or GGUF")
    ap.add_argument("--tokenizer", default="", help="tokenizer.model / .bin (default: found with the model)")
    ap.add_argument("--train-text", required=True, help="training text (one file, read as one stream)")
    ap.add_argument("--eval-text", default="", help="held-out text for periodic evaluation")
    ap.add_argument("--index", required=True, help="retrieval index directory (flashback index)")
    ap.add_argument("--forbidden-titles", default="", help="titles never to retrieve (one per line)")
    ap.add_argument("--out", required=True, help="output directory (adapter/, checkpoint/, history.json)")
    ap.add_argument("--layout", choices=["append", "prepend", "none"], default=data.layout)
    ap.add_argument("--no-marks", action="store_true", help="no marking tokens around the document")
    ap.add_argument("--r", type=int, default=lora.r)
    ap.add_argument("--alpha", type=float, default=lora.lora_alpha)
    ap.add_argument("--dropout", type=float, default=lora.lora_dropout)
    ap.add_argument("--targets", default=",".join(lora.target_modules),
                    help="comma list of modules, or all-linear (every linear layer but lm_head)")
    ap.add_argument("--steps", type=int, default=train.steps)
    ap.add_argument("--batch-size", type=int, default=train.batch_size)
    ap.add_argument("--grad-accum", type=int, default=train.grad_accum)
    ap.add_argument("--lr", type=float, default=train.lr)
    ap.add_argument("--weight-decay", type=float, default=train.weight_decay)
    ap.add_argument("--warmup", type=int, default=train.warmup_steps)
    ap.add_argument("--eval-every", type=int, default=train.eval_every)
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--save-every", type=int, default=train.save_every)
    ap.add_argument("--max-examples", type=int, default=0, help="cap on training examples (0: all)")
    ap.add_argument("--seed", type=int, default=train.seed)
    ap.add_argument("--max-length", type=int, default=data.max_length)
    ap.add_argument("--stride", type=int, default=data.stride)
    ap.add_argument("--target-tokens", type=int, default=data.target_tokens)
    ap.add_argument("--query-tokens", type=int, default=data.query_tokens)
    ap.add_argument("--doc-tokens", type=int, default=data.doc_tokens)
    ap.add_argument("--doc-positions", choices=["before", "after"], default=data.doc_positions,
                    help="where RoPE puts an appended document (as ralm --doc-positions)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from . import _C, ralm
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if args.threads:
        _C.set_num_threads(args.threads)
    marks = not args.no_marks
    model = LlamaForCausalLM.from_pretrained(args.model, marks="add" if marks else "none", tokenizer=args.tokenizer or None)
    retriever = ralm.open_index(args.index, forbidden_titles=args.forbidden_titles or None)
    dc = DataConfig(layout=args.layout, marks=marks, stride=args.stride, target_tokens=args.target_tokens,
                    query_tokens=args.query_tokens, doc_tokens=args.doc_tokens, max_length=args.max_length,
                    doc_positions=args.doc_positions, seed=args.seed)
    tok = model.tokenizer

    def examples(path: str, limit: Optional[int]) -> List[Example]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise SystemExit(f"{path}: {e.strerror}")
        stream = tok.encode(text, False, False)
        try:
            return build_examples(stream, tok, retriever, dc, mark_left=model.mark_left if marks else None,
                                  limit=limit)
        except ValueError as e:
            raise SystemExit(f"{path}: {e}")

    train = examples(args.train_text, args.max_examples or None)
    evals = examples(args.eval_text, args.eval_examples) if args.eval_text else []
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_steps=args.warmup, eval_every=args.eval_every,
                      save_every=args.save_every, seed=args.seed, progress=not args.quiet)
    targets = [t for t in args.targets.split(",") if t]
    # one name stays a string: LoraConfig reads PEFT's spellings ("all-linear")
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=targets[0] if len(targets) == 1 else tuple(targets))
    print(f"finetune: {len(train)} training examples, {len(evals)} eval examples, layout {args.layout}, "
          f"marks {'on' if marks else 'off'}", file=sys.stderr)
    result = finetune(model, train, evals, cfg, args.out, lora=lora, resume=not args.no_resume)
    last = result["history"][-1]
    print(json.dumps({"out": str(args.out), "steps": last["step"], "loss": last["loss"],
                      "eval_loss": last.get("eval_loss")}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line for users, not a traceback
        from ._C import FlashbackError
        if isinstance(e, (FlashbackError, ValueError)):
            sys.exit(f"flashback.finetune: {e}")
        raise
