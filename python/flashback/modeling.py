"""LlamaForCausalLM: a torch.nn.Module over the C++ decoder.

Its parameters ARE the C++ model's tensors (same TensorImpl, same storage):
`parameters()`, `state_dict()`, torch.optim and DistributedDataParallel see
exactly what the C++ forward reads and what backward writes gradients to.
Names follow Hugging Face (`model.layers.0.self_attn.q_proj.weight`, and
PEFT's `...q_proj.lora_A.weight` / `model.embed_tokens.token_adapter.
trainable_tokens_delta` once an adapter is added).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import _C
from .loss import IGNORE_INDEX, causal_lm_loss, token_loss

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}
LORA_TARGETS = tuple(_C.lora_target_names())
_LORA = _C.default_lora_config()  # the C++ LoraConfig's defaults: the paper's


@dataclass
class LoraConfig:
    """PEFT's LoraConfig fields flashback uses. Defaults are the paper's (r=16,
    alpha=32, dropout 0.05 on the attention projections), the C++ LoraConfig's.
    `trainable_token_indices=None` means: the two marking tokens when the model
    has them (what FlashBack trains), else none."""

    r: int = _LORA["r"]
    lora_alpha: float = _LORA["lora_alpha"]
    lora_dropout: float = _LORA["lora_dropout"]
    target_modules: Sequence[str] = tuple(_LORA["target_modules"])
    trainable_token_indices: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        # PEFT's spelling: a string names one module, "all-linear" every linear layer but lm_head (what
        # docs/results.md measured best for the append layout on SmolLM2)
        if isinstance(self.target_modules, str):
            t = self.target_modules
            self.target_modules = LORA_TARGETS if t == "all-linear" else (t,)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


def read_adapter_config(path: Union[str, Path]) -> LoraConfig:
    """The LoraConfig saved in a PEFT adapter directory (validated by the C++ reader)."""
    return _lora_config(_C.read_adapter_config(str(path)))


def _lora_config(d: Dict[str, Any]) -> "LoraConfig":
    """A LoraConfig from adapter_config.json's fields (PEFT writes null for no token rows)."""
    return LoraConfig(r=d["r"], lora_alpha=d["lora_alpha"], lora_dropout=d["lora_dropout"],
                      target_modules=tuple(d["target_modules"]),
                      trainable_token_indices=list(d["trainable_token_indices"] or []))


