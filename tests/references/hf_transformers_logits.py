"""Reference logits from HF transformers, run in the reference venv (PyPI torch 2.x + transformers +
gguf; scripts/install_references.sh), never in flashback's own: the two torches cannot share a process.

    python hf_transformers_logits.py REQUEST.json OUT.npz

REQUEST: {"model": a GGUF file or an HF directory, "passages": [[ids], ...], "prompt_tokens": n,
"new_tokens": m}. OUT holds, per passage i, logits_i (fp32 [T, V], teacher forced over the passage) and
greedy_i (the m ids HF's greedy generate appends to the first n ids of the passage)."""

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM


def load(model: str):
    p = Path(model)
    kw = {}
    if p.is_file():  # GGUF: transformers dequantizes every tensor to the dtype asked for
        kw["gguf_file"] = p.name
        p = p.parent
    try:
        return AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, **kw)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        return AutoModelForCausalLM.from_pretrained(str(p), torch_dtype=torch.float32, **kw)


def greedy(model, prompt: torch.Tensor, n: int) -> np.ndarray:
    """argmax decoding with HF's KV cache, never stopping at EOS (generate's config could)."""
    # transformers >= 5.24 names the cache `cache`; earlier ones `past_key_values`
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(prompt, use_cache=True)
    ids = []
    for _ in range(n):
        ids.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([[ids[-1]]]), use_cache=True, **{key: getattr(out, key)})
    return np.array(ids, dtype=np.int64)


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(0)
    model = load(req["model"]).eval()
    out = {"versions": np.array([torch.__version__, transformers.__version__])}
    with torch.no_grad():
        for i, ids in enumerate(req["passages"]):
            x = torch.tensor([ids], dtype=torch.long)
            out[f"logits_{i}"] = model(x).logits[0].float().numpy()
            out[f"greedy_{i}"] = greedy(model, x[:, : req["prompt_tokens"]], req["new_tokens"])
    np.savez(sys.argv[2], **out)


if __name__ == "__main__":
    main()
