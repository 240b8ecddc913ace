"""Byte-level BPE (SmolLM2-135M's vocabulary, read from its GGUF) held to two independent tokenizers:
HF `tokenizers`, built here from the vocabulary and merges the PyPI `gguf` package reads out of the same
file, and llama.cpp (`llama-cpp-python`, vocab_only). Every line of WikiText-103 test and of the
TinyStories text, and hard cases; decoding round-trips every line byte for byte. A reference that is not
installed is a visible skip."""


import pytest

import flashback
from fbtest import SHARED, SMOL


HARD = [
    "", " ", "     ", "a", "Hello world", "  leading", "trailing   ", "a   b    c  d",
    "\t\ttabs\tand\nnewlines\n\n\nand\r\nCRLF\r\n", "\n", "line\n", " \n \n",
    "I'm you're he'll she'd it's we've they're don't I'M YOU'RE", "'s 't 're",
    "1234567890 3.14159 1,000,000 2024-11-29 0.5e-10 ٣٤٥ ⅷ", "a1b22c333",
    "naïve café résumé façade", "e\u0301 combining", "Ελληνικά Русский текст עברית العربية",
    "日本語のテキスト、中文字符，한국어", "😀👍🏽🇯🇵 👨‍👩‍👧 emoji", "\u00a0nbsp\u3000ideographic\u200bzero-width",
    "<|im_start|>user\nhello<|im_end|>", "x<|endoftext|>y", "<|im_start|><|im_start|>", "<|im_start",
    "<repo_name>a<file_sep>", "@-@ WikiText 's spacing , like this .", " = Title = \n",
    "def f(x):\n    return x ** 2  # code\n", "!!!??? ... ---", "a" * 300, " " * 100 + "x",
]


def lines(path):
    return [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln]


@pytest.fixture(scope="module")
def ours():
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}: scripts/setup.sh fetches it (PyPI was unreachable?)")
    _, tok, _, _ = flashback._C.load(str(SMOL), marks="none")
    assert tok.vocab_size == 49152
    return tok


@pytest.fixture(scope="module")
def texts():
    return (lines(SHARED / "data/wikitext-103/wiki.test.raw") + lines(SHARED / "data/tinystories/tinystories_val_prefix.txt")
            + lines(SHARED / "data/tinystories/tinystories_sample.txt"))


@pytest.fixture(scope="module")
def hf():
    """HF tokenizers built from what the gguf package reads out of the file: vocabulary, merges, the
    control tokens, and SmolLM's pre-tokenizer (every digit alone, then GPT-2's ByteLevel split)."""
    gguf = pytest.importorskip("gguf", reason="PyPI's gguf package is not installed (scripts/setup.sh caches it)")
    tk = pytest.importorskip("tokenizers", reason="HF tokenizers is not installed (scripts/setup.sh caches it)")
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}")
    r = gguf.GGUFReader(str(SMOL))
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.tokens"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    merges = [tuple(bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8").split(" "))
              for i in f["tokenizer.ggml.merges"].data]
    assert bytes(f["tokenizer.ggml.pre"].parts[-1]).decode() == "smollm"
    t = tk.Tokenizer(tk.models.BPE(vocab={s: i for i, s in enumerate(tokens)}, merges=merges))
    t.pre_tokenizer = tk.pre_tokenizers.Sequence([tk.pre_tokenizers.Digits(individual_digits=True),
                                                  tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    t.decoder = tk.decoders.ByteLevel()
    t.add_special_tokens([tk.AddedToken(s, special=True, normalized=False)
                          for s, ty in zip(tokens, types) if ty == 3])
    return t


@pytest.fixture(scope="module")
def llama():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/setup.sh builds it)")
    if not SMOL.exists():
        pytest.skip(f"SmolLM2 is not at {SMOL}")
    return llama_cpp.Llama(model_path=str(SMOL), vocab_only=True, verbose=False)


def test_matches_hf_tokenizers_on_every_line(ours, hf, texts):
    mismatches = [t for t in texts + HARD if ours.encode(t, False, False) != hf.encode(t, add_special_tokens=False).ids]
    assert not mismatches, f"{len(mismatches)} of {len(texts) + len(HARD)} differ, e.g. {mismatches[:3]!r}"


def test_matches_llama_cpp_on_every_line(ours, llama, texts):
    for t in texts + HARD:
        assert ours.encode(t, False, False) == llama.tokenize(t.encode("utf-8"), add_bos=False, special=True), t
    # Invalid UTF-8 (bytes reach the C++ tokenizer as they are), read as llama.cpp reads it: a byte that
    # starts no character becomes U+FFFD; overlong forms are taken at their value; surrogates stay.
    for raw in (b"\xffabc", b"ab\x80cd", b"\xe6\x97", b"ok \xc3(", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xed\xa0",
                b"ab\xed\xbf\xbf cd", b"x \xed\xa0\x80\xed\xb0\x80y", b"it's\xed\xa0\x80's 12\xed\xa0\x8034", b"\xc0\x80",
                b"a\xc1\xbfb", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xf0\x8d\xa0\x80"):
        assert ours.encode(raw, False, False) == llama.tokenize(raw, add_bos=False, special=True), raw


def test_decoding_round_trips_every_line(ours, texts):
    # Control tokens decode to nothing (as in llama.cpp and sentencepiece): lines that spell one
    # (TinyStories' "<|endoftext|>" separators, the special-token cases) come back without it.
    controls = [ours.id_to_piece(i) for i in range(17)]
    plain = [t for t in texts + HARD if not any(c in t for c in controls)]
    assert len(plain) > 0.99 * len(texts)
    bad = [t for t in plain if ours.decode(ours.encode(t, False, False)) != t]
    assert not bad, bad[:3]
    for t in ("<|endoftext|>", "a<|im_start|>b"):
        assert ours.decode(ours.encode(t, False, False)) == t.replace("<|endoftext|>", "").replace("<|im_start|>", "")


def test_special_tokens_and_bos(ours):
    assert ours.encode("<|im_start|>", False, False) == [1]
    assert ours.decode([1, 2]) == ""  # control tokens vanish from text
    assert ours.bos_id == 1 and ours.eos_id == 2
    # SmolLM2 adds no BOS by default; asked for, it comes
    assert ours.encode("hi", True, False)[0] == 1
