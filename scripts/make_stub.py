#!/usr/bin/env python3
"""Regenerates python/flashback/_C.pyi (the type stub of the extension, which makes py.typed true) from
the installed module with pybind11-stubgen, naming torch.Tensor where the binding signatures carry
LibTorch's C++ name. tests/python/test_package.py checks that the stub and the module list the same names.

usage: .venv/bin/pip install pybind11-stubgen && .venv/bin/python scripts/make_stub.py"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "pybind11_stubgen", "flashback._C", "-o", out, "--ignore-all-errors"],
                       check=True, capture_output=True)
        text = (Path(out) / "flashback/_C.pyi").read_text()
    # Tensors: pybind11-stubgen cannot parse "at::Tensor" and writes "...".
    text = text.replace("tuple[str, ...]", "tuple[str, torch.Tensor]")
    text = re.sub(r"(: |-> )\.\.\.(?=[,)| :])", r"\1torch.Tensor", text)
    text = text.replace("import typing\n", "import typing\n\nimport torch\n", 1)
    (ROOT / "python/flashback/_C.pyi").write_text(text)
    print(f"wrote {ROOT / 'python/flashback/_C.pyi'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
