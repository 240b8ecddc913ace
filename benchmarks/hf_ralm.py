#!/usr/bin/env python3
"""The paper's runtime test written in HF transformers as a user would write it: the baseline
`flashback bench ralm` is compared with (benchmarks/gpu.sh runs both in one job).

A Llama of --config's shape with random weights (HF's init) generates greedily from --init random tokens
until --total - --doc tokens, retrieving a random --doc-token document every --stride tokens:
  * prepend (In-Context RALM): every retrieval puts the document before the input and encodes the whole
    sequence again into a fresh DynamicCache;
  * append (FlashBack): the cache keeps the input; every retrieval crops it back to the input's end,
    encodes the stride tokens generated since the last retrieval and <MARK_L> doc <MARK_R> after them,
    and decodes on top.
Eager attention, one sequence. Prints one JSON line (seconds per mode, tokens encoded, the speedup).

    python benchmarks/hf_ralm.py --config hidden=4096,layers=32,heads=32,kv_heads=32,ffn=11008,vocab=32000 \\
        --dtype fp16 --device cuda --init 512 --total 1024
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def parse_config(spec: str) -> dict:
    keys = {"hidden": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
            "kv_heads": "num_key_value_heads", "ffn": "intermediate_size", "vocab": "vocab_size",
            "max_pos": "max_position_embeddings"}
    out = {}
    for item in spec.split(","):
        k, _, v = item.partition("=")
        if k not in keys or not v.isdigit():
            raise SystemExit(f"hf_ralm: bad --config item {item!r} (keys: {', '.join(keys)})")
        out[keys[k]] = int(v)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model, mode: str, init: torch.Tensor, total: int, stride: int, doc: int, marks: tuple, seed: int,
        device: torch.device) -> dict:
    from transformers import DynamicCache

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    tokens = init.tolist()
    to_generate = total - doc - len(tokens)
    encoded = decoded = 0
    cache, last = None, None
    input_end = 0  # append: the cache's slots of the input (everything before the document)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        generated = 0
        while generated < to_generate:
            document = torch.randint(1, vocab - 2, (doc,), generator=g).tolist()
            if mode == "prepend":
                cache = DynamicCache()
                seq = document + tokens
                out = model(input_ids=torch.tensor([seq], device=device), past_key_values=cache, use_cache=True)
                encoded += len(seq)
            else:
                if cache is None:
                    cache, new = DynamicCache(), tokens
                else:
                    cache.crop(input_end - cache.get_seq_length())  # negative: drop that many (4.x and 5.x)
                    new = tokens[input_end:]  # the stride tokens generated after the last document
                seq = new + [marks[0]] + document + [marks[1]]
                out = model(input_ids=torch.tensor([seq], device=device), past_key_values=cache, use_cache=True)
                input_end = len(tokens)
                encoded += len(seq)
            last = out.logits[0, -1]
            for _ in range(min(stride, to_generate - generated)):
                nxt = int(last.argmax())  # the one host round trip per token
                tokens.append(nxt)
                generated += 1
                out = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=cache, use_cache=True)
                decoded += 1
                last = out.logits[0, -1]
    sync(device)
    return {"mode": mode, "seconds": time.perf_counter() - t0, "generated": generated, "tokens_encoded": encoded,
            "tokens_decoded": decoded}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="hidden=4096,layers=32,heads=32,kv_heads=32,ffn=11008,vocab=32000")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--init", type=int, default=512)
    ap.add_argument("--total", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--doc", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", default="auto", choices=["auto", "short", "full"],
                    help="untimed run of each mode first: short, full (the timed size) or auto (full off the CPU)")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cfg = parse_config(args.config)
    cfg.setdefault("max_position_embeddings", 4096)
    cfg["max_position_embeddings"] = max(cfg["max_position_embeddings"], args.total + args.stride + 2)
    if args.total - args.doc - args.init < 1:
        raise SystemExit("hf_ralm: --total leaves nothing to generate after --init and --doc")
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="eager")).to(dtype).eval()
    print(f"hf_ralm: model ready in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    vocab = cfg["vocab_size"]
    marks = (vocab - 2, vocab - 1)  # two rows of the vocabulary stand for the marks (random weights either way)
    init = torch.randint(1, vocab - 2, (args.init,), generator=torch.Generator().manual_seed(args.seed + 1))
    # Untimed, each mode once first, as `flashback bench ralm --warmup`: CUDA's context, cuBLAS handles and
    # each kernel shape's first use. Short: a few strides of input; full: the timed size (auto: off the CPU).
    full = args.warmup == "full" or (args.warmup == "auto" and device.type != "cpu")
    warm_init = init if full else init[: 2 * args.stride]
    warm_total = args.total if full else len(warm_init) + args.doc + 2 * args.stride
    for mode in ("append", "prepend"):
        run(model, mode, warm_init, warm_total, args.stride, args.doc, marks, args.seed, device)
    runs = {"append": [], "prepend": []}
    for rep in range(args.repeats):
        for mode in (["append", "prepend"] if rep % 2 == 0 else ["prepend", "append"]):
            r = run(model, mode, init, args.total, args.stride, args.doc, marks, args.seed + 2 + rep, device)
            runs[mode].append(r)
            print(f"hf_ralm: repeat {rep + 1}/{args.repeats} {mode} {r['seconds']:.2f} s", file=sys.stderr, flush=True)
    modes = []
    for mode, rs in runs.items():
        secs = sorted(r["seconds"] for r in rs)
        modes.append({**rs[0], "seconds": secs[len(secs) // 2], "seconds_all": [r["seconds"] for r in rs]})
    out = {"bench": "hf_ralm", "transformers": __import__("transformers").__version__, "torch": torch.__version__,
           "config": args.config, "dtype": args.dtype, "device": str(device), "init": args.init, "total": args.total,
           "stride": args.stride, "doc": args.doc, "repeats": args.repeats, "warmup": "full" if full else "short",
           "attention": "eager", "modes": modes}
    a, p = modes[0]["seconds"], modes[1]["seconds"]
    out["speedup_append_over_prepend"] = p / a if a > 0 else None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
