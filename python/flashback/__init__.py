"""flashback: FlashBack retrieval-augmented language modelling (Liu et al. 2024)
over a C++ LibTorch core.

    import flashback
    model = flashback.LlamaForCausalLM.from_pretrained("stories260K.bin", marks="add")
    model.add_adapter(flashback.LoraConfig(r=16, lora_alpha=32))   # LoRA + the two mark rows
    out = model(input_ids, labels=labels)                           # HF-style: out.loss, out.logits
    model.save_adapter("out/adapter")                               # PEFT's format

Contexts, retrieval and the RALM loops: see flashback.ralm. Fine-tuning:
flashback.finetune (also `python -m flashback.finetune`).
"""

import torch as _torch  # loads LibTorch first: the extension links the same build


def _load_extension():
    """flashback._C, or one line naming the torch it was built for and the one here: another torch's LibTorch
    cannot load it (missing symbols at best, a crash at worst), so the versions are compared first."""
    fix = "reinstall flashback in this environment (pip install --force-reinstall --no-deps <flashback source>)"
    try:
        from ._build_info import TORCH_VERSION as built
    except ImportError:
        built = ""
    if built and built != _torch.__version__:
        raise ImportError(f"flashback was built against torch {built} but this environment has torch "
                          f"{_torch.__version__}: {fix}")
    try:
        from . import _C
    except ImportError as e:
        raise ImportError(f"flashback's extension does not load with torch {_torch.__version__} "
                          f"(built against {built or 'an unknown torch'}): {fix} ({str(e).splitlines()[0]})") from e
    return _C


_C = _load_extension()
from ._C import FlashbackError, FormatError, InvalidArgument, Tokenizer
from .loss import IGNORE_INDEX, causal_lm_loss, target_loss
from .modeling import CausalLMOutput, LlamaConfig, LlamaForCausalLM, LoraConfig, read_adapter_config
from .ralm import (Context, DocumentSource, RalmOptions, Retriever, build_bm25_index, evaluate, generate,
                   generate_batch, open_index, ralm_options)

__version__ = "0.1.0"

__all__ = [
    "LlamaForCausalLM", "LlamaConfig", "CausalLMOutput", "LoraConfig", "read_adapter_config", "Tokenizer", "Context",
    "Retriever", "DocumentSource", "RalmOptions", "ralm_options", "open_index", "build_bm25_index", "generate",
    "generate_batch",
    "evaluate", "target_loss", "causal_lm_loss", "IGNORE_INDEX", "FlashbackError", "FormatError", "InvalidArgument",
    "set_num_threads",
]


def set_num_threads(n: int = 0) -> int:
    """Intra-op threads for the C++ core and torch alike (0: FLASHBACK_THREADS or all cores)."""
    return _C.set_num_threads(n)
