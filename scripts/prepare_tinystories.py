#!/usr/bin/env python3
"""Splits ../shared's TinyStories prefix into a retrieval corpus and a disjoint
held-out evaluation text (whole paragraphs; the held-out part is the last N).

usage: prepare_tinystories.py SHARED OUT_DIR [--heldout-paragraphs 200]
writes OUT_DIR/tinystories_corpus.txt and OUT_DIR/tinystories_heldout.txt
(atomically; nothing is rewritten when both already exist and are newer than
the source)."""

import argparse
import os
import sys
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shared")
    ap.add_argument("out")
    ap.add_argument("--heldout-paragraphs", type=int, default=200)
    args = ap.parse_args()
    src = Path(args.shared) / "data/tinystories/tinystories_val_prefix.txt"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus, heldout = out / "tinystories_corpus.txt", out / "tinystories_heldout.txt"
    if all(p.exists() and p.stat().st_mtime >= src.stat().st_mtime for p in (corpus, heldout)):
        return 0
    paragraphs = [p.strip("\n") for p in src.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    n = args.heldout_paragraphs
    if len(paragraphs) <= n:
        print(f"{src}: only {len(paragraphs)} paragraphs", file=sys.stderr)
        return 1
    write_atomic(corpus, "\n\n".join(paragraphs[:-n]) + "\n")
    write_atomic(heldout, "\n\n".join(paragraphs[-n:]) + "\n")
    print(f"tinystories: {len(paragraphs) - n} corpus paragraphs, {n} held out -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
