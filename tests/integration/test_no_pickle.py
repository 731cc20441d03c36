"""No pickle anywhere (issue 8, DESIGN.md: "nothing calls torch.load on a user-supplied file without
weights_only=True").

A static check reads every module under src/ as an AST (not grep: aliases, `from x import y` and keyword
arguments are resolved, comments and strings are not matched) and fails on: torch.load without
weights_only=True, torch.save, any use of pickle/cPickle/_pickle/dill/cloudpickle/shelve, joblib.load,
pandas.read_pickle, and np.load/read_array whose allow_pickle is not literally False. The checker is
itself tested on small snippets.

A behavioural check feeds the loaders files whose pickle would create a marker file when unpickled:
they must refuse with one error line, and the marker must not exist.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

import vaekit
from vaekit.cli import main
from vaekit.data import files
from vaekit.errors import VaekitError

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve"}
FORBIDDEN_CALLS = {"joblib.load", "pandas.read_pickle", "torch.save", "torch.jit.load"}
NEEDS_WEIGHTS_ONLY = {"torch.load", "torch.serialization.load"}
NEEDS_NO_PICKLE = {"numpy.load", "numpy.lib.npyio.load", "numpy.lib.format.read_array", "numpy.lib.format.open_memmap"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it stands for (`import numpy as np`, `from torch import load`)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _is_const(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def pickle_uses(source: str, filename: str = "<snippet>") -> list[str]:
    """Every use of pickle in `source`, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func, aliases)
            if name is None:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            if None in kw:  # **kwargs: what it holds cannot be checked
                kw = {**kw, "weights_only": None, "allow_pickle": None}
            if name.split(".")[0] in FORBIDDEN_MODULES or name in FORBIDDEN_CALLS:
                found.append(f"{where}: {name}()")
            elif name in NEEDS_WEIGHTS_ONLY and not _is_const(kw.get("weights_only"), True):
                found.append(f"{where}: {name}() without weights_only=True")
            elif name in NEEDS_NO_PICKLE and "allow_pickle" in kw and not _is_const(kw["allow_pickle"], False):
                found.append(f"{where}: {name}(allow_pickle=...) that is not False")
    return found


def test_no_pickle_in_the_source():
    modules = sorted((ROOT / "src").rglob("*.py"))
    assert len(modules) > 10
    found = [u for p in modules for u in pickle_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "pickle in src/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        "import torch\ntorch.load(f)",
        "import torch\ntorch.load(f, weights_only=False)",
        "import torch as t\nt.load(f, map_location='cpu')",
        "from torch import load\nload(f)",
        "import torch\ntorch.load(f, **opts)",
        "import torch\ntorch.serialization.load(f)",
        "import torch\ntorch.save(model, f)",
        "import pickle",
        "import pickle as pk",
        "from pickle import loads",
        "import _pickle",
        "import dill",
        "import cloudpickle",
        "import joblib\njoblib.load(f)",
        "from joblib import load\nload(f)",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import numpy\nnumpy.load(f, allow_pickle=flag)",
        "from numpy import load as npload\nnpload(f, allow_pickle=True)",
        "import numpy as np\nnp.lib.format.read_array(f, allow_pickle=True)",
        "import pandas as pd\npd.read_pickle(f)",
    ],
)
def test_the_checker_finds(code):
    assert pickle_uses(code), code


@pytest.mark.parametrize(
    "code",
    [
        "import torch\ntorch.load(f, weights_only=True)",
        "import torch\ntorch.load(f, map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load(f)",
        "import numpy as np\nnp.load(f, mmap_mode='r', allow_pickle=False)",
        "from safetensors.torch import load_file\nload_file(f)",
        "import json\njson.load(f)",
        "# torch.load(f) in a comment\nx = 'import pickle'",
        "def load(f):\n    return f\nload(1)",
    ],
)
def test_the_checker_lets_pass(code):
    assert not pickle_uses(code), code


# --------------------------------------------------------------------------------------------- behaviour


class Trap:
    """Unpickling this creates `marker` (a harmless stand-in for os.system)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "unpickled"
    assert not m.exists()
    pickle.loads(pickle.dumps(Trap(m)))  # the trap works: unpickling it creates the marker ...
    assert m.exists()
    m.unlink()  # ... and each test checks that vaekit never springs it
    return m


def test_npy_with_a_pickled_object_array_is_refused(tmp_path, marker):
    path = tmp_path / "x.npy"
    np.save(path, np.array([Trap(marker), 1], dtype=object), allow_pickle=True)
    with pytest.raises(VaekitError, match="x.npy: holds Python objects"):
        files.load_file(path)
    assert not marker.exists()


def test_npz_with_a_pickled_member_is_refused(tmp_path, marker):
    path = tmp_path / "x.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.array([Trap(marker), 1], dtype=object))
    with pytest.raises(VaekitError, match=r"x.npz\[y\]: holds Python objects"):
        files.load_file(path)
    assert not marker.exists()


def _torch_pickle(marker: Path) -> bytes:
    b = io.BytesIO()
    torch.save({"encoder.net.0.weight": torch.zeros(2), "trap": Trap(marker)}, b)
    return b.getvalue()


def test_safetensors_lookalike_holding_a_pickle_is_refused(tmp_path, marker, capsys):
    """model.safetensors that is really torch.save's zip of a pickle: vaekit.load and the CLI refuse it."""
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = vaekit.RunConfig(vaekit.ModelConfig(input_shape=(1, 4, 4), hidden=(4,), latent_dim=2))
    (folder / "config.json").write_text(cfg.to_json())
    raw = _torch_pickle(marker)
    assert zipfile.is_zipfile(io.BytesIO(raw))
    for data in (raw, pickle.dumps(Trap(marker), protocol=4)):  # torch's zip format, a bare pickle
        (folder / "model.safetensors").write_bytes(data)
        with pytest.raises(VaekitError, match="model.safetensors: not a readable safetensors file"):
            vaekit.load(folder)
        assert main(["sample", str(folder), "-n", "2", "-o", str(tmp_path / "s.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "model.safetensors" in err
    assert not marker.exists() and not (tmp_path / "s.png").exists()


def test_checkpoint_lookalike_holding_a_pickle_is_refused(tmp_path, marker, capsys):
    """--resume from a run whose checkpoint/state.safetensors is a torch.save pickle."""
    run = tmp_path / "run"
    data = tmp_path / "d.npy"
    np.save(data, (np.arange(40 * 16) % 256).astype(np.uint8).reshape(40, 4, 4))
    flags = [
        "train",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--hidden",
        "4",
        "--latent-dim",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(run),
    ]
    n = torch.get_num_threads()
    try:
        assert main(flags) == 0
        (run / "checkpoint" / "state.safetensors").write_bytes(_torch_pickle(marker))
        assert main([*flags, "--resume", "--epochs", "2"]) == 2
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state.safetensors: not a readable safetensors file" in err, err
    assert not marker.exists()


def test_the_loaders_never_reach_pickle(tmp_path, marker, monkeypatch):
    """Belt and braces: with every unpickler disabled, the good paths still work (they need none)."""

    def refuse(*a, **k):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.arange(2))
    x, y = files.load_file(tmp_path / "ok.npz")
    assert x.shape == (2, 1, 4, 4) and y.tolist() == [0, 1]
    folder = ROOT / "tests" / "corpus" / "models" / "good"
    assert vaekit.load(folder).sample(1).shape == (1, 1, 8, 8)
    assert os.path.exists(folder / "model.safetensors")
