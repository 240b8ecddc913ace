"""The `flashback` console script: runs the C++ command-line tool installed
inside the package (generate, tokenize, info, convert, index, retrieve, ralm, eval)."""

import os
import sys
from pathlib import Path


def binary() -> Path:
    return Path(__file__).resolve().parent / "bin" / "flashback"


def main() -> None:
    exe = binary()
    if not exe.exists():
        sys.exit(f"flashback: the CLI binary is missing at {exe} (reinstall the package)")
    os.execv(str(exe), [str(exe), *sys.argv[1:]])


if __name__ == "__main__":
    main()
