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
