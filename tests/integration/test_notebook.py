"""docs/tutorial.ipynb runs top to bottom: every cell of a copy, in a fresh kernel of this interpreter, with
VAEKIT_TUTORIAL_QUICK=1 (fewer digits, one epoch); any cell error fails the test. Real MNIST, so slow."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the skips: a dev dependency)
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
QUICK_BUDGET_S = 90  # the limit for the quick setting (kernel start included)


def this_interpreter_kernel(where: Path) -> KernelManager:
    """A kernel manager whose only kernel spec runs this interpreter (the venv's python): nothing is
    registered outside `where`, and no other Python on PATH or in a user's Jupyter folders can be picked."""
    spec = where / "kernels" / "vaekit-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "vaekit test", "language": "python"}))
    ksm = KernelSpecManager(kernel_dirs=[str(where / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="vaekit-test", kernel_spec_manager=ksm)


@pytest.mark.slow
def test_tutorial_notebook_runs_in_the_quick_setting(mnist_train, tmp_path):
    original = NOTEBOOK.read_bytes()
    nb = nbformat.reads(original.decode(), as_version=4)
    km = this_interpreter_kernel(tmp_path)
    env = {**os.environ, "VAEKIT_TUTORIAL_QUICK": "1", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")  # this checkout's vaekit
    client = nbclient.NotebookClient(
        nb, km=km, timeout=300, allow_errors=False, resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError, naming the cell, on the first error
    seconds = time.perf_counter() - t0

    assert NOTEBOOK.read_bytes() == original  # the copy ran, the committed notebook is untouched
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "quick=True" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    pngs = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 12 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)  # pictures drawn inline
    tables = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) >= 2 and all("vaekit-model" in t for t in tables)  # models shown as tables
    assert seconds < QUICK_BUDGET_S, f"the quick notebook took {seconds:.0f} s (budget {QUICK_BUDGET_S} s)"
