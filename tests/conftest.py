"""Shared fixtures and helpers of tests/unit (one file per module of src/vaekit: synthetic tensors, seconds) and
tests/integration (the CLI, training, the report, the explorer, the demo, torchrun, for real): the CLI (in this
process or as a subprocess: run_cli), one-line error checks, synthetic digits, a slice of real MNIST, small
trained runs, the quick demo.
Test files import helpers as `from conftest import ...`, so this is the only conftest.py: pytest imports every
conftest.py outside a package under the one module name `conftest`, and a second one would shadow this one.

Tiers: `pytest -m "not slow and not browser"` (make test-quick) needs no network and no dataset download.
Every test that uses real MNIST through `mnist_train` (so also mnist_slice, vae_run, ae_run and any fixture
built on them) is marked `slow` here at collection; a test that loads real data by itself carries the mark.
Quick tests that need images use `synthetic_digits`.
Tests marked `cuda` are skipped, with the reason, where torch sees no CUDA device (skip_without_cuda).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# Headless Chromium (Debian's, driven by playwright) for the browser tests: no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_cli(
    *args, check: bool = False, timeout: float = 600, env: dict | None = None, process: bool = False, **kw
) -> subprocess.CompletedProcess:
    """`vaekit ARGS`; returns a CompletedProcess (text mode): returncode, stdout, stderr.

    In this process by default (`vaekit.cli.main`, exactly what `python -m vaekit` calls, with stdout and stderr
    captured and the process-wide state it may touch put back after), which saves the ~2 s of a fresh
    interpreter and torch import per call. A real `python -m vaekit` subprocess with `process=True`, with `env`
    or other subprocess.run arguments (cwd, input, ...), or everywhere with VAEKIT_TEST_PROCESS=1: for what
    only a process shows (signals, exit on a real fd, the environment, the import of the package itself)."""
    if process or env or kw or os.environ.get("VAEKIT_TEST_PROCESS") == "1":
        e = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        e.update(env or {})
        argv = [sys.executable, "-m", "vaekit", *map(str, args)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, **kw)
    else:
        p = _run_cli_here([str(a) for a in args])
    if check and p.returncode != 0:
        raise AssertionError(f"vaekit {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def _run_cli_here(argv: list[str]) -> subprocess.CompletedProcess:
    """cli.main(argv) as `python -m vaekit` runs it: SystemExit's code (argparse's 2) is the return code, and
    an uncaught exception prints its traceback to stderr and returns 1, as the interpreter would."""
    import contextlib
    import io
    import signal
    import traceback
    import warnings

    import torch

    from vaekit import cli

    out, err = io.StringIO(), io.StringIO()
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:  # the interpreter's own behaviour: traceback, exit 1
            traceback.print_exc()
            rc = 1
        finally:
            torch.set_num_threads(threads)
            torch.set_rng_state(rng)
            for s, h in handlers.items():
                signal.signal(s, h)
    return subprocess.CompletedProcess(["vaekit", *argv], rc, out.getvalue(), err.getvalue())


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one `error: ...` line on stderr naming what was wrong, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


def one_line(e: BaseException | pytest.ExceptionInfo) -> str:
    """The message of an error (or of what `pytest.raises` caught), checked to be one line, not empty, not huge."""
    msg = str(e.value if isinstance(e, pytest.ExceptionInfo) else e)
    assert msg and "\n" not in msg and len(msg) < 2000, msg
    return msg


# Property tests of the readers and the config layer: 150 examples each, no per-example deadline (they write files).
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def train_alike(pair, batches, lr, beta) -> None:
    """Train each (model, optimizer, step) of `pair` (a step implementation and its oracle, from the same initial
    weights) on the same (x, eps) batches, at learning rate lr(i) and KL weight beta(i) for batch i; assert the
    same weights, Adam state and sums (loss, elbo, recon, kl, examples) to float32 rounding."""
    import torch

    results = []
    for model, opt, step in pair:
        sums = torch.zeros(5, dtype=torch.float64)
        for i, (x, eps) in enumerate(batches):
            assert not step(x, None, eps, lr(i), beta(i)).item()
            step.commit(sums)
        results.append((model.state_dict(), opt.state_dict()["state"], sums))
    (w0, s0, sums0), (w1, s1, sums1) = results
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-5, atol=1e-6)
    for i in s0:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s1[i][name], s0[i][name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sums1, sums0, rtol=1e-5, atol=1e-4)


def failing_compile(fn, *args, **kwargs):
    """torch.compile as it behaves without a working backend: the first call raises dynamo's error."""
    import torch._dynamo.exc

    def call(*a, **k):
        raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler found\nmore detail")

    return call


REAL_DATA_FIXTURE = "mnist_train"  # every real-MNIST fixture is built on it


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    skip_without_cuda(items)


def skip_without_cuda(items) -> None:
    """Tests marked `cuda` run where torch sees a CUDA device and are skipped elsewhere, the reason shown by -ra."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    reason = f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))


def loopback_works() -> bool:
    """Whether this machine can reach itself at 127.0.0.1 (not so inside `unshare -n`, where lo is down)."""
    import socket

    with socket.socket() as server:
        try:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=5):
                return True
        except OSError:
            return False


def synthetic_digits(n: int, seed: int = 0):
    """n synthetic 28x28 'digits', a vaekit Dataset (x uint8 (n, 1, 28, 28), y labels 0-9): label c is a
    bright bar at angle 18c degrees, shifted by up to 3 pixels and dimmed at random, over faint noise. It
    stands in for MNIST where a test checks the machinery (loop, checkpoints, shapes), not what is learned."""
    import torch

    from vaekit.data import Dataset

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    r = torch.arange(28, dtype=torch.float32) - 13.5
    angle = y.float() * math.pi / 10  # (n,)
    shift = torch.randint(-3, 4, (n, 2), generator=g).float()
    rows, cols = r[None, :, None] - shift[:, 0, None, None], r[None, None, :] - shift[:, 1, None, None]
    dist = (rows * torch.cos(angle)[:, None, None] - cols * torch.sin(angle)[:, None, None]).abs()  # to the bar's line
    bar = ((dist < 1.8) & (rows**2 + cols**2 < 100)).float() * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g))
    x = (bar + 0.1 * torch.rand(n, 28, 28, generator=g)).clamp(0, 1)
    return Dataset((x * 255).round().to(torch.uint8)[:, None], y, "synthetic")


@pytest.fixture(scope="module")
def digits():
    """500 synthetic digits (a vaekit Dataset): what the tests of the loop, checkpoints, schedules and the
    evaluation fallback check needs images, not MNIST."""
    return synthetic_digits(500)


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


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """`vaekit demo --quick` into a fresh folder: (the folder, the CompletedProcess, its seconds)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    t = time.perf_counter()
    p = run_cli("demo", "--quick", "--out", out, timeout=300)
    assert p.returncode == 0, p.stderr
    return out, p, time.perf_counter() - t
