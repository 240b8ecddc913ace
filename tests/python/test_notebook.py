"""examples/quickstart.ipynb runs headless (jupyter nbconvert --execute) on SmolLM2-135M and shows
what it promises: retrieval with titles, append vs prepend, a training curve, a reloaded adapter."""

import subprocess
import sys

import nbformat
import pytest

from fbtest import REPO, SMOL


@pytest.mark.skipif(not SMOL.exists(), reason=f"the default model is not cached ({SMOL}): scripts/fetch_model.sh")
def test_quickstart_notebook_executes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
                           str(REPO / "examples/quickstart.ipynb"), "--output-dir", str(tmp_path),
                           "--ExecutePreprocessor.timeout=900", "--ExecutePreprocessor.kernel_name=python3"],
                          capture_output=True, text=True, cwd=REPO / "examples", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(tmp_path / "quickstart.ipynb", 4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for needle in ("passages indexed", "[prepend] re-encoded", "[append] re-encoded", "retrieved: @", "training examples",
                   "adapter_model.safetensors", "MB in bf16", "fine-tuned here", "append+marks perplexity"):
        assert needle in text, needle
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the loss curve
