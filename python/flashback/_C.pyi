"""
flashback's C++ core (thin bindings; use the `flashback` package)
"""
from __future__ import annotations
import typing

import torch
__all__: list[str] = ['Context', 'ContextOptions', 'DEFAULT_MAX_LENGTH', 'DocumentSource', 'FixedDocuments', 'FlashbackError', 'FormatError', 'GenerateOptions', 'InvalidArgument', 'KVCache', 'MarkingToken', 'Model', 'NoDocuments', 'RalmOptions', 'RandomDocuments', 'RetrievedDocuments', 'Retriever', 'SamplingOptions', 'StagedDirectory', 'Tokenizer', 'build_bm25_index', 'cpu_has_avx2_fma', 'default_lora_config', 'dequantize', 'evaluate', 'generate', 'load', 'lora_target_names', 'model_fingerprint', 'open_index', 'read_adapter_config', 'resolve_options', 'set_num_threads', 'shipped_adapter_dirs', 'supports_dtype', 'training_layout', 'wikitext_articles', 'write_file_atomic', 'write_shipped_adapter_info']
class FlashbackError(RuntimeError):
    pass
class FormatError(FlashbackError, ValueError):
    """
    A file is missing, unreadable or malformed; the message starts with its path.
    """
class InvalidArgument(FlashbackError, ValueError):
    """
    A value outside what the operation accepts.
    """
class RalmOptions:
    """
    Retrieval-augmented generation and evaluation options (the paper's defaults).
    """
    fields: typing.ClassVar[list] = ['stride', 'query_tokens', 'doc_tokens', 'k', 'marks', 'kv_reuse', 'max_length', 'window_keep', 'doc_positions', 'kv_dtype']
    def __init__(self) -> None:
        ...
    def validate(self) -> None:
        ...
    @property
    def doc_positions(self) -> str:
        """
        where RoPE puts appended documents: 'before' the input, at the positions a prepended block would take (the token after the block is then predicted from the input's end), or 'after' it, at their slots (the paper's layout) [before]
        """
    @doc_positions.setter
    def doc_positions(self, arg0: str) -> None:
        ...
    @property
    def doc_tokens(self) -> int:
        """
        each retrieved passage is cut to this many tokens [128]
        """
    @doc_tokens.setter
    def doc_tokens(self, arg0: int) -> None:
        ...
    @property
    def k(self) -> int:
        """
        passages per retrieval, placed in rank order [1]
        """
    @k.setter
    def k(self, arg0: int) -> None:
        ...
    @property
    def kv_dtype(self) -> str:
        """
        the KV cache's element type: auto (the model's), fp32, bf16 or fp16; bf16 halves an fp32 model's cache and the bytes each decode step reads from it (scores and sums stay fp32; kv_reuse then agrees with recomputing to bf16's rounding) [auto]
        """
    @kv_dtype.setter
    def kv_dtype(self, arg0: str) -> None:
        ...
    @property
    def kv_reuse(self) -> bool:
        """
        keep the cache across retrievals; off recomputes the whole layout at every step, the exactness reference [on]
        """
    @kv_reuse.setter
    def kv_reuse(self, arg0: bool) -> None:
        ...
    @property
    def marks(self) -> bool:
        """
        bracket the documents with <MARK_L> ... <MARK_R> (never in mode none) [on]
        """
    @marks.setter
    def marks(self, arg0: bool) -> None:
        ...
    @property
    def max_length(self) -> int:
        """
        tokens the layout may hold; 0: 512 (the paper's), or fewer when the model's maximum position (less the documents' room with doc_positions before) is smaller; the KV cache holds exactly this many [0]
        """
    @max_length.setter
    def max_length(self, arg0: int) -> None:
        ...
    @property
    def query_tokens(self) -> int:
        """
        l: the query is the last l tokens of the text, decoded [32]
        """
    @query_tokens.setter
    def query_tokens(self, arg0: int) -> None:
        ...
    @property
    def stride(self) -> int:
        """
        s: tokens between retrievals (also the room kept free after the documents) [16]
        """
    @stride.setter
    def stride(self, arg0: int) -> None:
        ...
    @property
    def window_keep(self) -> float:
        """
        when the input no longer fits, the fraction of its budget kept (the first token and the newest) [0.5]
        """
    @window_keep.setter
    def window_keep(self, arg0: float) -> None:
        ...
