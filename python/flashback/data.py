"""Training examples as the paper prepares them (FlashBack, section 4 / its data-preparation code).

  * the text is one token stream; a target block of `target_tokens` (s = 16) starts at every
    `stride`-th position;
  * the documents come from the C++ retrieval the inference loops use (RetrievedDocuments): the query
    is the last `query_tokens` (32) tokens before the block, decoded; the top-1 passage (forbidden
    titles excluded by the retriever) is cut to `doc_tokens` (128);
  * the context is a random number of tokens before the block, as many as fit:
    BOS + context + document block + target <= max_length (512);
  * the layout is the contexts' own (the C++ training_layout: append, prepend or none, marks or not,
    the BOS rule), so training and inference cannot disagree;
  * labels, HF-style, equal the input ids on the target tokens and IGNORE_INDEX elsewhere: the loss
    covers the `target_tokens` tokens only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from . import _C
from .loss import IGNORE_INDEX


_RALM = _C.RalmOptions()  # the inference defaults (options.hpp): the examples mirror them


@dataclass
class DataConfig:
    layout: str = "append"                   # "append" (FlashBack), "prepend" (In-Context RALM), "none" (no documents)
    marks: bool = _RALM.marks                # bracket the document with <MARK_L> ... <MARK_R>
    stride: int = _RALM.stride               # a target block every `stride` tokens (16)
    target_tokens: int = _RALM.stride        # s: tokens scored per example, one stride (16)
    query_tokens: int = _RALM.query_tokens   # the query is the last 32 tokens before the block
    doc_tokens: int = _RALM.doc_tokens       # the document is cut to 128 tokens
    max_length: int = _C.DEFAULT_MAX_LENGTH  # BOS + context + document block + target (512)
    min_context: int = 1                     # at least this many context tokens
    doc_positions: str = _RALM.doc_positions  # where RoPE puts an appended document ("before" / "after" the input)
    seed: int = 0

    def validate(self) -> None:
        if self.layout not in ("append", "prepend", "none"):
            raise ValueError(f"layout must be 'append', 'prepend' or 'none', not {self.layout!r}")
        for name in ("stride", "target_tokens", "query_tokens", "doc_tokens", "max_length", "min_context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def ralm_options(self) -> "_C.RalmOptions":
        """The inference options these examples mirror (top-1 retrieval)."""
        o = _C.RalmOptions()
        o.marks, o.query_tokens, o.doc_tokens, o.k = self.marks, self.query_tokens, self.doc_tokens, 1
        o.stride, o.max_length, o.doc_positions = self.stride, self.max_length, self.doc_positions
        return o

    def context_options(self) -> "_C.ContextOptions":
        """What the inference context of this layout runs with (the C++ rules: no marks and no retrieval
        in mode none)."""
        return _C.resolve_options(self.layout, self.ralm_options(), self.max_length)


@dataclass
class Example:
    input_ids: List[int]   # the layout
    labels: List[int]      # HF's convention: input_ids on the target tokens, IGNORE_INDEX elsewhere
    document: str = ""     # the retrieved passage (for inspection)
    position_ids: Optional[List[int]] = None  # RoPE positions (None: 0..T-1)


def build_examples(stream: Sequence[int], tokenizer, retriever, config: DataConfig, *,
                   mark_left: Optional[int] = None, bos_id: Optional[int] = None, limit: Optional[int] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> List[Example]:
    """Examples from a token stream (the text encoded without BOS).

    tokenizer: a flashback Tokenizer (decodes queries, encodes documents);
    retriever: a flashback Retriever (a built-in index or a Python subclass; top-1 per example;
    None: no document); mark_left: the <MARK_L> id (needed when config.marks); bos_id: the token each
    input starts with (default: BOS when the tokenizer adds one, else none, as inference starts a
    sequence); limit: at most this many examples, evenly spread over the text. Raises ValueError when
    the text yields no example."""
    config.validate()
    resolved = config.context_options()
    if resolved.marks and (mark_left is None or mark_left < 0):
        raise ValueError("config.marks needs the model's marking tokens (mark_left)")
    mark = mark_left if resolved.marks else -1
    bos = tokenizer.bos_id

    def layout(context, docs, target):
        return _C.training_layout(config.layout, context, docs, target, mark, bos, resolved.doc_positions,
                                  resolved.position_offset)

    prefix = [bos_id] if bos_id is not None else ([bos] if tokenizer.adds_bos else [])
    # The largest example (the longest document, the fewest context tokens) must fit max_length.
    largest = layout(prefix + [0] * config.min_context, [[0] * config.doc_tokens], [0] * config.target_tokens)[0]
    if len(largest) > config.max_length:
        raise ValueError(f"max_length {config.max_length} leaves no room for BOS + {config.min_context} context "
                         f"tokens + a {config.doc_tokens}-token document (with its marks) + {config.target_tokens} "
                         f"targets")
    stream = [int(t) for t in stream]
    first = max(config.query_tokens, config.min_context)
    starts = list(range(first, len(stream) - config.target_tokens + 1, config.stride))
    if not starts:
        raise ValueError(f"no training examples: the text has {len(stream)} tokens; one example needs at least "
                         f"{first + config.target_tokens} ({first} before the target + {config.target_tokens} target)")
    if limit is not None and limit < len(starts):
        step = len(starts) / limit
        starts = [starts[int(i * step)] for i in range(limit)]
    source = None
    if retriever is not None and resolved.retrieves:
        source = _C.RetrievedDocuments(retriever, tokenizer, config.ralm_options())
    rng = random.Random(config.seed)
    out: List[Example] = []
    for n, p in enumerate(starts):
        target = stream[p:p + config.target_tokens]
        docs = source.documents(stream[p - config.query_tokens:p]) if source is not None else []
        # With one context token: the room left is the most context that fits.
        probe = layout(prefix + [0], docs, target)[0]
        room = config.max_length - len(probe) + 1
        ctx_len = rng.randint(config.min_context, min(room, p))
        ids, scored, position_ids = layout(prefix + stream[p - ctx_len:p], docs, target)
        labels = [IGNORE_INDEX] * len(ids)
        for q in scored:
            labels[q] = ids[q]
        text = source.last_documents[0] if source is not None and docs else ""
        plain = position_ids == list(range(len(ids)))
        out.append(Example(ids, labels, text, None if plain else position_ids))
        if progress:
            progress(n + 1, len(starts))
    return out


def wikitext_articles(path) -> List[tuple]:
    """[(title, text)]: the articles of a WikiText file, whole and as written (headings, blank lines),
    split by the heading rule the corpus reader uses (read_corpus)."""
    data = open(path, "rb").read()
    return [(title, data[b:e].decode("utf-8", errors="replace")) for title, b, e in _C.wikitext_articles(str(path))]


def collate(examples: Sequence[Example], pad_id: int = 0) -> tuple:
    """Right-pads a batch: (input_ids [B, T], labels [B, T]). Padding comes after
    every real token, so causal attention never lets a real row see it."""
    t = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), t), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[b, :len(e.labels)] = torch.tensor(e.labels, dtype=torch.long)
    return ids, labels


def collate_positions(examples: Sequence[Example]) -> Optional[torch.Tensor]:
    """The RoPE positions [B, T] of a batch collate() pads (padding continues each row's last position),
    or None when every example uses 0..T-1."""
    if all(e.position_ids is None for e in examples):
        return None
    t = max(len(e.input_ids) for e in examples)
    out = torch.arange(t, dtype=torch.long).repeat(len(examples), 1)
    for b, e in enumerate(examples):
        if e.position_ids is not None:
            n = len(e.position_ids)
            out[b, :n] = torch.tensor(e.position_ids, dtype=torch.long)
            out[b, n:] = torch.arange(1, t - n + 1) + e.position_ids[-1]
    return out
