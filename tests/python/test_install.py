"""`pip install --no-build-isolation -e .` works offline in a fresh venv made
from Debian's Python, and puts the `flashback` CLI on the venv's PATH (the
non-editable install is what the rest of the suite runs in)."""

import os
import subprocess
import sys
from pathlib import Path

from fbtest import REPO, SHARED, find_cli


def test_editable_install_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = dict(os.environ, FLASHBACK_CMAKE_BUILD_DIR=str(find_cli().parent), PIP_NO_INDEX="1")
    pip = subprocess.run([str(venv / "bin/pip"), "install", "--no-build-isolation", "--no-deps", "-q", "-e",
                          str(REPO)], capture_output=True, text=True, env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    code = ("import flashback, torch; m = flashback.LlamaForCausalLM.from_pretrained(%r);"
            "print(flashback.__file__, m.vocab_size)" % str(SHARED / "models/stories260K/stories260K.bin"))
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, vocab = out.stdout.split()
    assert Path(path).is_relative_to(REPO / "python") and vocab == "512"  # editable: the source tree
    cli = subprocess.run([str(venv / "bin/flashback"), "info", "--model",
                          str(SHARED / "models/stories260K/stories260K.bin")], capture_output=True, text=True)
    assert cli.returncode == 0 and "layers     5" in cli.stdout, cli.stderr