class SamplingOptions:
    """
    Next-token sampling: greedy at temperature 0.
    """
    seed: int
    def __init__(self) -> None:
        ...
    def validate(self) -> None:
        ...
    @property
    def temperature(self) -> float:
        """
        0: greedy (argmax)
        """
    @temperature.setter
    def temperature(self, arg0: float) -> None:
        ...
    @property
    def top_k(self) -> int:
        """
        keep the k most likely tokens (0: all)
        """
    @top_k.setter
    def top_k(self, arg0: int) -> None:
        ...
    @property
    def top_p(self) -> float:
        """
        nucleus mass in (0, 1]
        """
    @top_p.setter
    def top_p(self, arg0: float) -> None:
        ...
class GenerateOptions:
    max_new_tokens: int
    sampling: SamplingOptions
    def __init__(self) -> None:
        ...
    @property
    def stop_at_eos(self) -> bool:
        """
        stop after the model's end-of-sequence token
        """
    @stop_at_eos.setter
    def stop_at_eos(self, arg0: bool) -> None:
        ...
class ContextOptions:
    """
    What a context runs with, resolved from RalmOptions for its mode.
    """
    @property
    def doc_positions(self) -> str:
        ...
    @property
    def kv_reuse(self) -> bool:
        ...
    @property
    def marks(self) -> bool:
        ...
    @property
    def max_length(self) -> int:
        ...
    @property
    def mode(self) -> str:
        ...
    @property
    def position_offset(self) -> int:
        """
        the input's first RoPE position
        """
    @property
    def retrieves(self) -> bool:
        ...
    @property
    def stride(self) -> int:
        ...
    @property
    def window_keep(self) -> float:
        ...
class Tokenizer:
    @staticmethod
    def from_file(path: str) -> Tokenizer:
        ...
    def decode(self, ids: list[int]) -> str:
        ...
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ...
    def id_to_piece(self, id: int) -> str:
        ...
    def piece_to_id(self, piece: str) -> int:
        ...
    @property
    def adds_bos(self) -> bool:
        """
        whether a sequence starts with BOS (Llama-2: yes; SmolLM2: no)
        """
    @property
    def bos_id(self) -> int:
        ...
    @property
    def eos_id(self) -> int:
        ...
    @property
    def family(self) -> str:
        ...
    @property
    def vocab_size(self) -> int:
        ...
class KVCache:
    def batch(self) -> int:
        ...
    def bytes_allocated(self) -> int:
        ...
    def capacity(self) -> int:
        ...
    def size(self) -> int:
        ...
    def truncate(self, n: int) -> None:
        ...
    @property
    def dtype(self) -> str:
        ...
class Model:
    @staticmethod
    def random(config_json: str, seed: int = 0, dtype: str = 'float32') -> Model:
        ...
    def adapter_config(self) -> typing.Any:
        ...
    def add_lora(self, r: int, alpha: float, dropout: float, target_modules: list[str], trainable_token_indices: list[int]) -> None:
        ...
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        ...
    def forward_cached(self, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor | None = None) -> torch.Tensor:
        ...
    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        ...
    def load_adapter(self, dir: str, merge: bool = False) -> None:
        ...
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        ...
    def make_cache(self, batch: int = 1, capacity: int = 0, kv_dtype: str = '') -> KVCache:
        """
        a KV cache for this model; kv_dtype '' or 'auto': the model's dtype
        """
    def mark_only_adapter_trainable(self) -> None:
        ...
    def merge_adapter(self) -> None:
        ...
    def merge_and_unload(self) -> None:
        ...
    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """
        (HF name, the C++ parameter itself) pairs
        """
    def save_adapter(self, dir: str, base_model: str = '', dtype: str = 'auto') -> None:
        ...
    def save_gguf(self, path: str, tokenizer: Tokenizer, dtype: str = 'auto') -> None:
        ...
    def save_pretrained(self, dir: str, tokenizer: Tokenizer = None) -> None:
        ...
    def set_adapter_enabled(self, enabled: bool) -> None:
        ...
    def to(self, device: str = '', dtype: str = '') -> None:
        ...
    def train(self, mode: bool = True) -> None:
        ...
    def unmerge_adapter(self) -> None:
        ...
    @property
    def config_json(self) -> str:
        ...
    @property
    def device(self) -> str:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def has_adapter(self) -> bool:
        ...
    @property
    def kernels(self) -> str:
        """
        'auto' (the hand-written CPU kernels where they apply) or 'libtorch' (LibTorch's ops only)
        """
    @kernels.setter
    def kernels(self, arg1: str) -> None:
        ...
    @property
    def quantized_weights(self) -> list[str]:
        """
        the weights kept in their GGUF blocks (keep_quantized), by name
        """
    @property
    def training(self) -> bool:
        ...
