"""The `flashback index` / `flashback retrieve` contract: indexes built from
small corpora, `retrieve --json` results, forbidden titles, atomic rebuilds,
and one clear error line with exit status 1 for bad input."""

import json

import pytest

from fbtest import SHARED, fails, run

STORIES = SHARED / "models/stories260K"
TOK512 = STORIES / "tok512.model"
LLAMA_TOK = SHARED / "models/llama2-tokenizer/tokenizer.model"

ARTICLES = [
    ("Apple orchard", "Apple trees grow in orchards. Farmers pick apples in autumn and press them into cider."),
    ("Harbour @-@ master", "The harbour master watches boats sail in and out of the port at dawn."),
    ("Clock tower", "The old clock tower chimes every hour; its bells were cast in 1850."),
    ("Volcano", "A volcano erupts when molten rock, ash and gases escape from a magma chamber."),
]


def retrieve_json(index, query, *extra):
    return json.loads(run("retrieve", "--index", index, "--query", query, "--json", *extra).stdout)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"title": t, "text": x}) + "\n" for t, x in ARTICLES))
    return path


def test_index_and_retrieve_bm25(tmp_path, corpus):
    out = tmp_path / "idx"
    proc = run("index", "--corpus", corpus, "--format", "jsonl", "--tokenizer", LLAMA_TOK, "--out", out)
    assert proc.stdout.startswith("indexed 4 passages"), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "bm25" and meta["passages"] == 4 and meta["max_tokens"] == 128

    got = retrieve_json(out, "when do the bells of the clock tower chime?")
    assert got[0]["title"] == "Clock tower"
    assert got[0]["text"] == ARTICLES[2][1]
    assert all(set(g) == {"id", "title", "text", "score", "document"} for g in got)  # as Python's retrieve()
    assert got[0]["document"] == "Clock tower\n" + got[0]["text"]
    scores = [g["score"] for g in got]
    assert scores == sorted(scores, reverse=True)

    assert len(retrieve_json(out, "the apple boats clock volcano", "-k", "2")) == 2
    assert retrieve_json(out, "the and of") == []  # stopwords only: nothing matches

    readable = run("retrieve", "--index", out, "--query", "magma").stdout
    assert readable.startswith("1. Volcano")


def test_forbidden_titles_in_either_spelling(tmp_path, corpus):
    out = tmp_path / "idx"
    run("index", "--corpus", corpus, "--format", "jsonl", "--tokenizer", TOK512, "--out", out, "--max-tokens", "32")
    forbidden = tmp_path / "forbidden.txt"
    forbidden.write_text("Harbour-master\n\nvolcano\n")
    got = retrieve_json(out, "harbour boats magma volcano apple", "-k", "10", "--forbidden-titles", forbidden)
    titles = {g["title"] for g in got}
    assert titles and not titles & {"Harbour @-@ master", "Volcano"}
    fails("retrieve", "--index", out, "--query", "x", "--forbidden-titles", tmp_path / "nope.txt",
          contains=["nope.txt"])


def test_wikitext_and_paragraph_corpora(tmp_path):
    wiki = tmp_path / "w.raw"
    wiki.write_text(" \n = Alpha = \n \n Alpha is a letter . \n \n = = Use = = \n \n It starts words . \n"
                    " \n = Beta = \n \n Beta follows alpha in the Greek alphabet . \n")
    run("index", "--corpus", wiki, "--format", "wikitext", "--tokenizer", LLAMA_TOK, "--out", tmp_path / "w")
    got = retrieve_json(tmp_path / "w", "Greek alphabet", "-k", "1")
    text = "Beta follows alpha in the Greek alphabet ."
    assert got == [{"id": 1, "title": "Beta", "text": text, "score": got[0]["score"], "document": "Beta\n" + text}]
    assert "Use" not in retrieve_json(tmp_path / "w", "letter")[0]["text"]

    paras = tmp_path / "p.txt"
    paras.write_text("The cat sat on the mat.\n\nThe dog ran in the park.\n")
    run("index", "--corpus", paras, "--format", "paragraphs", "--tokenizer", TOK512, "--out", tmp_path / "p")
    got = retrieve_json(tmp_path / "p", "dog park")
    assert got[0] == {"id": 1, "title": "", "text": "The dog ran in the park.", "score": got[0]["score"],
                      "document": "The dog ran in the park."}  # untitled: the text alone


