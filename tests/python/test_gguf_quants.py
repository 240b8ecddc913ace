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


def _llama_cpp(what):
    return pytest.importorskip("llama_cpp", reason=f"llama-cpp-python ({what}) is not installed "
                                                   "(scripts/install_references.sh)")


def _llama_quantize(llama_cpp, src, dst, ftype, **settings):
    """src quantized to dst by llama.cpp's own quantizer (llama_model_quantize) as LLAMA_FTYPE_MOSTLY_<ftype>,
    with further llama_model_quantize_params settings (pure, quantize_output_tensor)."""
    import ctypes
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}"), 2
    for name, value in settings.items():
        setattr(params, name, value)
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


def _random_untied_f32(path, layers=2, seed=3):
    """A random Llama with its own output matrix (rows of 256 and 512, GQA, the Llama-2 tokenizer) as F32."""
    import json
    config = {"hidden_size": 256, "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 512, "vocab_size": 32000, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}
    tok = flashback._C.Tokenizer.from_file(str(SHARED / "models/llama2-tokenizer/tokenizer.model"))
    flashback._C.Model.random(json.dumps(config), seed, "float32").save_gguf(str(path), tok, "fp32")
    return path


def _kept_runs_as_dense(path, types):
    """`path`'s projections kept in their blocks (each of `types` among them): prefills (many rows: the
    dequantized matrix through a GEMM) equal the dequantized model's; decode steps (the integer-dot kernels,
    8-bit activations as llama.cpp has them) stay within a few percent of its logits and pick the same
    tokens."""
    dense = flashback.LlamaForCausalLM.from_pretrained(path, dtype="float32", marks="none")
    kept = flashback.LlamaForCausalLM.from_pretrained(path, dtype="float32", marks="none", keep_quantized=True)
    in_blocks = {t.name for t in gguf.GGUFReader(str(path)).tensors
                 if t.name.startswith("blk.") and t.tensor_type.name in types}
    layers = [n for n in kept._core.quantized_weights if n != "lm_head.weight"]
    assert in_blocks and len(layers) == len(in_blocks), (len(layers), len(in_blocks))
    return dense, kept


def test_keep_quantized_smollm2_runs_its_q4_1_blocks_as_the_dequantized_model():
    from fbtest import SMOL
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}: scripts/setup.sh fetches it")
    dense, kept = _kept_runs_as_dense(SMOL, {"Q4_1"})
    _check_kept(dense, kept)
    # Blocks hold no dense copy to save or merge into: one clear error.
    with pytest.raises(Exception, match="quantized"):
        kept.save_gguf("/nonexistent/never-written.gguf")


def test_keep_quantized_a_q4_k_m_file_from_llama_cpp(tmp_path):
    """SmolLM2 written as F32 by flashback, quantized to Q4_K_M by llama.cpp's own quantizer: Q4_K and Q6_K
    where a row holds whole super-blocks of 256, Q5_0 and Q8_0 where it does not (576 columns). Every layer
    projection stays in its blocks and runs as the dequantized model."""
    from fbtest import SMOL
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}: scripts/setup.sh fetches it")
    llama_cpp = _llama_cpp("the quantizer")
    f32, q4km = tmp_path / "smollm2-f32.gguf", tmp_path / "smollm2-q4_k_m.gguf"
    flashback.LlamaForCausalLM.from_pretrained(SMOL, dtype="float32", marks="none").save_gguf(str(f32))
    _llama_quantize(llama_cpp, f32, q4km, "Q4_K_M")
    f32.unlink()
    found = {t.tensor_type.name for t in gguf.GGUFReader(str(q4km)).tensors if t.name.startswith("blk.")}
    assert {"Q4_K", "Q6_K", "Q5_0"} <= found, found
    dense, kept = _kept_runs_as_dense(q4km, {"Q4_K", "Q6_K", "Q5_0", "Q5_1", "Q8_0", "Q4_0", "Q4_1"})
    _check_kept(dense, kept)


