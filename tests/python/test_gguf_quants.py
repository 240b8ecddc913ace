"""Dequantization of every ggml quantized type flashback reads, held to an independent implementation:
PyPI's `gguf` package (gguf.quants.dequantize, numpy), bit for bit in fp32, on random blocks."""

import numpy as np
import pytest
import torch

import flashback
from fbtest import SHARED, fails

gguf = pytest.importorskip("gguf", reason="the reference, PyPI's gguf package, is not installed "
                                          "(scripts/setup.sh caches it; offline, this test cannot run)")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T  # noqa: E402

# Where each type keeps its fp16 scale (and min) fields, by ggml's block layouts.
HALF_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q2_K: [80, 82],
               T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def random_blocks(qtype, n_blocks, rng, finite_scales):
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if finite_scales:  # scales as real files have them: finite, some tiny (subnormal), some zero
        for at in HALF_FIELDS[qtype]:
            h = (rng.standard_normal(n_blocks) * rng.choice([1e-6, 1e-3, 1.0, 100.0], n_blocks)).astype(np.float16)
            h[::17] = 0
            raw[:, at:at + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", list(HALF_FIELDS), ids=lambda t: t.name)
def test_dequantize_equals_the_gguf_package_bit_for_bit(qtype):
    rng = np.random.default_rng(int(qtype))
    block, _ = GGML_QUANT_SIZES[qtype]
    for finite in (True, False):
        raw = random_blocks(qtype, 64, rng, finite)
        want = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(-1)
        got = flashback._C.dequantize(int(qtype), raw.tobytes(), raw.shape[0] * block).numpy()
        assert got.shape == want.shape
        if finite:
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), qtype.name  # every bit
        else:  # random scale bytes include NaN and infinity: equal values, NaN where numpy has NaN
            assert np.array_equal(got, want, equal_nan=True), qtype.name


def test_unsupported_and_mismatched_sizes_are_refused():
    with pytest.raises(flashback.InvalidArgument, match="Q8_1 cannot be dequantized"):
        flashback._C.dequantize(int(T.Q8_1), bytes(36), 32)
    with pytest.raises(flashback.InvalidArgument, match="bytes for 1 Q4_0 blocks"):
        flashback._C.dequantize(int(T.Q4_0), bytes(17), 32)


def _retyped(tmp_path, name, ggml_type):
    """stories260K.gguf with the type id of its tensor `name` overwritten (found with the gguf package)."""
    src = SHARED / "models/stories260K/stories260K.gguf"
    r = gguf.GGUFReader(str(src))
    t = next(t for t in r.tensors if t.name == name)
    type_part = t.field.parts[-2]  # name length, name, n_dims, dims, type, offset
    at = type_part.ctypes.data - r.data.ctypes.data
    data = bytearray(src.read_bytes())
    assert int.from_bytes(data[at:at + 4], "little") == int(t.tensor_type)
    data[at:at + 4] = int(ggml_type).to_bytes(4, "little")
    out = tmp_path / f"retyped-{int(ggml_type)}.gguf"
    out.write_bytes(bytes(data))
    return out


def test_bad_tensor_types_are_one_clear_line_from_the_cli(tmp_path):
    name = "blk.0.attn_q.weight"
    # an unknown type id
    bad = _retyped(tmp_path, name, 99)
    fails("info", "--model", bad, contains=(str(bad), name, "unknown ggml type 99"))
    # a type whose block size the row length (64) is not a multiple of
    bad = _retyped(tmp_path, name, T.Q4_K)
    fails("info", "--model", bad, contains=(str(bad), name, "not a multiple of the Q4_K block size 256"))
    # a type ggml knows but flashback does not dequantize (Q8_1 only ever holds activations)
    bad = _retyped(tmp_path, name, T.Q8_1)
    fails("generate", "--model", bad, "--prompt", "x", contains=(str(bad), name, "Q8_1"))
    # a byte span that disagrees with the file: as I64 (8 bytes a value where F32 has 4) the embedding's
    # span overlaps the next tensor or runs past the end
    bad = _retyped(tmp_path, "token_embd.weight", T.I64)
    fails("info", "--model", bad, contains=(str(bad), "token_embd.weight"))


def test_keep_quantized_smollm2_runs_its_q4_1_blocks_as_the_dequantized_model():
    """SmolLM2's Q4_1 projections kept in their blocks: prefills (many rows: the dequantized matrix through a
    GEMM) equal the dequantized model's; decode steps (the integer-dot kernel, 8-bit activations as llama.cpp
    has them) stay within a few percent of its logits and pick the same tokens."""
    from fbtest import SMOL
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}: scripts/setup.sh fetches it")
    dense = flashback.LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="none")
    kept = flashback.LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="none", keep_quantized=True)
    ids = torch.tensor([dense.tokenizer.encode("The capital of France is Paris. The capital of Italy is")])
    with torch.inference_mode():
        a, b = dense._core.forward(ids), kept._core.forward(ids)
        assert (a - b).abs().max().item() < 1e-3
        ca, cb = dense._core.make_cache(1, 64), kept._core.make_cache(1, 64)
        dense._core.forward_cached(ids, ca)
        kept._core.forward_cached(ids, cb)
        scale, worst, same, gaps = 0.0, 0.0, 0, []
        for t in range(12):
            tok = torch.tensor([[int(a[0, -1].argmax()) if t == 0 else int(la[0, -1].argmax())]])
            la, lb = dense._core.forward_cached(tok, ca), kept._core.forward_cached(tok, cb)
            scale = max(scale, la.abs().max().item())
            worst = max(worst, (la - lb).abs().max().item())
            ta, tb = int(la[0, -1].argmax()), int(lb[0, -1].argmax())
            same += ta == tb
            gaps.append(float(la[0, -1, ta] - la[0, -1, tb]))  # how much worse the kept model's pick is, densely
    assert worst < 0.05 * scale, (worst, scale)
    # The same tokens but for near ties (8-bit activations move logits by ~1%).
    assert same >= 10 and max(gaps) < 0.02 * scale, (same, gaps, scale)
    # Blocks hold no dense copy to save or merge into: one clear error.
    with pytest.raises(Exception, match="quantized"):
        kept.save_gguf("/nonexistent/never-written.gguf")
