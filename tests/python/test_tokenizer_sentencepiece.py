"""Differential test: `flashback tokenize` against the real sentencepiece.

Run with Debian's python (it has python3-sentencepiece 0.1.97):

    FLASHBACK_CLI=build/flashback /usr/bin/python3 -m pytest -q tests/python/test_tokenizer_sentencepiece.py

FLASHBACK_CLI is the built `flashback` binary; FLASHBACK_SHARED the shared
models/data folder (default: ../shared next to the repository).

Every line of WikiText-103 test and of the TinyStories prefix goes through both
tokenizers, for both shipped vocabularies; then hand-picked hard inputs,
decoding, models written by flashback (from llama2.c tokenizer.bin files) and
synthetic variants of tok512.model that exercise the rarer code paths (no byte
fallback, UNUSED and USER_DEFINED pieces, tied scores, normalizer flags).
"""

import json
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest
import sentencepiece as spm

from fbtest import SHARED, find_cli as _find_cli

TOK512 = SHARED / "models/stories260K/tok512.model"
TOK512_BIN = SHARED / "models/stories260K/tok512.bin"
LLAMA = SHARED / "models/llama2-tokenizer/tokenizer.model"
LLAMA_BIN = SHARED / "models/llama2-tokenizer/tokenizer.bin"
WIKI = SHARED / "data/wikitext-103/wiki.test.raw"
STORIES = SHARED / "data/tinystories/tinystories_val_prefix.txt"


