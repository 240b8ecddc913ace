"""Paths shared by the Python tests: the built CLI and the ../shared folder."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FLASHBACK_SHARED") or REPO.parent / "shared")
# The default real model, where scripts/fetch_model.sh puts it.
MODELS = Path(os.environ.get("FLASHBACK_MODELS") or Path(os.environ.get("FLASHBACK_CACHE") or
                                                          Path.home() / ".cache/flashback") / "models")
STORIES = SHARED / "models/stories260K"
SMOL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_cli() -> Path:
    """The `flashback` binary: $FLASHBACK_CLI, else build/flashback."""
    env = os.environ.get("FLASHBACK_CLI")
    if env:
        return Path(env)
    candidate = REPO / "build/flashback"
    if candidate.exists():
        return candidate
    pytest.fail("set FLASHBACK_CLI to the built flashback binary", pytrace=False)


def run(*args, check=True, stdin=None, timeout=300, env=None):
    """Runs `flashback ARGS...` (env: variables to set on top of ours); with check, asserts exit status 0."""
    import subprocess

    proc = subprocess.run([str(find_cli()), *map(str, args)], capture_output=True, text=True, input=stdin,
                          timeout=timeout, env={**os.environ, **env} if env else None)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def fails(*args, contains=(), env=None):
    """Runs a command that must fail: exit status 1 and exactly one line
    "flashback: error: ..." on stderr that contains every string in `contains`."""
    proc = run(*args, check=False, env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashback: error: "), proc.stderr
    for c in contains:
        assert c in lines[0], lines[0]
    return lines[0]


def tinystories_data(d: Path) -> Path:
    """scripts/prepare_tinystories.py's split in `d` and a BM25 index of its corpus (`d`/index), measured
    with stories260K's tokenizer. Returns `d`."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(REPO / "scripts/prepare_tinystories.py"), str(SHARED), str(d)], check=True)
    run("index", "--corpus", d / "tinystories_corpus.txt", "--format", "paragraphs", "--tokenizer",
        STORIES / "tok512.model", "--out", d / "index")
    return d