def test_keep_quantized_an_untied_head_in_q6_k_blocks(tmp_path):
    """A model with its own output matrix (not tied to the embedding), quantized to Q4_K_M by llama.cpp:
    Q4_K and Q6_K everywhere (rows of 256 and 512), the head in Q6_K. The head keeps its blocks too, and the
    file loads (its dense copy, needed only to grow the vocabulary for marks, used to be refused)."""
    llama_cpp = _llama_cpp("the quantizer")
    q4km = _llama_quantize(llama_cpp, _random_untied_f32(tmp_path / "untied-f32.gguf"),
                           tmp_path / "untied-q4_k_m.gguf", "Q4_K_M")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(q4km)).tensors}
    assert types["output.weight"] == "Q6_K" and {"Q4_K", "Q6_K"} <= set(types.values()), types
    dense, kept = _kept_runs_as_dense(q4km, {"Q4_K", "Q6_K"})
    assert "lm_head.weight" in kept._core.quantized_weights
    _check_kept(dense, kept)
    # Every matrix here is a K-quant, whose activations both engines quantize per super-block of 256 with an
    # fp32 scale (llama.cpp's Q8_K): decoded token by token, the kept model computes llama.cpp's own
    # arithmetic, to fp32 summation order, while the dequantized model (fp32 activations) differs by ~1%.
    # (Whole runs agree only while no 8-bit rounding falls differently: an ulp of difference in the fp32
    # parts, whose code the engines do not share, could flip one and part them; on this file none does.)
    llm = llama_cpp.Llama(model_path=str(q4km), n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, n_threads=2,
                          verbose=False, type_k=0, type_v=0, flash_attn=False)  # 0: an fp32 KV cache
    ids = dense.tokenizer.encode("The capital of France is Paris. The capital of Italy is") + [5, 99, 1234, 31999]
    worst_kept, worst_dense, scale = 0.0, 0.0, 0.0
    with torch.inference_mode():
        ca, cb = dense._core.make_cache(1, 64), kept._core.make_cache(1, 64)
        for i in ids:
            la = dense._core.forward_cached(torch.tensor([[i]]), ca)[0, -1].numpy()
            lb = kept._core.forward_cached(torch.tensor([[i]]), cb)[0, -1].numpy()
            llm.eval([i])
            lc = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            scale = max(scale, float(np.abs(lc).max()))
            worst_kept = max(worst_kept, float(np.abs(lb - lc).max()))
            worst_dense = max(worst_dense, float(np.abs(la - lc).max()))
    assert worst_kept < 1e-4 * scale and worst_dense > 100 * worst_kept, (worst_kept, worst_dense, scale)


def test_keep_quantized_a_dense_head_beside_an_embedding_in_blocks(tmp_path):
    """llama.cpp's quantize --leave-output-tensor: the embedding in Q8_0 blocks, the untied head left in F32.
    The head is the file's output.weight, dense; the embedding's blocks serve as the head only when the file
    has no output.weight (tied). They once stood in for it here: logits ~100% of their scale off."""
    q8 = _llama_quantize(_llama_cpp("the quantizer"), _random_untied_f32(tmp_path / "f32.gguf"),
                         tmp_path / "q8_0-leave-output.gguf", "Q8_0", quantize_output_tensor=False)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(q8)).tensors}
    assert types["output.weight"] == "F32" and types["token_embd.weight"] == "Q8_0", types
    dense, kept = _kept_runs_as_dense(q8, {"Q8_0"})
    assert "lm_head.weight" not in kept._core.quantized_weights
    _check_kept(dense, kept)