def run_cli(args, stdin: bytes) -> bytes:
    proc = subprocess.run([str(_find_cli()), "tokenize", *map(str, args)], input=stdin,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def split_lines(data: bytes):
    """The CLI's contract: split on b'\\n' only; a last line without one counts."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def encode_with_cli(model, lines, bos=False):
    out = run_cli(["--tokenizer", model] + (["--bos"] if bos else []), b"".join(l + b"\n" for l in lines))
    got = [json.loads(l) for l in split_lines(out)]
    assert len(got) == len(lines), f"{len(lines)} lines in, {len(got)} out"
    return got


def decode_with_cli(model, id_lists):
    out = run_cli(["--tokenizer", model, "--decode"], "".join(json.dumps(ids) + "\n" for ids in id_lists).encode())
    got = [json.loads(l) for l in split_lines(out)]
    assert len(got) == len(id_lists)
    return got


def assert_same_encodings(model, sp, lines, what):
    got = encode_with_cli(model, lines)
    for i, (line, ours) in enumerate(zip(lines, got)):
        expected = sp.encode(line)
        assert ours == expected, (f"{what}: first mismatch at line {i + 1} of {len(lines)}: {line!r}\n"
                                  f"  flashback:     {ours}\n  sentencepiece: {expected}")
    return len(lines)


HARD_TEXTS = [
    "", " ", "  ", "   leading", "trailing   ", "  both  ends  ", "many     inner    spaces", "\t", "a\tb\t\tc",
    "carriage\r", "\r", "\r\rmid\rdle", "日本語のテキストです。", "中文测试，标点符号！", "한국어 문장",
    "e\u0301 a\u0300\u0323 combining marks", "👍🏽 emoji 🇫🇷 flags 🧑‍🚀 zwj", "\U0001F600" * 5, "ꙮ ᚠᛇᚻ 𐍈 𝔘𝔫𝔦",
    "<s>", "</s>", "<unk>", "<s>Hello</s>", "<0x41>", "▁", "▁▁ ▁", "a▁", "hi ▁", "\u3000ideographic space\u3000",
    "\u00a0no-break\u00a0", "\u2028line separator", "x" * 400, "ab" * 150 + " " * 40 + "cd", "\ufffd", "nul\x00byte",
    "\x7f\x01\x1b[0m", "Ünïcödé façade naïve", "Привет, мир", "مرحبا بالعالم", "שָׁלוֹם", "ສະບາຍດີ", "12345678901234567890",
    "3.14159 2,718 1e-9", " = Robert Boulter = ", " @-@ ", "\U0010FFFF\ud7ff\ue000", "Hello world",
]
RAW_HARD = [  # malformed UTF-8: sentencepiece turns each bad byte into U+FFFD
    b"\xff", b"a\xffb", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80",
    b"\xe0\x80\x80", b"\xf0\x9f\x98", b"\x80\x80\x80", b" \xfe \xff ", b"\xef\xbf\xbd\xff", b"\xf8\x88\x80\x80\x80",
]


def hard_lines():
    return [t.encode("utf-8", "surrogatepass") for t in HARD_TEXTS] + RAW_HARD


def sample_lines(step=25):
    return split_lines(WIKI.read_bytes())[::step] + split_lines(STORIES.read_bytes())[::step]


@pytest.fixture(scope="module")
def processors():
    return {m: spm.SentencePieceProcessor(model_file=str(m)) for m in (TOK512, LLAMA)}


# ---- the shipped tokenizers over whole corpora


@pytest.mark.parametrize("model", [TOK512, LLAMA], ids=["tok512", "llama2"])
@pytest.mark.parametrize("corpus", [WIKI, STORIES], ids=["wikitext103-test", "tinystories"])
def test_every_line_of_corpus(model, corpus, processors):
    lines = split_lines(corpus.read_bytes())
    assert len(lines) > 4000
    n = assert_same_encodings(model, processors[model], lines, f"{model.name} on {corpus.name}")
    print(f"{model.name} {corpus.name}: {n} lines, 0 mismatches")


@pytest.mark.parametrize("model", [TOK512, LLAMA], ids=["tok512", "llama2"])
def test_hard_cases(model, processors):
    assert_same_encodings(model, processors[model], hard_lines(), f"{model.name} hard cases")


@pytest.mark.parametrize("model", [TOK512, LLAMA], ids=["tok512", "llama2"])
def test_decode(model, processors):
    sp = processors[model]
    lines = sample_lines() + hard_lines()
    id_lists = [sp.encode(l) for l in lines]
    rng = random.Random(1)
    space = sp.piece_to_id("▁")
    byte0 = sp.piece_to_id("<0x00>")
    id_lists += [
        [space, space, 300], [1, space, 300], [space, 1, space, 300], [byte0 + 0x20, space, 300], [0, 0, 300],
        [byte0 + 0xE6, byte0 + 0x97, byte0 + 0xA5, byte0 + 0xE6], [byte0 + 0xF0, 2, byte0 + 0x80], [2, 1], [],
    ]
    id_lists += [[rng.randrange(sp.vocab_size()) for _ in range(rng.randrange(1, 30))] for _ in range(200)]
    id_lists += [[rng.randrange(300) for _ in range(rng.randrange(1, 30))] for _ in range(200)]  # byte-heavy
    got = decode_with_cli(model, id_lists)
    for ids, ours in zip(id_lists, got):
        assert ours == sp.decode(ids), f"decode({ids})"


# ---- models written by flashback


@pytest.mark.parametrize("source,reference", [(TOK512_BIN, TOK512), (LLAMA_BIN, LLAMA)], ids=["tok512", "llama2"])
def test_written_model_loads_in_sentencepiece(source, reference, tmp_path, processors):
    out = tmp_path / "written.model"
    run_cli(["--tokenizer", source, "--write-model", out], b"")
    sp = spm.SentencePieceProcessor(model_file=str(out))
    ref = processors[reference]
    assert sp.vocab_size() == ref.vocab_size()
    assert [sp.id_to_piece(i) for i in range(sp.vocab_size())] == [ref.id_to_piece(i) for i in range(ref.vocab_size())]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (ref.unk_id(), ref.bos_id(), ref.eos_id(), ref.pad_id())
    lines = sample_lines(step=5) + hard_lines()
    # The .bin, the written .model (in flashback) and sentencepiece all agree.
    assert_same_encodings(source, sp, lines, f"{source.name} vs its written model in sentencepiece")
    assert_same_encodings(out, sp, lines, f"written {source.name} model")


# ---- synthetic variants of tok512.model


def _varint(data, pos):
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(data):
    """Top-level (field, wire, raw value bytes) of a protobuf message."""
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, data[start:pos]


def _enc_varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _len_field(field, payload):
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


def _piece(text, score, kind):
    return _len_field(1, _len_field(1, text.encode()) + _enc_varint(2 << 3 | 5) + struct.pack("<f", score)
                      + _enc_varint(3 << 3) + _enc_varint(kind))


def _read_pieces(model_bytes):
    pieces, rest = [], b""
    for field, _, raw in _fields(model_bytes):
        if field != 1:
            rest += raw
            continue
        _, pos = _varint(raw, 0)
        _, pos = _varint(raw, pos)
        text, score, kind = "", 0.0, 1
        for f, _, r in _fields(raw[pos:]):
            if f == 1:
                n, p = _varint(r, 1)
                text = r[p:p + n].decode()
            elif f == 2:
                score = struct.unpack("<f", r[1:5])[0]
            elif f == 3:
                kind = _varint(r, 1)[0]
        pieces.append([text, score, kind])
    return pieces, rest


NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _variant(name):
    """(pieces, extra trainer_spec bytes, extra normalizer_spec bytes) of a tok512 variant."""
    pieces, _ = _read_pieces(TOK512.read_bytes())
    trainer, normalizer = b"", b""
    if name == "no_byte_fallback":
        pieces = [p for p in pieces if p[2] != BYTE]
        trainer = _enc_varint(35 << 3) + _enc_varint(0) + _len_field(44, "[UNK]".encode())
    elif name == "unused":
        for i, p in enumerate(pieces):
            if p[2] == NORMAL and len(p[0]) > 1 and i % 3 == 0:
                p[2] = UNUSED
    elif name == "user_defined":
        for p in pieces:
            if p[0] in ("▁the", "ing", "ed"):
                p[2] = USER_DEFINED
        pieces += [["<mark>", 0.0, USER_DEFINED], ["<mark>long", 0.0, USER_DEFINED], ["a b", 0.0, USER_DEFINED],
                   ["\t\t", 0.0, USER_DEFINED], ["☃", 0.0, USER_DEFINED], ["<ctl>", 0.0, CONTROL]]
    elif name == "tied_scores":
        for p in pieces:
            p[1] = 0.0
    elif name == "no_dummy_prefix_keep_spaces":
        normalizer = _enc_varint(3 << 3) + _enc_varint(0) + _enc_varint(4 << 3) + _enc_varint(0)
    elif name == "no_escape":
        normalizer = _enc_varint(5 << 3) + _enc_varint(0)
    return pieces, trainer, normalizer


VARIANTS = ["no_byte_fallback", "unused", "user_defined", "tied_scores", "no_dummy_prefix_keep_spaces", "no_escape"]


@pytest.mark.parametrize("name", VARIANTS)
def test_synthetic_variant(name, tmp_path):
    pieces, trainer, normalizer = _variant(name)
    _, rest = _read_pieces(TOK512.read_bytes())
    # Repeated sub-messages merge in protobuf: the overrides follow the originals.
    data = b"".join(_piece(*p) for p in pieces) + rest
    if trainer:
        data += _len_field(2, trainer)
    if normalizer:
        data += _len_field(3, normalizer)
    path = tmp_path / f"{name}.model"
    path.write_bytes(data)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    extra = [b"ab<mark>long<mark>ing the a b c\t\t\t\xe2\x98\x83\xe2\x98\x83 <ctl> \xe2\x96\x81the", b"things happened  ed"]
    lines = sample_lines(step=10) + hard_lines() + extra
    assert_same_encodings(path, sp, lines, f"variant {name}")
    # The variant must matter: some lines tokenize differently from tok512.
    base = spm.SentencePieceProcessor(model_file=str(TOK512))
    changed = sum(sp.encode(l, out_type=str) != base.encode(l, out_type=str) for l in lines)
    assert changed > 0, f"variant {name} tokenizes like tok512"
    if name in ("unused", "tied_scores"):
        return  # same pieces and flags as tok512: nothing new for decode
    id_lists = [sp.encode(l) for l in lines]
    rng = random.Random(5)
    id_lists += [[rng.randrange(sp.vocab_size()) for _ in range(rng.randrange(1, 20))] for _ in range(100)]
    for ids, ours in zip(id_lists, decode_with_cli(path, id_lists)):
        assert ours == sp.decode(ids), f"variant {name}: decode({ids})"


# ---- the CLI's line contract and errors


def test_line_contract():
    sp = spm.SentencePieceProcessor(model_file=str(TOK512))
    compact = lambda ids: (json.dumps(ids).replace(" ", "") + "\n").encode()  # noqa: E731
    assert run_cli(["--tokenizer", TOK512], b"") == b""
    # The last line counts without '\n'; '\r' stays part of the line; empty lines are [].
    out = run_cli(["--tokenizer", TOK512], b"Once upon a time\nhi\r\n\nlast")
    assert out == b"[403,407,261,378]\n" + compact(sp.encode("hi\r")) + b"[]\n" + compact(sp.encode("last"))
    out = run_cli(["--tokenizer", TOK512, "--bos"], b"Once upon a time\n\n")
    assert out == b"[1,403,407,261,378]\n[1]\n"
    assert run_cli(["--tokenizer", TOK512, "--decode"], b"[403,407,261,378]\n[]\n") == b'"Once upon a time"\n""\n'


def test_errors_are_one_clear_line(tmp_path):
    cli = str(_find_cli())
    bad = subprocess.run([cli, "tokenize", "--tokenizer", str(TOK512), "--decode"], input=b"[1, 99999]\n",
                         capture_output=True)
    assert bad.returncode == 1 and b"99999" in bad.stderr and bad.stdout == b""
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x0a\xff\xff\xff\x0f garbage")
    bad = subprocess.run([cli, "tokenize", "--tokenizer", str(junk)], input=b"x\n", capture_output=True)
    assert bad.returncode == 1 and str(junk).encode() in bad.stderr