def test_dense_index_uses_the_recorded_model(tmp_path):
    stories = (SHARED / "data/tinystories/tinystories_val_prefix.txt").read_text().split("\n\n")[:40]
    corpus = tmp_path / "stories.txt"
    corpus.write_text("\n\n".join(stories))
    out = tmp_path / "dense"
    run("index", "--corpus", corpus, "--format", "paragraphs", "--kind", "dense", "--model", STORIES / "stories260K.bin",
        "--out", out, "--max-tokens", "256")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "dense" and meta["encoder"].endswith("stories260K.bin") and meta["dim"] == 64

    # Without --model the encoder recorded in meta.json is used.
    got = retrieve_json(out, stories[5], "-k", "3")
    assert len(got) == 3
    assert got[0]["text"] == stories[5]
    assert retrieve_json(out, stories[5], "-k", "3", "--model", STORIES / "stories260K.gguf")[0]["text"] == stories[5]

    fails("index", "--corpus", corpus, "--format", "paragraphs", "--kind", "dense", "--tokenizer", TOK512,
          "--out", tmp_path / "d2", contains=["--model"])
    meta["encoder"] = "some-remote-encoder"
    (out / "meta.json").write_text(json.dumps(meta))
    fails("retrieve", "--index", out, "--query", "cat", contains=["needs an encoder model", "some-remote-encoder"])


def test_failed_rebuild_keeps_the_old_index(tmp_path, corpus):
    out = tmp_path / "idx"
    run("index", "--corpus", corpus, "--format", "jsonl", "--tokenizer", LLAMA_TOK, "--out", out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"title": "x", "text": "fine"}) + "\n{broken\n")
    fails("index", "--corpus", bad, "--format", "jsonl", "--tokenizer", LLAMA_TOK, "--out", out,
          contains=[f"{bad}:2:"])
    assert retrieve_json(out, "magma", "-k", "1")[0]["title"] == "Volcano"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "corpus.jsonl", "idx"]

    # A directory that is not an index is never replaced.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    fails("index", "--corpus", corpus, "--format", "jsonl", "--tokenizer", LLAMA_TOK, "--out", precious,
          contains=["not an index"])
    assert (precious / "notes.txt").read_text() == "keep"


def test_error_exits(tmp_path, corpus):
    idx = tmp_path / "idx"
    run("index", "--corpus", corpus, "--format", "jsonl", "--tokenizer", TOK512, "--out", idx)
    missing = tmp_path / "missing.txt"
    fails("index", "--corpus", missing, "--format", "paragraphs", "--tokenizer", TOK512, "--out", tmp_path / "o",
          contains=[str(missing)])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    fails("index", "--corpus", empty, "--format", "paragraphs", "--tokenizer", TOK512, "--out", tmp_path / "o",
          contains=[str(empty), "empty corpus"])
    fails("index", "--corpus", corpus, "--format", "xml", "--tokenizer", TOK512, "--out", tmp_path / "o",
          contains=["xml"])
    fails("index", "--corpus", corpus, "--format", "jsonl", "--out", tmp_path / "o", contains=["--tokenizer"])
    fails("index", "--corpus", corpus, "--format", "jsonl", "--tokenizer", TOK512, "--out", tmp_path / "o",
          "--kind", "faiss", contains=["faiss"])
    assert not (tmp_path / "o").exists()

    fails("retrieve", "--index", tmp_path / "nowhere", "--query", "x", contains=[str(tmp_path / "nowhere")])
    (tmp_path / "emptydir").mkdir()
    fails("retrieve", "--index", tmp_path / "emptydir", "--query", "x", contains=["meta.json"])
    fails("retrieve", "--index", idx, "--query", "apple", "-k", "0", contains=["k must be positive"])
    (idx / "meta.json").write_text("{oops")
    fails("retrieve", "--index", idx, "--query", "apple", contains=[str(idx), "corrupt"])