class LlamaConfig:
    """The model's config (HF's field names, from config.json or the checkpoint), as attributes:
    `model.config.vocab_size`. Read once when the model is made."""

    def __init__(self, values: Dict[str, Any]) -> None:
        self.__dict__.update(values)

    @classmethod
    def from_json(cls, text: str) -> "LlamaConfig":
        return cls(json.loads(text))

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def to_json_string(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    def __repr__(self) -> str:
        return f"LlamaConfig({self.__dict__})"


@dataclass
class CausalLMOutput:
    """What forward returns, as HF's CausalLMOutput: `.loss` (when labels were given) and `.logits`
    [B, T, V] float32 (None with loss="target", which applies the head to the labelled rows only).
    Indexing works as HF's ModelOutput: out["logits"], out[0] (the first field that is set)."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None

    def to_tuple(self) -> Tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> List[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: Union[int, str]) -> torch.Tensor:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


def _parse_to(args: tuple, kwargs: dict) -> Tuple[Optional[torch.device], Optional[torch.dtype]]:
    """The (device, dtype) of Module.to's signatures: to(device), to(dtype), to(device, dtype), to(tensor),
    and the keywords device=, dtype=, non_blocking=, copy=, memory_format=."""
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    kwargs.pop("copy", None)
    kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, bool):  # the positional non_blocking of to(device, dtype, non_blocking)
            continue
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            device, dtype = a.device, a.dtype
        elif isinstance(a, (str, int, torch.device)):
            device = a
        else:
            raise TypeError(f"to() cannot take {type(a).__name__}")
    if isinstance(device, int):
        device = torch.device("cuda", device)
    return (torch.device(device) if device is not None else None), dtype


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    # Re-class the wrapped C++ tensor in place: the same object, now an
    # nn.Parameter (a Parameter made with nn.Parameter(t) would be a new
    # TensorImpl, and the C++ forward would never see its updates).
    if not isinstance(t, nn.Parameter):
        t.__class__ = nn.Parameter
    return t


class LlamaForCausalLM(nn.Module):
    """A Llama-2 decoder (GQA, RoPE, SwiGLU) computed by the C++ core.

    forward(input_ids [B, T] int64, labels=None) -> CausalLMOutput(loss, logits [B, T, V] float32), as HF's
    LlamaForCausalLM, differentiable with respect to every parameter that requires grad."""

    def __init__(self, core: "_C.Model", tokenizer: Optional["_C.Tokenizer"] = None, mark_left: int = -1,
                 name_or_path: str = "") -> None:
        super().__init__()
        self._core = core
        self.tokenizer = tokenizer
        self.mark_left = int(mark_left)
        self.name_or_path = name_or_path
        self.adapter_path: Optional[str] = None  # the adapter from_pretrained loaded
        self.config = LlamaConfig.from_json(core.config_json)
        self._core.train(self.training)
        self._sync_parameters()

    # ------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: Optional[Union[str, Path]], *, dtype: Union[str, torch.dtype] = "auto",
                        marks: str = "find", tokenizer: Optional[Union[str, Path]] = None, device: str = "cpu",
                        adapter: Optional[Union[str, Path]] = None, merge_adapter: bool = False,
                        default_adapter: bool = True, config: Optional[Any] = None,
                        state_dict: Optional[Dict[str, torch.Tensor]] = None,
                        keep_quantized: bool = False) -> "LlamaForCausalLM":
        """Loads an HF directory (config.json + safetensors, sharded or not),
        a llama2.c .bin or a GGUF file.

        As HF's, path=None with config= (a dict or an HF LlamaConfig) and state_dict= (e.g. an HF
        LlamaForCausalLM's state_dict()) builds the model from those tensors instead.

        marks: "add" gives the model the two marking tokens (mean-initialised
        rows appended to the vocabulary, as FlashBack does before fine-tuning;
        a checkpoint that already has them keeps its rows), "find" uses them
        when the checkpoint has them, "none" ignores them.
        adapter: a PEFT adapter directory to load on top (merged or not), frozen.
        default_adapter: with marks="add" and no adapter, the adapter flashback ships
        for this model (adapters/ in the source, <prefix>/share/flashback/adapters
        installed), if there is one, as the CLI does; `adapter_path` says which.
        Pass False to fine-tune from the base model.
        keep_quantized: a GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q6_K layer projections stay in their blocks in memory
        (as llama.cpp runs them: decode reads 4.5-8.5 bits per weight); CPU inference, adapters
        unmerged; saving or merging needs the model loaded without it.
        The model comes in eval mode (LoRA dropout off), as HF's does; train() turns it on."""
        dt = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype
        if path is None:
            return cls._from_state_dict(config, state_dict, "float32" if dt == "auto" else dt, device)
        if config is not None or state_dict is not None:
            raise ValueError("from_pretrained takes a path, or path=None with config= and state_dict=, not both")
        core, tok, mark_left, loaded = _C.load(
            str(path), dtype=dt, marks=marks, tokenizer=str(tokenizer or ""), device=str(device),
            adapter=str(adapter or ""), merge_adapter=merge_adapter, default_adapter=default_adapter,
            adapter_dirs=[os.path.join(sys.prefix, "share", "flashback", "adapters")], keep_quantized=keep_quantized)
        model = cls(core, tok, mark_left, str(path))
        model.adapter_path = loaded or None
        if loaded:
            model.requires_grad_(False)
        return model.eval()  # as HF's from_pretrained: dropout off until train()

    @classmethod
    def _from_state_dict(cls, config: Any, state_dict: Optional[Dict[str, torch.Tensor]], dtype: str,
                         device: str) -> "LlamaForCausalLM":
        if config is None or state_dict is None:
            raise ValueError("from_pretrained(None, ...) needs both config= and state_dict=")
        cfg = json.loads(config.to_json_string()) if hasattr(config, "to_json_string") else dict(config)
        model = cls.from_config(cfg, dtype=dtype)
        sd = dict(state_dict)
        for key in [k for k in sd if k.endswith("rotary_emb.inv_freq")]:  # a buffer, derived from the config
            del sd[key]
        if "lm_head.weight" not in model._parameters:
            sd.pop("lm_head.weight", None)  # tied: HF lists the head under both names
        model.load_state_dict({k: v.detach().to("cpu") for k, v in sd.items()}, strict=True)
        return model.to(device).eval()

    @classmethod
    def from_config(cls, config: Dict, seed: int = 0, dtype: Union[str, torch.dtype] = "float32") -> "LlamaForCausalLM":
        """A randomly initialised model (HF's init) for an HF-style config dict."""
        dt = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype
        return cls(_C.Model.random(json.dumps(config), seed, dt))

    def _sync_parameters(self) -> None:
        self._parameters.clear()
        for name, t in self._core.named_parameters():
            self._parameters[name] = _as_parameter(t)

    # ------------------------------------------------------------ properties
    @property
    def core(self) -> "_C.Model":
        """The C++ model (for flashback.ralm's contexts and loops)."""
        return self._core

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self._core.dtype]

    @property
    def device(self) -> torch.device:
        return torch.device(self._core.device)

    @property
    def kernels(self) -> str:
        """Which kernels this model's forward uses: "auto" (the C++ core's hand-written CPU kernels for decode
        where they apply) or "libtorch" (LibTorch's ops only, e.g. to compare). Set it before sharing the model."""
        return self._core.kernels

    @kernels.setter
    def kernels(self, value: str) -> None:
        self._core.kernels = value

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def marks(self) -> Optional[Tuple[int, int]]:
        """(<MARK_L>, <MARK_R>) ids, or None when the model has no marks."""
        if self.mark_left < 0:
            return None
        m = _C.MarkingToken(self.vocab_size)
        return (m.left, m.right)

    def get_parameter(self, target: str) -> nn.Parameter:  # names hold dots: a flat lookup
        try:
            return self._parameters[target]
        except KeyError:
            raise AttributeError(f"no parameter named {target!r}") from None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Parameter names hold dots (HF's names on one flat module): match whole keys.
        for name, param in self._parameters.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if value.shape != param.shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, "
                                  f"the model has {tuple(param.shape)}")
                continue
            with torch.no_grad():
                param.copy_(value)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in
                                   self._parameters)

    # ------------------------------------------------------------ compute
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, past_key_values: Any = None,
                labels: Optional[torch.Tensor] = None, *, use_cache: Optional[bool] = None,
                return_dict: Optional[bool] = None, loss: str = "causal_lm") -> CausalLMOutput:
        """input_ids [B, T] int64 (position_ids [T] or [B, T], default 0..T-1) -> CausalLMOutput; HF's
        signature. attention_mask may only be all ones (rows are not padded: FlashBack's examples are
        packed, and a cache belongs to a flashback.Context); past_key_values must be None and use_cache is
        ignored, for the same reason; return_dict=False returns the tuple.

        labels [B, T], as HF takes them: aligned with input_ids (labels=input_ids trains next-token
        prediction), IGNORE_INDEX (-100) where nothing is scored; the model shifts them, so row t is
        scored against labels[t + 1]. loss="causal_lm" is HF's loss (every vocabulary column in the
        softmax); loss="target" is FlashBack's (target_loss: the marking tokens out of the softmax), with
        the head applied to the scored rows only (.logits is then None)."""
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise ValueError("attention_mask must be all ones: flashback's forward takes unpadded rows "
                             "(pack the examples, or run rows of different lengths one at a time)")
        if past_key_values is not None:
            raise ValueError("past_key_values must be None: flashback keeps the KV cache in a flashback.Context "
                             "(flashback.ralm), not in forward's arguments")
        out = self._forward(input_ids, position_ids, labels, loss)
        return out.to_tuple() if return_dict is False else out

    def _forward(self, input_ids: torch.Tensor, positions: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                 loss: str) -> CausalLMOutput:
        if labels is None:
            return CausalLMOutput(logits=self._core.forward(input_ids, positions))
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)}")
        if loss == "causal_lm":
            logits = self._core.forward(input_ids, positions)
            return CausalLMOutput(loss=causal_lm_loss(logits, labels), logits=logits)
        if loss != "target":
            raise ValueError(f"loss must be 'causal_lm' or 'target', not {loss!r}")
        h = self._core.hidden_states(input_ids, positions)   # [B, T, C]
        targets = labels[:, 1:].to(h.device)                   # [B, T-1]: row t predicts token t+1
        rows = targets != IGNORE_INDEX                         # [B, T-1]
        if not bool(rows.any()):
            raise ValueError("no labelled token in the batch: nothing to train on")
        logits = self._core.logits(h[:, :-1][rows])            # [N, V]
        return CausalLMOutput(loss=token_loss(logits, targets[rows], self.mark_left if self.mark_left >= 0 else None))

    def hidden_states(self, input_ids: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The final-normed hidden states [B, T, C]; `logits(h)` applies the head to any subset of rows."""
        return self._core.hidden_states(input_ids, positions)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., C] -> logits [..., V] float32."""
        return self._core.logits(hidden)

    # ------------------------------------------------------------ modes and conversion
    def train(self, mode: bool = True) -> "LlamaForCausalLM":
        super().train(mode)
        self._core.train(mode)
        return self

    def to(self, *args, **kwargs) -> "LlamaForCausalLM":
        """Device and dtype conversion in the C++ model (keeps the rotary tables in
        fp32 and the parameters the same objects). Supports float32, bfloat16 and,
        where this LibTorch computes in it, float16."""
        device, dtype = _parse_to(args, dict(kwargs))
        if dtype is not None and dtype not in _DTYPE_NAMES:
            raise TypeError(f"flashback models compute in float32, bfloat16 or float16, not {dtype}")
        self._core.to(str(device) if device is not None else "", _DTYPE_NAMES[dtype] if dtype is not None else "")
        self._sync_parameters()
        return self

    def float(self) -> "LlamaForCausalLM":
        return self.to(torch.float32)

    def bfloat16(self) -> "LlamaForCausalLM":
        return self.to(torch.bfloat16)

    def half(self) -> "LlamaForCausalLM":
        return self.to(torch.float16)

    def cpu(self) -> "LlamaForCausalLM":
        return self.to("cpu")

    def cuda(self, device: Optional[Union[int, torch.device]] = None) -> "LlamaForCausalLM":
        return self.to(torch.device("cuda", device) if isinstance(device, int) else (device or "cuda"))

    def _apply(self, fn):  # anything else would convert tensors behind the C++ model's back
        raise NotImplementedError("convert a flashback model with .to(dtype/device), .float(), .bfloat16(), .cuda()")

    # ------------------------------------------------------------ adapters
    def add_adapter(self, config: Optional[LoraConfig] = None, *, trainable_only: bool = True) -> "LlamaForCausalLM":
        """Wraps the target projections in LoRA (A Kaiming-uniform, B zero: a no-op
        until trained) and adds the trainable token rows (by default the two marks).
        trainable_only: freeze everything else (what FlashBack trains)."""
        c = config or LoraConfig()
        tokens = c.trainable_token_indices
        if tokens is None:
            tokens = list(self.marks) if self.marks else []
        self._core.add_lora(int(c.r), float(c.lora_alpha), float(c.lora_dropout), list(c.target_modules),
                            [int(t) for t in tokens])
        self._core.train(self.training)
        if trainable_only:
            self._core.mark_only_adapter_trainable()
        self._sync_parameters()
        return self

    @property
    def has_adapter(self) -> bool:
        return self._core.has_adapter

    @property
    def adapter_config(self) -> LoraConfig:
        return _lora_config(self._core.adapter_config())

    def mark_only_adapter_trainable(self) -> None:
        """requires_grad only on LoRA A/B and the token rows."""
        self._core.mark_only_adapter_trainable()

    def adapter_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        for name, p in self.named_parameters():
            if ".lora_A." in name or ".lora_B." in name or name.endswith("trainable_tokens_delta"):
                yield name, p

    def merge_adapter(self) -> None:
        """W += (alpha/r) B A and the token rows into the embedding (inference speed)."""
        self._core.merge_adapter()

    def unmerge_adapter(self) -> None:
        self._core.unmerge_adapter()

    def merge_and_unload(self) -> "LlamaForCausalLM":
        """Folds the adapter into the weights for good and removes it."""
        self._core.merge_and_unload()
        self._sync_parameters()
        return self

    def enable_adapter(self) -> None:
        self._core.set_adapter_enabled(True)

    def disable_adapter(self) -> None:
        self._core.set_adapter_enabled(False)

    @contextlib.contextmanager
    def adapter_disabled(self):
        """with model.adapter_disabled(): ...  runs the base model."""
        self.disable_adapter()
        try:
            yield self
        finally:
            self.enable_adapter()

    def save_adapter(self, path: Union[str, Path], dtype: Optional[Union[str, torch.dtype]] = None) -> None:
        """Writes adapter_config.json + adapter_model.safetensors (PEFT's names)
        atomically: the directory is replaced as a whole. dtype: the stored tensors'
        (default the parameters'; torch.bfloat16 halves the file)."""
        dt = "auto" if dtype is None else (_DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype)
        self._core.save_adapter(str(path), self.name_or_path, dt)

    def load_adapter(self, path: Union[str, Path], merge: bool = False, trainable: bool = False) -> None:
        """Adds the PEFT adapter saved at `path` (the model must have none); trainable: only it trains,
        else everything is frozen."""
        self._core.load_adapter(str(path), merge)
        self._core.train(self.training)
        self._sync_parameters()
        if trainable:
            self._core.mark_only_adapter_trainable()
        else:
            self.requires_grad_(False)

    def save_pretrained(self, path: Union[str, Path]) -> None:
        """The whole model as an HF directory (config.json + model.safetensors [+ tokenizer.model])."""
        if self.has_adapter:
            raise ValueError("merge_and_unload() the adapter first, or save it with save_adapter()")
        self._core.save_pretrained(str(path), self.tokenizer)

    def save_gguf(self, path: Union[str, Path], dtype: str = "auto") -> None:
        """The whole model as one GGUF file llama.cpp runs (its tensor names and RoPE row order, the
        tokenizer embedded), matrices in `dtype` ("auto": the model's; fp32, bf16, fp16), norms in F32."""
        if self.has_adapter:
            raise ValueError("merge_and_unload() the adapter first: GGUF holds the merged weights")
        if self.tokenizer is None:
            raise ValueError(f"{self.name_or_path or 'this model'} has no tokenizer: GGUF embeds one")
        self._core.save_gguf(str(path), self.tokenizer, dtype)

    # ------------------------------------------------------------ text helpers
    def encode(self, text: str, bos: Optional[bool] = None) -> List[int]:
        """The ids of `text`; bos=None starts it as the tokenizer starts a sequence (Llama-2: with BOS,
        SmolLM2: without), as HF's add_special_tokens=True."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name_or_path or 'this model'} has no tokenizer")
        return self.tokenizer.encode(text, self.tokenizer.adds_bos if bos is None else bool(bos), False)

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            raise ValueError(f"{self.name_or_path or 'this model'} has no tokenizer")
        return self.tokenizer.decode([int(i) for i in ids])

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden={c.hidden_size}, layers={c.num_hidden_layers}, heads={c.num_attention_heads}, "
                f"kv_heads={c.num_key_value_heads}, vocab={c.vocab_size}, dtype={self._core.dtype}, "
                f"adapter={self.has_adapter}")
