"""Faults while training (issue 8): a full disk or a refused write, and kill -9 at random points.

A failed write (simulated: the writer is monkeypatched to fail halfway with ENOSPC or EACCES; we run as
root, so a read-only folder would not stop us) must leave the previous checkpoint and weights loadable,
no temp files, and the user one line: `error: PATH: cannot write (no space left on device)`, exit 2. A
resume afterwards ends bit-identical to a run that never failed. kill -9 at seeded random points of a
short run, then --resume, also ends bit-identical (tests/integration/test_train.py has the deterministic cases:
SIGTERM at chosen checkpoints, SIGKILL in the middle of a checkpoint write).
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error
from safetensors import SafetensorError
from test_train import BASE, assert_same_run, ckpt_meta

import vaekit
import vaekit.checkpoint
import vaekit.io
import vaekit.train as T
from vaekit.cli import main
from vaekit.errors import VaekitError

CKPT = Path("checkpoint") / "state.safetensors"


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory, mnist_train) -> Path:
    """1000 real MNIST digits (the same as tests/integration/test_train.py's, so BASE runs are comparable)."""
    path = tmp_path_factory.mktemp("data") / "mnist1k.npz"
    np.savez(path, x=mnist_train.x[:1000, 0].numpy(), y=mnist_train.y[:1000].numpy())
    return path


def flags(data: Path, out: Path, *extra) -> list[str]:
    return [str(a) for a in ("train", "--data", data, *BASE, "--checkpoint-every", 5, "--quiet", "--out", out, *extra)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_npz) -> Path:
    """The run, never interrupted (in this process: the same arithmetic as the resumed runs below)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    n = torch.get_num_threads()
    assert main(flags(digits_npz, out)) == 0
    torch.set_num_threads(n)
    return out


def failing_save_file(monkeypatch, target: str, nth: int, error: Exception) -> list[int]:
    """Make the `nth` write of a file named `target` write half a temp file, then fail with `error`."""
    real, calls = vaekit.io.save_file, [0]

    def save_file(tensors, path, metadata=None):
        if Path(path).name.startswith(f".{target}."):
            calls[0] += 1
            if calls[0] == nth:
                Path(path).write_bytes(b"\x00" * 512)
                raise error
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(vaekit.io, "save_file", save_file)
    return calls


def stray_temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def one_error_line(capsys) -> str:
    cap = capsys.readouterr()
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in cap.err, cap.err
    return lines[0]


def loadable_checkpoint(out: Path) -> dict:
    cfg = vaekit.RunConfig.from_json_file(out / "config.json")
    model = vaekit.build_model(cfg.model)
    meta, _, _ = vaekit.checkpoint.load(out / CKPT, model, T.make_optimizer(model, cfg.train))
    return meta


# ---------------------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize(
    "error",
    [
        enospc(),
        SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
    ],
    ids=["OSError", "SafetensorError"],
)
def test_disk_full_during_a_checkpoint_write(tmp_path, digits_npz, reference, monkeypatch, capsys, error):
    """The 3rd checkpoint (step 15) fails halfway: exit 2, one line naming the checkpoint; the 2nd (step 10)
    is intact and loadable; --resume once there is space ends bit-identical to the reference."""
    out = tmp_path / "run"
    failing_save_file(monkeypatch, "state.safetensors", 3, error)
    assert main(flags(digits_npz, out)) == 2
    line = one_error_line(capsys)
    assert str(out / CKPT) in line and line.endswith("cannot write (no space left on device)"), line
    assert loadable_checkpoint(out)["step"] == 10
    assert stray_temps(out) == []
    monkeypatch.undo()
    assert main(flags(digits_npz, out, "--resume")) == 0
    assert_same_run(reference, out)


def test_disk_full_while_saving_the_best_weights(tmp_path, digits_npz, reference, monkeypatch, capsys):
    """model.safetensors of epoch 2 fails: epoch 1's weights still load; the checkpoint is the one before."""
    out = tmp_path / "run"
    failing_save_file(monkeypatch, "model.safetensors", 2, enospc())
    assert main(flags(digits_npz, out)) == 2
    line = one_error_line(capsys)
    assert str(out / "model.safetensors") in line and "no space left on device" in line
    model = vaekit.load(out)  # epoch 1's weights, whole
    assert model.sample(2).shape == (2, 1, 28, 28)
    assert len(vaekit.io.read_metrics(out)) == 2  # the row of epoch 2 was written; the checkpoint says 1 line
    assert ckpt_meta(out)["metrics_lines"] == 1 and stray_temps(out) == []
    monkeypatch.undo()
    assert main(flags(digits_npz, out, "--resume")) == 0
    assert_same_run(reference, out)


def test_disk_full_appending_metrics(tmp_path, digits_npz, monkeypatch, capsys):
    out = tmp_path / "run"
    real_open = open

    def open_(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise enospc()
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(vaekit.io, "open", open_, raising=False)
    assert main(flags(digits_npz, out)) == 2
    line = one_error_line(capsys)
    assert str(out / "metrics.jsonl") in line and "no space left on device" in line
    assert loadable_checkpoint(out)["epoch"] == 0  # the mid-epoch checkpoints of epoch 1 are intact


def test_permission_denied_creating_the_temp_file(tmp_path, digits_npz, reference, monkeypatch, capsys):
    """A folder that refuses new files (as a non-root user's read-only run folder would)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def mkstemp(*a, dir=None, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(vaekit.io.tempfile, "mkstemp", mkstemp)
    assert main(flags(digits_npz, out, "--resume", "--epochs", 4)) == 2
    line = one_error_line(capsys)
    assert f"error: {out}{os.sep}" in line and line.endswith("cannot write (permission denied)"), line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_library_save_on_a_full_disk_keeps_the_old_model(tmp_path, digits_npz, reference, monkeypatch):
    """vaekit.io.save from Python: a VaekitError naming the file, the old model folder still loads."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(reference, folder)
    old = vaekit.load(folder)

    def save_file(tensors, path, metadata=None):
        raise enospc()

    monkeypatch.setattr(vaekit.io, "save_file", save_file)
    fresh = vaekit.build_model(old.run_config.model)
    with pytest.raises(VaekitError, match="model.safetensors: cannot write \\(no space left on device\\)"):
        vaekit.io.save(fresh, folder, old.run_config)
    again = vaekit.load(folder)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), again.state_dict().values()))
    assert stray_temps(folder) == []


