"""Paths shared by the Python tests: the built CLI and the ../shared folder."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FLASHBACK_SHARED") or REPO.parent / "shared")


def find_cli() -> Path:
    """The `flashback` binary: $FLASHBACK_CLI, else build/flashback."""
    env = os.environ.get("FLASHBACK_CLI")
    if env:
        return Path(env)
    candidate = REPO / "build/flashback"
    if candidate.exists():
        return candidate
    pytest.fail("set FLASHBACK_CLI to the built flashback binary", pytrace=False)