def _llama_cpp_cpu():
    """llama.cpp's CPU backend from llama-cpp-python's own libraries, for ggml_get_type_traits_cpu: each
    type's vec_dot and the activation type it takes (Q8_0, Q8_1 or Q8_K) with that type's from_float."""
    import ctypes
    from pathlib import Path
    llama_cpp = _llama_cpp("the reference")
    lib = Path(llama_cpp.__file__).parent / "lib"
    if not (lib / "libggml-cpu.so").exists():
        pytest.skip(f"llama-cpp-python ships no libggml-cpu.so in {lib}: its CPU kernels cannot be called")
    base, cpu = ctypes.CDLL(str(lib / "libggml-base.so")), ctypes.CDLL(str(lib / "libggml-cpu.so"))
    from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    vec_dot = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                               ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    class Traits(ctypes.Structure):  # ggml-cpu.h's struct ggml_type_traits_cpu
        _fields_ = [("from_float", from_float), ("vec_dot", vec_dot), ("vec_dot_type", ctypes.c_int),
                    ("nrows", ctypes.c_int64)]

    cpu.ggml_get_type_traits_cpu.restype, cpu.ggml_get_type_traits_cpu.argtypes = ctypes.POINTER(Traits), [ctypes.c_int]
    base.ggml_row_size.restype, base.ggml_row_size.argtypes = ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64]
    cpu.ggml_cpu_init()

    def products(qtype, rows, x):
        """rows [N, row bytes] of qtype times x [M, K] (fp32), as llama.cpp's decode computes them: [M, N]."""
        traits = cpu.ggml_get_type_traits_cpu(int(qtype)).contents
        act = cpu.ggml_get_type_traits_cpu(traits.vec_dot_type).contents
        buf = ctypes.create_string_buffer(base.ggml_row_size(traits.vec_dot_type, x.shape[1]))
        out, s = np.zeros((x.shape[0], rows.shape[0]), np.float32), ctypes.c_float()
        for m in range(x.shape[0]):
            act.from_float(np.ascontiguousarray(x[m]).ctypes.data, ctypes.addressof(buf), x.shape[1])
            for n in range(rows.shape[0]):
                traits.vec_dot(x.shape[1], ctypes.byref(s), 0, rows[n].ctypes.data, 0, ctypes.addressof(buf), 0, 1)
                out[m, n] = s.value
        return out
    return llama_cpp, products


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q6_K"])
def test_kept_blocks_compute_llama_cpps_own_dot_products(tmp_path, ftype):
    """Every type kept in blocks against llama.cpp's CPU kernels themselves (ggml_get_type_traits_cpu, called
    through ctypes): the head of a model llama.cpp quantized (pure: every matrix in the type; Q4_K_M's is
    Q4_K) times the same hidden rows. llama.cpp quantizes the activations (Q8_0/Q8_1 with fp16 scales and,
    for Q4_1/Q5_1, an fp16 block sum; Q8_K for the K-quants) and takes integer dot products; the kept
    kernel must give its numbers to fp32 summation order, where fp32 activations (the dequantized matrix)
    are ~0.5% of the scale away."""
    llama_cpp, products = _llama_cpp_cpu()
    quant = _llama_quantize(llama_cpp, _random_untied_f32(tmp_path / "f32.gguf", layers=1, seed=5),
                            tmp_path / f"{ftype}.gguf", ftype, pure=True)
    head = next(t for t in gguf.GGUFReader(str(quant)).tensors if t.name == "output.weight")
    assert head.tensor_type.name == ftype.split("_M")[0], head.tensor_type.name
    kept = flashback.LlamaForCausalLM.from_pretrained(str(quant), dtype="float32", marks="none", keep_quantized=True)
    assert "lm_head.weight" in kept._core.quantized_weights
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 256)) * rng.choice([0.1, 1.0, 4.0], (3, 256))).astype(np.float32)  # [3, K]
    rows = np.ascontiguousarray(np.asarray(head.data)[:2048])  # [2048, row bytes]
    want = products(head.tensor_type, rows, x)                  # [3, 2048]
    with torch.inference_mode():
        got = kept._core.logits(torch.from_numpy(x)[None])[0, :, :2048].numpy()  # [3, 2048]
    dense = x.astype(np.float64) @ gguf.quants.dequantize(rows, head.tensor_type).astype(np.float64).T
    scale = float(np.abs(want).max())
    err, err_dense = float(np.abs(got - want).max()), float(np.abs(dense - want).max())
    assert err < 2e-6 * scale and err_dense > 100 * err, (err / scale, err_dense / scale)


def _check_kept(dense, kept):
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