# Runs `vaekit ARGS` with the T_ENOSPC-th write of state.safetensors failing with ENOSPC.
DRIVER = r"""
import errno, os, sys
import vaekit.io
real, n = vaekit.io.save_file, [0]
def save_file(tensors, path, metadata=None):
    if os.path.basename(path).startswith(".state.safetensors."):
        n[0] += 1
        if n[0] == int(os.environ["T_ENOSPC"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(tensors, path, metadata=metadata)
vaekit.io.save_file = save_file
from vaekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_in_a_real_process(tmp_path, digits_npz):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "T_ENOSPC": "2"}
    p = subprocess.run(
        [sys.executable, "-c", DRIVER, *flags(digits_npz, out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert_clean_error(p, str(out / CKPT), "no space left on device")
    assert ckpt_meta(out)["step"] == 5


# --------------------------------------------------------------------------------- kill -9, then resume


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path, digits_npz, reference):
    """Three SIGKILLs, each at a seeded random moment after the process's first new checkpoint (so every
    round makes progress: mid-epoch, between epochs, during a write), each followed by --resume; the
    last --resume runs to the end. The weights, checkpoint and metrics equal the uninterrupted run's."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("CI", None)
    rng = random.Random(9)
    kills = []
    for round_ in range(4):
        ckpt = out / CKPT
        seen = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        argv = flags(digits_npz, out, *(["--resume"] if seen else []))
        proc = subprocess.Popen(
            [sys.executable, "-m", "vaekit", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        try:
            if round_ < 3:
                deadline = time.monotonic() + 120
                while proc.poll() is None and time.monotonic() < deadline:
                    if ckpt.exists() and ckpt.stat().st_mtime_ns != seen:  # a new checkpoint: kill soon after
                        time.sleep(rng.uniform(0.0, 0.12))
                        proc.kill()
                        break
                    time.sleep(0.002)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode == -9:
            kills.append(ckpt_meta(out)["step"])
        else:
            assert proc.returncode == 0, err.decode()
            if round_ < 3:  # it finished before the kill: nothing left to interrupt
                break
    assert kills, "no kill landed while training"
    assert_same_run(reference, out)
    assert not stray_temps(out)
