"""Retrieval, contexts and the RALM loops of the C++ core, from Python.

    ret = flashback.open_index("build/data/index")            # BM25 (Xapian) or dense
    ids, stats = flashback.generate(model, ret, "Once upon a time", 64, mode="append")
    batch = flashback.generate_batch(model, ret, ["Once upon a time", "The river"], 64)  # [(ids, stats)]
    result = flashback.evaluate(model, ret, text, mode="append")   # {"ppl", "nll", "nll_sum", "tokens", "stats"}

The options are the C++ RalmOptions, the ones the CLI's flags set, with the same names, meanings and
defaults (help(flashback.RalmOptions)): stride, query_tokens, doc_tokens, k, marks, kv_reuse,
max_length, window_keep, doc_positions, kv_dtype. They are taken as keywords (stride=8) or as a RalmOptions.

A Context holds one sequence's KV cache and layout (append: FlashBack, prepend: In-Context RALM, none);
`place(docs)` and `append(tokens)` return logits tensors, so custom loops are a few lines of Python.
A retriever written in Python subclasses flashback.Retriever and returns dicts {"text", "title"} from
retrieve(query, k); the C++ loops call it like the built-in indexes.

Threads: generate() and evaluate() release the GIL for the whole C++ loop, and each call makes its own
Context and document source, so several threads may call them at once on one model (in eval mode, as
from_pretrained returns it: a model in training mode is switched to eval for each call, which is a write)
and one retriever (the built-in indexes serialise their searches; a Python retriever runs under the GIL).
Adapter changes (merge, load, enable) must not overlap a call. A Context is one sequence: one thread at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _C
from .modeling import LlamaForCausalLM

Retriever = _C.Retriever
RalmOptions = _C.RalmOptions
DocumentSource = _C.DocumentSource


def ralm_options(options: Optional["_C.RalmOptions"] = None, **kwargs) -> "_C.RalmOptions":
    """A RalmOptions: a copy of `options` (default: the paper's) with the given fields changed.
    An unknown name is a TypeError naming the fields there are."""
    o = _C.RalmOptions()
    if options is not None:
        for name in _C.RalmOptions.fields:
            setattr(o, name, getattr(options, name))
    for name, value in kwargs.items():
        if name not in _C.RalmOptions.fields:
            raise TypeError(f"unknown RALM option {name!r} (options: {', '.join(_C.RalmOptions.fields)})")
        setattr(o, name, value)
    o.validate()
    return o


def open_index(path: Union[str, Path], encoder_model: Optional[Union[str, Path]] = None,
               forbidden_titles: Optional[Union[str, Path, Sequence[str]]] = None) -> "_C.Retriever":
    """Opens an index built by `flashback index` or build_bm25_index. forbidden_titles:
    a file (one title per line) or a list of titles never to retrieve."""
    titles_file = str(forbidden_titles) if isinstance(forbidden_titles, (str, Path)) else ""
    r = _C.open_index(str(path), str(encoder_model or ""), titles_file)
    if forbidden_titles and not titles_file:
        r.forbid_titles(list(forbidden_titles))
    return r


def build_bm25_index(corpus: Union[str, Path], out_dir: Union[str, Path], tokenizer: "_C.Tokenizer",
                     fmt: str = "paragraphs", max_tokens: int = 100) -> int:
    """Splits `corpus` (format "wikitext", "paragraphs" or "jsonl") into passages of at most
    `max_tokens` tokens and writes a BM25 index to `out_dir` atomically. Returns the passage count."""
    return _C.build_bm25_index(str(corpus), fmt, tokenizer, int(max_tokens), str(out_dir))


class Context:
    """One sequence's layout and KV cache over a model (see docs/architecture.md).

    mode: "append" (FlashBack: documents after the input), "prepend" (In-Context RALM) or "none".
    The cache holds exactly options.max_length slots, in kv_dtype (default: the model's dtype)."""

    def __init__(self, model: LlamaForCausalLM, mode: str = "append", options: Optional["_C.RalmOptions"] = None,
                 **kwargs) -> None:
        self.model = model
        self._ctx = _C.Context(model.core, mode, model.mark_left, ralm_options(options, **kwargs))

    @property
    def mode(self) -> str:
        return self._ctx.mode

    @property
    def cache_dtype(self) -> str:
        """The KV cache's dtype ("float32", "bfloat16", ...): the kv_dtype option, else the model's."""
        return self._ctx.cache_dtype

    @property
    def options(self) -> "_C.ContextOptions":
        """What this context runs with (marks are off in mode none; max_length resolved)."""
        return self._ctx.options

    def reset(self, input_ids: Sequence[int]) -> None:
        """Starts over with `input_ids` (BOS first) as the input."""
        self._ctx.reset([int(i) for i in input_ids])

    def place(self, docs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Places tokenised documents (replacing the previous ones) and returns the
        logits [V] for the next token: after the layout's last slot (with doc_positions="before" and a block,
        after the input's last slot). The input's cache is kept in
        append mode; prepend recomputes everything."""
        return self._ctx.place([[int(t) for t in d] for d in docs])

    def append(self, tokens: Sequence[int], all_rows: bool = False) -> torch.Tensor:
        """Appends tokens; logits [1, V] of the last one, or [len, V] with all_rows."""
        return self._ctx.append([int(t) for t in tokens], all_rows)

    def hold(self, tokens: Sequence[int]) -> None:
        """Adds tokens to the text without encoding them: the next place() encodes them with the recent
        tokens (generate holds the last token before a retrieval instead of a decode step the retrieval would
        redo). Only place() may follow."""
        self._ctx.hold([int(t) for t in tokens])

    def layout(self) -> List[int]:
        """The token ids in cache slot order."""
        return self._ctx.layout()

    def positions(self) -> List[int]:
        """The RoPE position of each slot of layout(): the slots themselves, except that with
        doc_positions="before" (the default) an appended block sits below the input in position."""
        return self._ctx.positions()

    def text(self) -> List[int]:
        """The text so far (input, recent and held tokens, no documents)."""
        return self._ctx.text()

    def stats(self) -> Dict:
        return self._ctx.stats()

    @property
    def raw(self) -> "_C.Context":
        return self._ctx


def documents(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"],
              options: "_C.RalmOptions") -> "_C.DocumentSource":
    """The paper's retrieval for `model`: the last query_tokens tokens, decoded, are the query; the top-k
    passages, encoded and cut to doc_tokens, are the documents. No retriever: no documents."""
    if retriever is None:
        return _C.NoDocuments()
    return _C.RetrievedDocuments(retriever, _tokenizer(model), options)


def generate(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"], prompt: Union[str, Sequence[int]],
             max_new_tokens: int, *, mode: str = "append", temperature: Optional[float] = None,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             stop_at_eos: Optional[bool] = None, options: Optional["_C.RalmOptions"] = None,
             **kwargs) -> Tuple[List[int], Dict]:
    """RALM generation in the C++ loop (the one `flashback ralm` runs): retrieves every `stride` tokens
    (query = the last `query_tokens` tokens), places the top-k documents by `mode`, samples. Unset sampling
    arguments keep the C++ defaults (SamplingOptions: greedy; GenerateOptions: stop at EOS), as the CLI's
    flags do. Other keywords are RalmOptions fields. Returns (generated ids, stats); stats["retrieved"]
    lists each retrieval's position, query, titles and scores."""
    o = ralm_options(options, **kwargs)
    ctx = Context(model, mode, o)
    g = _generate_options(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
    source = _recorded_documents(model, retriever, o)
    with _eval_mode(model):
        ids, stats = _C.generate(ctx.raw, source, _ids(model, prompt), g)
    return ids, _with_retrievals(stats, source, ctx.options.retrieves)


def generate_batch(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"],
                   prompts: Sequence[Union[str, Sequence[int]]], max_new_tokens: int, *, mode: str = "append",
                   temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                   seed: Optional[int] = None, stop_at_eos: Optional[bool] = None,
                   options: Optional["_C.RalmOptions"] = None, **kwargs) -> List[Tuple[List[int], Dict]]:
    """generate() for several prompts at once as batched streams: each prompt has its own context, cache and
    retrievals (one shared retriever), and every step runs all of them in one forward, so the weights are
    read once per step for the whole batch (C++ generate_batch, docs/performance.md "Batched streams").
    Prompts may differ in length and retrieve at different steps. Prompt i samples with seed + i (equal
    prompts give different samples); its ids are those generate() gives it with that seed. Returns one
    (ids, stats) per prompt, as generate() does; stats["batch"] counts the shared forwards."""
    o = ralm_options(options, **kwargs)
    g = _generate_options(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
    sources = [_recorded_documents(model, retriever, o) for _ in prompts]
    retrieves = _C.resolve_options(mode, o, int(model.config.max_position_embeddings)).retrieves
    with _eval_mode(model):
        results, batch = _C.generate_batch(model.core, mode, model.mark_left, o, sources,
                                           [_ids(model, p) for p in prompts], g)
    out = []
    for (ids, stats), source in zip(results, sources):
        stats["batch"] = dict(batch)
        out.append((ids, _with_retrievals(stats, source, retrieves)))
    return out


def _generate_options(max_new_tokens: int, temperature, top_k, top_p, seed, stop_at_eos) -> "_C.GenerateOptions":
    """GenerateOptions with the C++ defaults where an argument is None (as the CLI's flags leave them)."""
    g = _C.GenerateOptions()
    g.max_new_tokens = int(max_new_tokens)
    if stop_at_eos is not None:
        g.stop_at_eos = bool(stop_at_eos)
    s = g.sampling
    for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("seed", seed)):
        if value is not None:
            setattr(s, name, value)
    s.validate()
    g.sampling = s
    return g


def _recorded_documents(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"],
                        options: "_C.RalmOptions") -> "_C.DocumentSource":
    source = documents(model, retriever, options)
    if isinstance(source, _C.RetrievedDocuments):
        source.keep_history(True)
    return source


def _with_retrievals(stats: Dict, source: "_C.DocumentSource", retrieves: bool) -> Dict:
    # each retrieval's titles and scores, as `flashback ralm --json` lists them
    stats["retrieved"] = source.history if isinstance(source, _C.RetrievedDocuments) and retrieves else []
    return stats


def evaluate(model: LlamaForCausalLM, retriever: Optional["_C.Retriever"], text: Union[str, Sequence[int]], *,
             mode: str = "append", progress: Optional[Callable[[int, int], None]] = None,
             options: Optional["_C.RalmOptions"] = None, **kwargs) -> Dict:
    """Token-level perplexity as In-Context RALM / FlashBack evaluate it (the loop `flashback eval` runs):
    blocks of `stride` tokens, each after a retrieval; marks excluded from the softmax. Other keywords
    are RalmOptions fields. Returns {"ppl", "nll" (mean per token), "nll_sum", "tokens", "stats"}."""
    o = ralm_options(options, **kwargs)
    ctx = Context(model, mode, o)
    with _eval_mode(model):
        return _C.evaluate(ctx.raw, documents(model, retriever, o), _ids(model, text), progress)


def _ids(model: LlamaForCausalLM, text_or_ids: Union[str, Sequence[int]]) -> List[int]:
    if isinstance(text_or_ids, str):
        return model.encode(text_or_ids)  # as the tokenizer starts a sequence
    return [int(i) for i in text_or_ids]


@contextlib.contextmanager
def _eval_mode(model: LlamaForCausalLM):
    """The RALM loops are inference: no dropout, whatever mode the model is in. A model already in eval
    mode is left alone: concurrent calls on it then write nothing to the model another thread is reading."""
    if not model.training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train(True)


def _tokenizer(model: LlamaForCausalLM) -> "_C.Tokenizer":
    if model.tokenizer is None:
        raise ValueError(f"{model.name_or_path or 'this model'} has no tokenizer (pass tokenizer= to from_pretrained)")
    return model.tokenizer
