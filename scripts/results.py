#!/usr/bin/env python3
"""The paper's result table in miniature: stories260K on TinyStories.

Splits ../shared's TinyStories text into three disjoint parts (retrieval
corpus, fine-tuning text, held-out evaluation text), indexes the corpus with
BM25, scores the held-out text (token-level perplexity, stride 16, query 32,
top-1 document cut to 128 tokens, max length 512) for none / prepend /
append / append+marks without fine-tuning, fine-tunes append+marks+LoRA and
prepend+LoRA for the same number of steps, scores those, and writes
docs/results.md with the table and docs/results_training.png with the curves.

usage: .venv/bin/python scripts/results.py [--steps 300] [--out build/results]
(run scripts/install_python.sh first)"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig
from flashback.data import DataConfig, build_examples
from flashback.finetune import TrainConfig, finetune

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=os.environ.get("FLASHBACK_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--out", default=str(ROOT / "build/results"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--heldout-paragraphs", type=int, default=200)
    ap.add_argument("--train-paragraphs", type=int, default=800)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    args = ap.parse_args()
    if args.threads:
        flashback.set_num_threads(args.threads)
    shared, out, docs = Path(args.shared), Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    model_path = shared / "models/stories260K/stories260K.bin"

    # ---- data: corpus | train | held-out, whole paragraphs, disjoint
    paras = [p for p in (shared / "data/tinystories/tinystories_val_prefix.txt").read_text(encoding="utf-8")
             .split("\n\n") if p.strip()]
    h, t = args.heldout_paragraphs, args.train_paragraphs
    corpus, train_text, heldout = paras[:-(h + t)], paras[-(h + t):-h], paras[-h:]
    (out / "corpus.txt").write_text("\n\n".join(corpus) + "\n", encoding="utf-8")
    base = LlamaForCausalLM.from_pretrained(model_path, marks="add").eval()
    tok = base.tokenizer
    t0 = time.time()
    n_passages = flashback.build_bm25_index(out / "corpus.txt", out / "index", tok, "paragraphs", 128)
    print(f"results: {len(corpus)} corpus paragraphs ({n_passages} passages, indexed in {time.time() - t0:.1f} s), "
          f"{len(train_text)} training, {len(heldout)} held-out", file=sys.stderr)
    retriever = flashback.open_index(out / "index")
    eval_ids = tok.encode("\n\n".join(heldout) + "\n", True, False)

    rows = []

    def score(name: str, model, mode: str, marks: bool, steps: int = 0) -> None:
        t = time.time()
        r = flashback.evaluate(model, retriever, eval_ids, mode=mode, marks=marks, max_length=512)
        s = r["stats"]
        rows.append({"setting": name, "mode": mode, "marks": marks, "fine_tune_steps": steps, "ppl": r["ppl"],
                     "tokens": r["tokens"], "tokens_reencoded": s["tokens_reencoded"],
                     "model_seconds": s["reencode_seconds"] + s["decode_seconds"], "wall_seconds": time.time() - t})
        print(f"results: {name:28s} ppl {r['ppl']:.4f} ({r['tokens']} tokens, {time.time() - t:.0f} s)",
              file=sys.stderr)

    # ---- without fine-tuning
    score("none (no retrieval)", base, "none", False)
    score("prepend", base, "prepend", False)
    score("append", base, "append", False)
    score("append + marks", base, "append", True)

    # ---- fine-tuning, the same steps for both layouts
    train_stream = tok.encode("\n\n".join(train_text), False, False)
    eval_stream = tok.encode("\n\n".join(heldout), False, False)
    histories = {}
    # (the control, none + LoRA, trains on the same targets and contexts without documents:
    # what fine-tuning on this text gives by itself)
    for name, layout, marks in (("append + marks + LoRA", "append", True), ("prepend + LoRA", "prepend", False),
                                ("none + LoRA (control)", "none", False)):
        torch.manual_seed(0)
        model = LlamaForCausalLM.from_pretrained(model_path, marks="add")
        dc = DataConfig(layout=layout, marks=marks, seed=0)
        train = build_examples(train_stream, tok, retriever, dc, mark_left=model.mark_left)
        evals = build_examples(eval_stream, tok, retriever, dc, mark_left=model.mark_left, limit=64)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                          trainable_token_indices=list(model.marks) if marks else [])
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.steps // 20,
                          eval_every=max(1, args.steps // 10), seed=0)
        print(f"results: fine-tuning {name}: {len(train)} examples, {args.steps} steps of {args.batch_size}",
              file=sys.stderr)
        res = finetune(model, train, evals, cfg, out / layout, lora=lora, resume=False)
        histories[name] = res["history"]
        model.merge_adapter()
        model.eval()
        score(name, model, layout, marks, args.steps)

    (out / "results.json").write_text(json.dumps({"rows": rows, "histories": histories}, indent=1))
    plot(histories, docs / "results_training.png")
    write_markdown(rows, histories, args, len(corpus), n_passages, len(train_text), len(heldout),
                   docs / "results.md")
    print(f"results: wrote {docs / 'results.md'} and {docs / 'results_training.png'}", file=sys.stderr)
    return 0


def plot(histories, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, hist), color in zip(histories.items(), ("tab:blue", "tab:orange", "tab:gray")):
        steps = [h["step"] for h in hist]
        loss = [h["loss"] for h in hist]
        k = 10  # running mean of the training loss
        smooth = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
        ax.plot(steps, smooth, color=color, alpha=0.8, label=f"{name}: train (mean of 10 steps)")
        ev = [h for h in hist if "eval_loss" in h]
        ax.plot([h["step"] for h in ev], [h["eval_loss"] for h in ev], "o--", color=color,
                label=f"{name}: held-out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("target-token cross-entropy (nats)")
    ax.set_title("stories260K fine-tuning on TinyStories (16 target tokens per example)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def write_markdown(rows, histories, args, n_corpus, n_passages, n_train, n_heldout, path: Path) -> None:
    base_none = rows[0]["ppl"]
    lines = [
        "# Results: the paper's table in miniature",
        "",
        "stories260K (a real pretrained Llama-2-architecture model, 260K parameters, GQA) on TinyStories from",
        "`../shared`. Three disjoint parts of `tinystories_val_prefix.txt`, whole paragraphs: a retrieval corpus "
        f"({n_corpus} paragraphs, {n_passages} BM25 passages of at most 128 tokens),",
        f"fine-tuning text ({n_train} paragraphs) and held-out evaluation text (the last {n_heldout} paragraphs,",
        f"{rows[0]['tokens']} scored tokens). Protocol as the paper: a retrieval every 16 tokens, the query is the",
        "last 32 tokens, the top-1 document cut to 128 tokens, max length 512, token-level perplexity over",
        "every token after BOS, marking tokens excluded from the softmax.",
        "",
        "Produced by one command (after `scripts/install_python.sh`):",
        "",
        "```",
        f".venv/bin/python scripts/results.py --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr}",
        "```",
        "",
        "| setting | fine-tuning steps | perplexity | vs. no retrieval | tokens re-encoded | model seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['fine_tune_steps']} | {r['ppl']:.3f} | {r['ppl'] / base_none - 1:+.1%} | "
                     f"{r['tokens_reencoded']:,} | {r['model_seconds']:.1f} |")
    lines += [
        "",
        f"Fine-tuning: LoRA r=16, alpha=32, dropout 0.05 on q/k/v/o; for append+marks also the two marking-token",
        f"rows (everything else frozen); AdamW lr {args.lr}, weight decay 0, {args.steps // 20} warmup steps then cosine,",
        f"{args.steps} steps of {args.batch_size} examples (the same for every fine-tuned row), loss on the 16 target tokens only.",
        "Training examples follow the paper's preparation: a random context length so that",
        "BOS + context + document block + target fits 512.",
        "",
        "![training curves](results_training.png)",
        "",
        "## Reading the table",
        "",
    ]
    by = {r["setting"]: r for r in rows}
    a0, am, al = by["append"]["ppl"], by["append + marks"]["ppl"], by["append + marks + LoRA"]["ppl"]
    p0, pl, nl = by["prepend"]["ppl"], by["prepend + LoRA"]["ppl"], by["none + LoRA (control)"]["ppl"]

    def trend(hist) -> str:
        ev = [h["eval_loss"] for h in hist if "eval_loss" in h]
        if len(ev) < 3:
            return "was measured too rarely to tell a trend"
        drop = ev[-3] - ev[-1]
        return (f"still fell by {drop:.3f} nats over the last two evaluations" if drop > 0.005 else
                f"had flattened ({ev[-3]:.3f} -> {ev[-1]:.3f} over the last two evaluations)")

    def cmp(x: float, y: float) -> str:
        return "better than" if x < y * 0.995 else "worse than" if x > y * 1.005 else "about the same as"

    lines += [
        f"* Without fine-tuning, prepending is {cmp(p0, base_none)} no retrieval ({p0:.2f} vs {base_none:.2f});"
        f" appending is {cmp(a0, base_none)} it ({a0:.2f}; with the untrained marks {am:.2f}). A model",
        "  pretrained on plain text has never seen a passage between its input and its continuation: the gap",
        "  the paper's fine-tuning exists to close.",
        f"* After {args.steps} steps, append+marks+LoRA reaches {al:.2f} (from {am:.2f}), prepend+LoRA {pl:.2f}.",
        f"  The control, fine-tuned on the same targets without documents, reaches {nl:.2f}: prepend+LoRA is"
        f" {cmp(pl, nl)} it, append+marks+LoRA {cmp(al, nl)} it.",
        f"  At this budget FlashBack's layout has {'not ' if al > pl * 1.05 else ''}caught up with prepending;"
        f" the held-out loss of the append run {trend(histories['append + marks + LoRA'])}; see the curves.",
        f"* Re-encoding: appending re-encodes {by['append + marks']['tokens_reencoded']:,} tokens against"
        f" {by['prepend']['tokens_reencoded']:,} for prepending on the same text (model time"
        f" {by['append + marks']['model_seconds']:.0f} s vs {by['prepend']['model_seconds']:.0f} s): the input's",
        "  KV cache survives every retrieval.",
        "* Scale: the paper fine-tunes Llama-2-7B on WikiText-103 with Wikipedia retrieval; this is a 260K-parameter",
        "  model on short, self-contained stories, where a retrieved story says little about the next tokens of",
        "  another. The table shows the mechanics at work, not the paper's numbers.",
        "",
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