class MarkingToken:
    """
    <MARK_L>, <MARK_R>: the last two rows of a vocabulary
    """
    def __init__(self, vocab_size: int) -> None:
        ...
    def strip(self, logits: torch.Tensor) -> torch.Tensor:
        """
        logits [..., V] -> [..., V - 2]: the marks out
        """
    def wrap(self, docs: list[list[int]]) -> list[int]:
        """
        <MARK_L> docs... <MARK_R>
        """
    @property
    def left(self) -> int:
        ...
    @property
    def right(self) -> int:
        ...
class Retriever:
    def __init__(self) -> None:
        ...
    def forbid_titles(self, titles: list[str]) -> None:
        ...
    def forbid_titles_file(self, path: str) -> None:
        ...
    def retrieve(self, query: str, k: int = 1) -> typing.Any:
        """
        the best k passages, best first: dicts {id, title, text, score, document}
        """
    def size(self) -> int:
        ...
class Context:
    def __init__(self, model: Model, mode: str, mark_left: int, options: RalmOptions) -> None:
        ...
    def append(self, tokens: list[int], all_rows: bool = False) -> torch.Tensor:
        ...
    def cache_capacity(self) -> int:
        ...
    def cache_size(self) -> int:
        ...
    @property
    def cache_dtype(self) -> str:
        ...
    def hold(self, tokens: list[int]) -> None:
        """
        adds tokens to the text unencoded; the next place() encodes them (only place() may follow)
        """
    def layout(self) -> list[int]:
        ...
    def place(self, docs: list[list[int]]) -> torch.Tensor:
        """
        places the documents; returns the logits after the layout's last slot [V]
        """
    def positions(self) -> list[int]:
        ...
    def reset(self, input: list[int]) -> None:
        ...
    def stats(self) -> typing.Any:
        ...
    def text(self) -> list[int]:
        ...
    @property
    def mode(self) -> str:
        ...
    @property
    def options(self) -> ContextOptions:
        ...
class DocumentSource:
    def documents(self, text: list[int]) -> list[list[int]]:
        """
        the documents (token lists) of a retrieval after `text`
        """
    def max_tokens(self) -> int:
        ...
class RetrievedDocuments(DocumentSource):
    def __init__(self, retriever: Retriever, tokenizer: Tokenizer, options: RalmOptions) -> None:
        ...
    def keep_history(self, on: bool) -> None:
        """
        record every retrieval (position, query, passages) from now on
        """
    @property
    def history(self) -> typing.Any:
        """
        [{position, query, titles, scores}] of the retrievals recorded, in order
        """
    @property
    def last_documents(self) -> list[str]:
        ...
    @property
    def last_query(self) -> str:
        ...
class FixedDocuments(DocumentSource):
    def __init__(self, per_retrieval: list[list[list[int]]]) -> None:
        ...
class RandomDocuments(DocumentSource):
    def __init__(self, doc_tokens: int, low: int, high: int, seed: int = 0) -> None:
        ...
class NoDocuments(DocumentSource):
    def __init__(self) -> None:
        ...
