"""Shared fixtures: the CLI as a subprocess, a slice of real MNIST, small trained runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args, check: bool = False, timeout: float = 600, env: dict | None = None, **kw
) -> subprocess.CompletedProcess:
    """`python -m vaekit ARGS` in a subprocess; returns the CompletedProcess (text mode)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "vaekit", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e, **kw
    )
    if check and p.returncode != 0:
        raise AssertionError(f"vaekit {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one `error: ...` line on stderr naming what was wrong, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


@pytest.fixture(autouse=True)
def _keep_threads():
    """Tests that train with --threads in-process must not change the thread count of the tests after them."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mnist_train():
    import vaekit

    return vaekit.data.load("mnist", "train")


@pytest.fixture(scope="session")
def mnist_slice(tmp_path_factory, mnist_train) -> Path:
    """The first 3000 real MNIST training digits as an .npz (x uint8 (N, 28, 28), y labels)."""
    path = tmp_path_factory.mktemp("data") / "mnist3k.npz"
    np.savez(path, x=mnist_train.x[:3000, 0].numpy(), y=mnist_train.y[:3000].numpy())
    return path


def _train(tmp_path_factory, name: str, *flags) -> Path:
    out = tmp_path_factory.mktemp("runs") / name
    run_cli("train", "--epochs", 2, "--batch-size", 100, "--quiet", "--out", out, *flags, check=True)
    return out


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory, mnist_slice) -> Path:
    """A 784-400-20 VAE trained 2 epochs on 3000 real MNIST digits."""
    return _train(tmp_path_factory, "vae", "--data", mnist_slice)


@pytest.fixture(scope="session")
def ae_run(tmp_path_factory, mnist_slice) -> Path:
    """The matching autoencoder."""
    return _train(tmp_path_factory, "ae", "--data", mnist_slice, "--model", "ae")
