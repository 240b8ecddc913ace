"""Crash safety proven with real kills (docs/reliability.md): every writer flashback has (a BM25 index
build, an adapter save, `convert`, a fine-tuning checkpoint) runs in a child process that is SIGKILLed
at each step of its atomic write (FLASHBACK_CRASH_AT, src/io/write_hooks.hpp; the move-aside path of
filesystems without RENAME_EXCHANGE too) and at random moments. After every kill the target must be the
complete old version or the complete new one and load; the next write must succeed and leave no
temporary behind. A full disk (RLIMIT_FSIZE) must end in one clear error with the old version intact.

FLASHBACK_KILL_REPORT=path writes the counts (kills per writer, states found) as JSON."""

import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbtest import STORIES, SHARED, find_cli

# The steps of an atomic write (src/io/atomic_file.cpp, atomic_dir.cpp), in order. A file step can be
# reached several times in one write (each file written inside a staging directory): up to 3 are tried.
FILE_POINTS = ["file.created", "file.written", "file.synced", "file.renamed"]
DIR_POINTS = ["dir.staged", "dir.synced", "dir.exchanged", "dir.committed"]
RANDOM_KILLS = 12

REPORT = {}


def sha_tree(d: Path, skip=()) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name not in skip:
            h.update(str(p.relative_to(d)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def litter(target: Path):
    return sorted(p.name for p in target.parent.iterdir()
                  if p.name.startswith(target.name + ".tmp") or p.name.startswith(target.name + ".old-"))


# ---- the writers: argv for version "A" or "B" into `target`, and what a finished target is.
CORPUS = SHARED / "data/tinystories/tinystories_val_prefix.txt"


def corpus_slice(tmp: Path, version: str) -> Path:
    p = tmp / f"corpus-{version}.txt"
    if not p.exists():
        paras = CORPUS.read_text().split("\n\n")
        p.write_text("\n\n".join(paras[:300] if version == "A" else paras[300:700]))
    return p


def index_argv(tmp, version, target):
    return [str(find_cli()), "index", "--corpus", str(corpus_slice(tmp, version)), "--format", "paragraphs",
            "--tokenizer", str(STORIES / "tok512.model"), "--out", str(target), "--quiet"]


def index_state(target: Path, refs):
    meta = json.loads((target / "meta.json").read_text())
    version = next(v for v, r in refs.items() if r == meta["passages"])
    out = subprocess.run([str(find_cli()), "retrieve", "--index", str(target), "--query", "Lily and the dog", "-k", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return version


def index_ref(target: Path):
    return json.loads((target / "meta.json").read_text())["passages"]


ADAPTER_CHILD = """
import sys, torch, flashback
m = flashback.LlamaForCausalLM.from_pretrained(sys.argv[1])
torch.manual_seed(int(sys.argv[2]))
m.add_adapter(flashback.LoraConfig(r=int(sys.argv[3])))
m.save_adapter(sys.argv[4])
"""


def adapter_argv(tmp, version, target):
    seed, r = ("1", "8") if version == "A" else ("2", "16")
    return [sys.executable, "-c", ADAPTER_CHILD, str(STORIES / "stories260K.bin"), seed, r, str(target)]


def adapter_ref(target: Path):
    return sha_tree(target)


def adapter_state(target: Path, refs):
    import flashback

    version = next(v for v, r in refs.items() if r == sha_tree(target))
    m = flashback.LlamaForCausalLM.from_pretrained(STORIES / "stories260K.bin")
    m.load_adapter(target)
    return version


def convert_argv(tmp, version, target):
    model = STORIES / "stories260K.bin" if version == "A" else SHARED / "models/hf-fixtures/tiny-llama-gqa"
    # both have stories260K's 512-token vocabulary
    return [str(find_cli()), "convert", "--model", str(model), "--out", str(target), "--tokenizer",
            str(STORIES / "tok512.model")]


def convert_ref(target: Path):
    return sha_tree(target)


def convert_state(target: Path, refs):
    version = next(v for v, r in refs.items() if r == sha_tree(target))
    out = subprocess.run([str(find_cli()), "info", "--model", str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return version


FINETUNE_CHILD = """
import sys, torch, flashback
from flashback.io import atomic_directory
m = flashback.LlamaForCausalLM.from_pretrained(sys.argv[1])
torch.manual_seed(int(sys.argv[2]))
m.add_adapter(flashback.LoraConfig(r=4))
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
for p in m.parameters():
    if p.requires_grad:
        p.grad = torch.ones_like(p)
opt.step()
# the checkpoint as flashback.finetune writes it: adapter + trainer state in one atomic directory
with atomic_directory(sys.argv[3], marker="trainer_state.pt", kind="a fine-tuning checkpoint") as tmp:
    m.save_adapter(tmp / "adapter")
    torch.save({"step": int(sys.argv[2]), "optimizer": opt.state_dict()}, tmp / "trainer_state.pt")
"""


def checkpoint_argv(tmp, version, target):
    return [sys.executable, "-c", FINETUNE_CHILD, str(STORIES / "stories260K.bin"), "1" if version == "A" else "2",
            str(target)]


def checkpoint_ref(target: Path):
    import torch

    return torch.load(target / "trainer_state.pt")["step"], sha_tree(target / "adapter")


def checkpoint_state(target: Path, refs):
    import flashback
    import torch

    state = torch.load(target / "trainer_state.pt")
    version = next(v for v, r in refs.items() if r == (state["step"], sha_tree(target / "adapter")))
    m = flashback.LlamaForCausalLM.from_pretrained(STORIES / "stories260K.bin")
    m.load_adapter(target / "adapter", trainable=True)
    torch.optim.AdamW([p for p in m.parameters() if p.requires_grad]).load_state_dict(state["optimizer"])
    return version


WRITERS = {
    "index": (index_argv, index_ref, index_state),
    "adapter": (adapter_argv, adapter_ref, adapter_state),
    "convert": (convert_argv, convert_ref, convert_state),
    "checkpoint": (checkpoint_argv, checkpoint_ref, checkpoint_state),
}


def child_env(**extra):
    env = {**os.environ, "FLASHBACK_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("FLASHBACK_CRASH_AT", None)
    env.pop("FLASHBACK_IO_NO_EXCHANGE", None)
    env.update(extra)
    return env


def write(argv, **env):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=child_env(**env))


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("FLASHBACK_KILL_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=1) + "\n")


@pytest.mark.parametrize("name", list(WRITERS))
def test_kills_leave_the_old_or_the_new_version(name, tmp_path):
    argv_of, ref_of, state_of = WRITERS[name]
    refs = {}
    for v in ("A", "B"):
        d = tmp_path / f"ref-{v}"
        done = write(argv_of(tmp_path, v, d))
        assert done.returncode == 0, done.stderr
        refs[v] = ref_of(d)
    assert refs["A"] != refs["B"]
    target = tmp_path / "out" / "target"
    target.parent.mkdir()
    started = time.monotonic()
    assert write(argv_of(tmp_path, "A", target)).returncode == 0
    duration = time.monotonic() - started
    current = "A"
    counts = {"kills": 0, "old": 0, "new": 0, "steps": {}}

    def after_kill(step, proc, new):
        nonlocal current
        state = state_of(target, refs)
        assert state in (current, new), (step, state)
        counts["kills"] += 1
        counts["old" if state == current else "new"] += 1
        counts["steps"][step] = "old" if state == current else "new"
        current = state

    other = lambda: "B" if current == "A" else "A"  # noqa: E731
    # Every step of the write, the file steps up to their third time in one write.
    for point in DIR_POINTS + [f"{p}:{n}" for p in FILE_POINTS for n in (1, 2, 3)]:
        new = other()
        proc = write(argv_of(tmp_path, new, target), FLASHBACK_CRASH_AT=point)
        if proc.returncode == 0:  # the write never reaches this step (a file step's third time)
            assert state_of(target, refs) == new
            current = new
            continue
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)
        after_kill(point, proc, new)
    # Between the two renames of a filesystem without RENAME_EXCHANGE: the target is briefly absent; the
    # next write of it puts the old one back before anything else.
    new = other()
    proc = write(argv_of(tmp_path, new, target), FLASHBACK_CRASH_AT="dir.moved_aside", FLASHBACK_IO_NO_EXCHANGE="1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists() and any(n.startswith("target.old-") for n in litter(target))
    proc = write(argv_of(tmp_path, new, target), FLASHBACK_CRASH_AT="dir.staged")
    assert proc.returncode == -signal.SIGKILL
    after_kill("dir.moved_aside (restored by the next write)", proc, new)
    # The other path of that filesystem, to its end.
    new = other()
    assert write(argv_of(tmp_path, new, target), FLASHBACK_IO_NO_EXCHANGE="1").returncode == 0
    assert state_of(target, refs) == new
    current = new
    # Kills at random moments of the whole process (start-up included).
    rng = random.Random(14)
    for i in range(RANDOM_KILLS):
        new = other()
        child = subprocess.Popen(argv_of(tmp_path, new, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=child_env())
        time.sleep(rng.uniform(0.0, duration * 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait()
        after_kill(f"random {i}", child, new)
    # The next write succeeds and leaves nothing behind.
    new = other()
    proc = write(argv_of(tmp_path, new, target))
    assert proc.returncode == 0, proc.stderr
    assert state_of(target, refs) == new
    assert litter(target) == [], litter(target)
    REPORT[name] = counts
    assert counts["old"] > 0 and counts["new"] > 0  # both outcomes were reached


def limited_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing
    return apply


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_full_disk_is_one_clear_error_and_the_old_version_stays(name, tmp_path):
    argv_of, ref_of, state_of = WRITERS[name]
    target = tmp_path / "target"
    assert write(argv_of(tmp_path, "A", target)).returncode == 0
    refs = {"A": ref_of(target)}
    proc = subprocess.run(argv_of(tmp_path, "B", target), capture_output=True, text=True, timeout=300,
                          env=child_env(), preexec_fn=limited_file_size(16 * 1024))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert "File too large" in last and str(target) in last, proc.stderr
    if argv_of(tmp_path, "B", target)[0] == str(find_cli()):
        assert len(proc.stderr.strip().splitlines()) == 1 and last.startswith("flashback: error: "), proc.stderr
    assert state_of(target, refs) == "A"
    assert litter(target) == [], litter(target)
