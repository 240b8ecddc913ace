"""Atomic writes, through the C++ core's one implementation (io/ in the library): what flashback writes
(indexes, adapters, checkpoints, fine-tuning state) is either the old version or the new one on disk,
never half of one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Union

from . import _C

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_directory(target: PathLike, marker: str, kind: str = "a flashback directory") -> Iterator[Path]:
    """with atomic_directory(out, "trainer_state.pt") as tmp: write the files under tmp.

    The directory replaces `target` as a whole when the block ends (files fsync'd, one rename); on an
    exception nothing is replaced. An existing `target` is replaced only if it is empty or holds
    `marker`, the file every directory of its kind has (`kind` names it in the error)."""
    stage = _C.StagedDirectory(str(target), marker, kind)
    try:
        yield Path(stage.path)
    except BaseException:
        stage.discard()
        raise
    stage.commit()


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file, fsync and rename."""
    _C.write_file_atomic(str(path), data)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
