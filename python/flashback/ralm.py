"""Retrieval, contexts and the RALM loops of the C++ core, from Python.

    ret = flashback.open_index("build/data/index")            # BM25 (Xapian) or dense
    ids, stats = flashback.generate(model, ret, "Once upon a time", 64, mode="append")
    result = flashback.evaluate(model, ret, text, mode="append")   # {"ppl", "nll", "tokens", "stats"}

A Context holds one sequence's KV cache and layout (append: FlashBack,
prepend: In-Context RALM, none); `place(docs)` and `append(tokens)` return
logits tensors, so custom loops are a few lines of Python.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _C
from .modeling import LlamaForCausalLM

Retriever = _C.Retriever


def open_index(path: Union[str, Path], encoder_model: Optional[Union[str, Path]] = None,
               forbidden_titles: Optional[Union[str, Path, Sequence[str]]] = None) -> "_C.Retriever":
    """Opens an index built by `flashback index` or build_bm25_index. forbidden_titles:
    a file (one title per line) or a list of titles never to retrieve."""
    r = _C.open_index(str(path), str(encoder_model or ""))
    if isinstance(forbidden_titles, (str, Path)):
        r.forbid_titles_file(str(forbidden_titles))
    elif forbidden_titles:
        r.forbid_titles(list(forbidden_titles))
    return r


def build_bm25_index(corpus: Union[str, Path], out_dir: Union[str, Path], tokenizer: "_C.Tokenizer",
                     fmt: str = "paragraphs", max_tokens: int = 100) -> int:
    """Splits `corpus` (format "wikitext", "paragraphs" or "jsonl") into passages of at most
    `max_tokens` tokens and writes a BM25 index to `out_dir` atomically. Returns the passage count."""
    return _C.build_bm25_index(str(corpus), fmt, tokenizer, int(max_tokens), str(out_dir))


class Context:
    """One sequence's layout and KV cache over a model (see docs/architecture.md).

    mode: "append" (FlashBack: documents after the input), "prepend" (In-Context
    RALM) or "none". marks: bracket documents with <MARK_L> ... <MARK_R>."""

    def __init__(self, model: LlamaForCausalLM, mode: str = "append", *, marks: bool = True, kv_reuse: bool = True,
                 max_length: int = 0, reserve: int = 16, window_keep: float = 0.5) -> None:
        if marks and mode != "none" and model.marks is None:
            raise ValueError("marks=True needs a model with marking tokens (from_pretrained(..., marks='add'))")
        marks_vocab = model.vocab_size if model.marks else 0
        self.model = model
        self.mode = mode
        self._ctx = _C.Context(model.core, mode, marks_vocab, marks=marks, kv_reuse=kv_reuse, max_length=max_length,
                               reserve=reserve, window_keep=window_keep)

    def reset(self, input_ids: Sequence[int]) -> None:
        """Starts over with `input_ids` (BOS first) as the input."""
        self._ctx.reset([int(i) for i in input_ids])

    def place(self, docs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Places tokenised documents (replacing the previous ones) and returns the
        logits [V] after the layout's last slot. The input's cache is kept in
        append mode; prepend recomputes everything."""
        return self._ctx.place([[int(t) for t in d] for d in docs])

    def append(self, tokens: Sequence[int], all_rows: bool = False) -> torch.Tensor:
        """Appends tokens; logits [1, V] of the last one, or [len, V] with all_rows."""
        return self._ctx.append([int(t) for t in tokens], all_rows)

    def layout(self) -> List[int]:
        """The token ids in cache slot order."""
        return self._ctx.layout()

    def text(self) -> List[int]:
        """The text so far (input and recent tokens, no documents)."""
        return self._ctx.text()

    def stats(self) -> Dict:
        return self._ctx.stats()

    @property
    def raw(self) -> "_C.Context":
        return self._ctx


def _ids(model: LlamaForCausalLM, text_or_ids: Union[str, Sequence[int]]) -> List[int]:
    if isinstance(text_or_ids, str):
        return model.encode(text_or_ids, bos=True)
    return [int(i) for i in text_or_ids]


def generate(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"], prompt: Union[str, Sequence[int]],
             max_new_tokens: int, *, mode: str = "append", marks: bool = True, stride: int = 16,
             query_tokens: int = 32, doc_tokens: int = 128, k: int = 1, max_length: int = 0,
             window_keep: float = 0.5, kv_reuse: bool = True, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True) -> Tuple[List[int], Dict]:
    """RALM generation in the C++ loop: retrieves every `stride` tokens (query = the
    last `query_tokens` tokens), places the top-k documents by `mode`, samples
    (greedy at temperature 0). Returns (generated ids, stats)."""
    ctx = Context(model, mode, marks=marks and mode != "none", kv_reuse=kv_reuse, max_length=max_length,
                  reserve=stride, window_keep=window_keep)
    stops = [model.tokenizer.eos_id] if (stop_at_eos and model.tokenizer is not None) else []
    with _eval_mode(model):
        return _C.ralm_generate(ctx.raw, retriever if mode != "none" else None, _tokenizer(model),
                                _ids(model, prompt), int(max_new_tokens), stride, query_tokens, doc_tokens, k,
                                temperature, top_k, top_p, seed, stops)


def evaluate(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"], text: Union[str, Sequence[int]], *,
             mode: str = "append", marks: bool = True, stride: int = 16, query_tokens: int = 32, doc_tokens: int = 128,
             k: int = 1, max_length: int = 0, window_keep: float = 0.5, kv_reuse: bool = True,
             progress: Optional[Callable[[int, int], None]] = None) -> Dict:
    """Token-level perplexity as In-Context RALM / FlashBack evaluate it: blocks of
    `stride` tokens, each after a retrieval; marks excluded from the softmax.
    Returns {"ppl", "nll", "tokens", "stats"}."""
    ctx = Context(model, mode, marks=marks and mode != "none", kv_reuse=kv_reuse, max_length=max_length,
                  reserve=stride, window_keep=window_keep)
    with _eval_mode(model):
        return _C.ralm_evaluate(ctx.raw, retriever if mode != "none" else None, _tokenizer(model),
                                _ids(model, text), stride, query_tokens, doc_tokens, k, progress)


@contextlib.contextmanager
def _eval_mode(model: LlamaForCausalLM):
    """The RALM loops are inference: no dropout, whatever mode the model is in."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _tokenizer(model: LlamaForCausalLM) -> "_C.Tokenizer":
    if model.tokenizer is None:
        raise ValueError(f"{model.name_or_path or 'this model'} has no tokenizer (pass tokenizer= to from_pretrained)")
    return model.tokenizer