class StagedDirectory:
    """
    A directory written as a whole (see flashback.io.atomic_directory).
    """
    def __init__(self, target: str, marker: str, kind: str) -> None:
        ...
    def commit(self) -> None:
        ...
    def discard(self) -> None:
        ...
    @property
    def path(self) -> str:
        ...
    @property
    def target(self) -> str:
        ...
def build_bm25_index(corpus: str, format: str, tokenizer: Tokenizer, max_tokens: int, dir: str) -> int:
    ...
def cpu_has_avx2_fma() -> bool:
    """
    whether the AVX2 decode kernels can run on this CPU
    """
def default_lora_config() -> typing.Any:
    """
    the paper's LoRA: r 16, alpha 32, ...
    """
def dequantize(ggml_type: int, data: bytes, n: int) -> torch.Tensor:
    """
    n values of ggml type `ggml_type` (Q4_0 = 2, ... Q6_K = 14) from their blocks, as fp32 [n]
    """
def evaluate(context: Context, documents: DocumentSource, ids: list[int], progress: typing.Callable[[int, int], None] = None) -> typing.Any:
    """
    retrieval-augmented perplexity: {ppl, nll (mean), nll_sum, tokens, stats}
    """
def generate(context: Context, documents: DocumentSource, prompt: list[int], options: GenerateOptions) -> tuple:
    """
    the one generation loop: (generated ids, stats)
    """
def generate_batch(model: Model, mode: str, mark_left: int, options: RalmOptions, documents: list[DocumentSource], prompts: list[list[int]], generation: GenerateOptions) -> tuple:
    """
    batched streams: one generation per prompt (its own context, cache and document source), the model's work shared by all in one forward per step; stream i samples with seed + i. ([(ids, stats)], batch stats)
    """
def load(path: str, dtype: str = 'auto', marks: str = 'find', tokenizer: str = '', device: str = 'cpu', adapter: str = '', merge_adapter: bool = False, default_adapter: bool = True, adapter_dirs: list[str] = [], keep_quantized: bool = False) -> tuple:
    """
    (Model, Tokenizer or None, index of <MARK_L> or -1, the adapter directory loaded or ''); marks: 'add', 'find' or 'none'; with marks 'add' and no adapter, default_adapter loads the one shipped for this model; keep_quantized: a GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K layer projections stay in their blocks (CPU inference)
    """
def lora_target_names() -> list[str]:
    """
    the projections LoRA may adapt, in canonical order
    """
def model_fingerprint(path: str) -> str:
    """
    the identity shipped adapters are matched on (shipped_adapters.hpp)
    """
def open_index(dir: str, encoder_model: str = '', forbidden_titles: str = '') -> Retriever:
    ...
def read_adapter_config(dir: str) -> typing.Any:
    ...
def resolve_options(mode: str, options: RalmOptions, max_positions: int = 512) -> ContextOptions:
    """
    what a context of `mode` runs with (mode none: no marks, no retrieval; max_length resolved)
    """
def set_num_threads(n: int = 0) -> int:
    """
    intra-op threads (0 = FLASHBACK_THREADS or all cores)
    """
def shipped_adapter_dirs(extra: list[str] = []) -> list[str]:
    ...
def supports_dtype(arg0: str, arg1: str) -> bool:
    ...
def training_layout(mode: str, input: list[int], docs: list[list[int]], targets: list[int], mark_left: int, bos_id: int, doc_positions: str = 'after', position_offset: int = 0) -> tuple:
    """
    (tokens, target slots, position ids) of one training example, laid out as the contexts lay out inference
    """
def wikitext_articles(path: str) -> list:
    """
    [(title, begin, end)]: each article's byte span in a WikiText file, by read_corpus's heading rule
    """
def write_file_atomic(path: str, data: bytes) -> None:
    """
    writes `data` to `path` atomically (temporary file, fsync, rename)
    """
def write_shipped_adapter_info(dir: str, model: str, base_model: str, description: str) -> None:
    ...
DEFAULT_MAX_LENGTH: int = 512
