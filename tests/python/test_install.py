"""`pip install -e .` works offline in a fresh venv made from Debian's Python, with scikit-build-core
from the set-up step's wheel cache: the package imports from the source tree, the extension is built
(in build/python/, not in the source tree) and the `flashback` CLI is on the venv's PATH. (The
non-editable install is what the rest of the suite runs in.)"""

import os
import subprocess
from pathlib import Path

from fbtest import REPO, SHARED

WHEELS = Path(os.environ.get("FLASHBACK_CACHE") or Path.home() / ".cache/flashback") / "wheels"


def test_editable_install_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = dict(os.environ, PIP_NO_INDEX="1", CXX=os.environ.get("CXX", "c++"))  # as install_python.sh
    pip = [str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(WHEELS)]
    out = subprocess.run(pip + ["scikit-build-core"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    before = sorted(p.name for p in (REPO / "python/flashback").iterdir())
    out = subprocess.run(pip + ["--no-build-isolation", "--no-deps", "-e", str(REPO)], capture_output=True, text=True,
                         env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    # nothing was built or copied into the source tree
    assert sorted(p.name for p in (REPO / "python/flashback").iterdir()) == before
    code = ("import flashback, torch; m = flashback.LlamaForCausalLM.from_pretrained(%r);"
            "print(flashback.__file__, m.vocab_size)" % str(SHARED / "models/stories260K/stories260K.bin"))
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, vocab = out.stdout.split()
    assert Path(path).is_relative_to(REPO / "python") and vocab == "512"  # editable: the source tree
    cli = subprocess.run([str(venv / "bin/flashback"), "info", "--model",
                          str(SHARED / "models/stories260K/stories260K.bin")], capture_output=True, text=True)
    assert cli.returncode == 0 and "layers     5" in cli.stdout, cli.stderr
