"""Python threads on one model: flashback.generate and flashback.evaluate release the GIL for the whole
C++ loop, so several threads run at once, and each gives exactly what the same call gives alone (tokens,
NLL sums, the retrievals), with the adapter unmerged and merged, all sharing ONE BM25 retriever.
(tests/test_concurrency.cpp holds the C++ loops to the same, under ThreadSanitizer too.)"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import flashback
from flashback import LlamaForCausalLM, LoraConfig

from fbtest import SHARED

STORIES = SHARED / "models/stories260K/stories260K.bin"
THREADS = 6
PROMPTS = ["Once upon a time, a little dog", "Lily and Tom went to the park", "The big red ball rolled",
           "One day, a small bird", "Sue had a box of toys", "The cat sat in the sun and"]
OPTIONS = dict(stride=8, query_tokens=16, doc_tokens=24, max_length=200)


def paragraphs(n):
    text = (SHARED / "data/tinystories/tinystories_val_prefix.txt").read_text()
    return [p for p in text.split("\n\n") if p.strip()][:n]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """stories260K with the marks and a LoRA adapter moved off zero (eval mode, as from_pretrained returns
    it), one BM25 retriever over 300 TinyStories paragraphs, and six texts outside the index to score."""
    m = LlamaForCausalLM.from_pretrained(STORIES, marks="add")
    m.add_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=flashback.modeling.LORA_TARGETS))
    g = torch.Generator().manual_seed(14)
    with torch.no_grad():
        for _, p in m.adapter_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)  # small: the stories stay stories
    assert not m.training
    d = tmp_path_factory.mktemp("threads")
    paras = paragraphs(300 + THREADS)
    (d / "corpus.txt").write_text("\n\n".join(paras[:300]) + "\n")
    flashback.build_bm25_index(d / "corpus.txt", d / "index", m.tokenizer, "paragraphs", 64)
    texts = [m.encode(t)[:120] for t in paras[300:]]
    return m, flashback.open_index(d / "index"), texts


def job(m, ret, texts, i):
    """Thread i's work: append or prepend, documents before or after the input, k = 1 or 2; greedy
    generation of 32 tokens, then the NLL of its text."""
    o = dict(OPTIONS, mode="prepend" if i % 2 else "append", doc_positions="after" if (i // 2) % 2 else "before",
             k=1 + i // 4)
    ids, gstats = flashback.generate(m, ret, PROMPTS[i], 32, stop_at_eos=False, **o)
    ev = flashback.evaluate(m, ret, texts[i], **o)
    counts = ("retrievals", "tokens_reencoded", "tokens_decoded", "forwards", "window_slides")
    return {"ids": ids, "retrieved": gstats["retrieved"], "nll_sum": ev["nll_sum"], "tokens": ev["tokens"],
            "counts": [{k: s[k] for k in counts} for s in (gstats, ev["stats"])]}


@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_threads_on_one_model_equal_sequential_calls(setup, merged):
    m, ret, texts = setup
    if merged:
        m.merge_adapter()  # between runs, never during one
    try:
        sequential = [job(m, ret, texts, i) for i in range(THREADS)]
        start = threading.Barrier(THREADS)

        def together(i):
            start.wait()
            return job(m, ret, texts, i)

        with ThreadPoolExecutor(THREADS) as pool:
            concurrent = list(pool.map(together, range(THREADS)))
    finally:
        if merged:
            m.unmerge_adapter()
    for i, (a, b) in enumerate(zip(sequential, concurrent)):
        assert b == a, i  # exactly: ids, NLL sums (floats compared with ==), retrievals, counts
        # The shared retriever was asked at each of the 4 strides and answered with k passages.
        answered = [r for r in a["retrieved"] if r["titles"]]
        assert len(a["ids"]) == 32 and len(a["retrieved"]) == 4, i
        assert len(answered) == a["counts"][0]["retrievals"] >= 3, i
        assert all(len(r["titles"]) == 1 + i // 4 for r in answered), i


def longest_pause(call):
    """Runs call() in a thread while this one keeps running Python: (the call's seconds, this thread's
    longest pause between two steps meanwhile). A call that holds the GIL pauses it for all of its time."""
    span, go = {}, threading.Event()

    def work():
        go.wait()  # until this thread is timing
        t0 = time.perf_counter()
        call()
        span["call"] = time.perf_counter() - t0

    worker = threading.Thread(target=work)
    worker.start()
    last, longest = time.perf_counter(), 0.0
    go.set()
    while worker.is_alive():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    worker.join()
    return span["call"], longest


def test_the_gil_is_released_for_the_whole_loop(setup):
    """While one thread is inside the C++ evaluation loop, another keeps running Python: its longest pause
    stays far below the loop's duration. The probe itself is checked on a C call that keeps the GIL."""
    m, ret, texts = setup
    text = sum(texts, [])  # ~700 tokens: seconds in prepend mode, which re-encodes at every block
    held, held_pause = longest_pause(lambda: sum(range(20_000_000)))  # one C call: no switch inside
    call, pause = longest_pause(lambda: flashback.evaluate(m, ret, text, mode="prepend", **OPTIONS))
    print(f"GIL held: {held:.3f} s, longest pause {held_pause:.3f} s; "
          f"evaluate: {call:.3f} s, longest pause {pause * 1e3:.1f} ms")
    assert held_pause > held / 2  # the probe sees a held GIL
    assert call > 0.2, "the call is too short to tell"
    assert pause < call / 4
