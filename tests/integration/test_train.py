"""The training engine (issue 4): exact resume, atomic checkpoints, signals, the NaN guard, configs,
progress output, schedules, clipping, early stopping, best-model keeping, and the Python API.

Runs are tiny (1000 MNIST digits, batch 50, 19 steps an epoch, one thread) so the whole file stays
well under a minute. Bit-identity is checked between subprocesses (the way users run it); a run is
interrupted by a real signal: a small driver sends SIGTERM/SIGINT to its own process right after
its Nth checkpoint, which makes the interruption point deterministic without a test hook in vaekit.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error, failing_compile
from safetensors import safe_open
from safetensors.torch import load_file

import vaekit
import vaekit.checkpoint
import vaekit.runlog
import vaekit.steps as S
import vaekit.train as T
from vaekit import cli
from vaekit.config import ModelConfig, TrainConfig

STEPS = 19  # 1000 examples, 5% held out -> 950 -> 19 steps of 50
BASE = ["--epochs", 3, "--batch-size", 50, "--threads", 1]

# Runs `vaekit ARGS`, sending itself signal T_SIGNAL (T_TIMES times) right after its T_AFTER-th checkpoint
# or as step T_AT_STEP (0-based) starts; or (T_KILL_WRITE=N) writing half of its N-th checkpoint's temp file
# and then dying by SIGKILL.
DRIVER = r"""
import os, signal, sys, time
import vaekit.io
import vaekit.checkpoint as C
import vaekit.steps as S
env = os.environ
n = [0]
def send():
    for _ in range(int(env.get("T_TIMES", "1"))):
        os.kill(os.getpid(), getattr(signal, env.get("T_SIGNAL", "SIGTERM")))
        time.sleep(0.05)  # the handler runs before the next signal
if "T_AFTER" in env:
    orig = C.save
    def save_checkpoint(*a, **k):
        orig(*a, **k)
        n[0] += 1
        if n[0] == int(env["T_AFTER"]):
            send()
    C.save = save_checkpoint
if "T_AT_STEP" in env:
    orig_lr = S.learning_rate
    def learning_rate(cfg, step, *a):
        if step == int(env["T_AT_STEP"]) and not n[0]:
            n[0] = 1
            send()
        return orig_lr(cfg, step, *a)
    S.learning_rate = learning_rate
if "T_KILL_WRITE" in env:
    orig_save = vaekit.io.save_file
    def save_file(tensors, path, metadata=None):
        orig_save(tensors, path, metadata=metadata)
        if "state.safetensors" in str(path):
            n[0] += 1
            if n[0] == int(env["T_KILL_WRITE"]):
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
    vaekit.io.save_file = save_file
from vaekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_driver(*args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **{k: str(v) for k, v in env.items()}}
    e.pop("CI", None)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e
    )


def vaekit_cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_driver(*args, env=env or {}, timeout=timeout)


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, mnist_train) -> Path:
    """1000 real MNIST digits as an .npz."""
    path = tmp_path_factory.mktemp("data") / "mnist1k.npz"
    np.savez(path, x=mnist_train.x[:1000, 0].numpy(), y=mnist_train.y[:1000].numpy())
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_npz) -> Path:
    """A 3-epoch run that was never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    p = vaekit_cli("train", "--data", small_npz, *BASE, "--checkpoint-every", 7, "--out", out)
    assert p.returncode == 0, p.stderr
    return out


def ckpt_meta(run: Path) -> dict:
    with safe_open(str(run / "checkpoint" / "state.safetensors"), "pt") as f:
        return json.loads(f.metadata()["state"])


def assert_same_run(a: Path, b: Path) -> None:
    """Every tensor of the weights and of the checkpoint equal, the same checkpoint state, the same metrics."""
    for name in ("model.safetensors", "checkpoint/state.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k} differs"
    ma, mb = ckpt_meta(a), ckpt_meta(b)
    for m in (ma, mb):
        m.pop("seconds")
    assert ma == mb
    drop = lambda rows: [{k: v for k, v in r.items() if k not in T.TIMING_KEYS} for r in rows]  # noqa: E731
    ra, rb = drop(vaekit.io.read_metrics(a)), drop(vaekit.io.read_metrics(b))
    assert len(ra) == 3 and ra == rb


def tiny_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return vaekit.build_model(ModelConfig(input_shape=(1, 28, 28), hidden=(64,), latent_dim=4, **kw))


def main_cli(*args) -> int:
    return cli.main([str(a) for a in args])


# -------------------------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    "where,every,after",
    [
        ("mid-epoch", 7, 4),  # checkpoints at steps 7, 14, 19 (epoch end), 21 -> stops at step 22
        (
            "last step of an epoch",
            18,
            1,
        ),  # checkpoint at step 18 -> stops at step 19 = end of epoch 1, before its metrics
        ("epoch boundary", 0, 1),  # checkpoints at epoch ends only -> stops after epoch 1
    ],
)
def test_resume_after_sigterm_is_bit_identical(tmp_path, small_npz, reference, where, every, after):
    out = tmp_path / "run"
    flags = ["train", "--data", small_npz, *BASE, "--checkpoint-every", every, "--out", out]
    p = run_driver(*flags, env={"T_AFTER": after})
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert "Traceback" not in p.stderr and "--resume" in p.stderr
    meta = ckpt_meta(out)
    expected = {"mid-epoch": (1, 3), "last step of an epoch": (0, STEPS), "epoch boundary": (1, 0)}[where]
    assert (meta["epoch"], meta["step_in_epoch"]) == expected
    if where == "mid-epoch":  # resumed as users do; in-process for the others (saves an interpreter start)
        p = vaekit_cli(*flags, "--resume")
        assert p.returncode == 0, p.stderr
    else:
        assert main_cli(*flags, "--resume", "--quiet") == 0
    assert_same_run(reference, out)


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, small_npz, reference, capsys):
    out = tmp_path / "run"
    flags = ["train", "--data", small_npz, "--batch-size", 50, "--threads", 1, "--checkpoint-every", 7, "--out", out]
    assert main_cli(*flags, "--epochs", 2) == 0
    assert main_cli(*flags, "--epochs", 3, "--resume") == 0
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3
    assert_same_run(reference, out)


def test_resume_without_checkpoint_is_a_clean_error(tmp_path, small_npz, capsys):
    p = vaekit_cli("train", "--data", small_npz, "--epochs", 1, "--out", tmp_path / "none", "--resume")
    assert_clean_error(p, "--resume", "nothing to resume")
    (tmp_path / "empty").mkdir()
    rc = main_cli("train", "--data", small_npz, "--epochs", 1, "--out", tmp_path / "empty", "--resume")
    assert_clean_error(subprocess.CompletedProcess([], rc, "", capsys.readouterr().err), "no checkpoint")


def test_resume_refuses_changed_model_or_training_flags(tmp_path, small_npz, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for flag, value in (
        ("--latent-dim", 5),
        ("--hidden", "64"),
        ("--likelihood", "gaussian"),
        ("--beta", 2.0),
        ("--data", "mnist"),
    ):
        rc = main_cli("train", "--data", small_npz, "--out", run, "--resume", flag, value, "--epochs", 4)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: --resume: " + flag) and err.count("\n") == 1, err
    assert_same_run(reference, run)  # untouched


# ---------------------------------------------------------------------------------------------- checkpoints


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, digits, monkeypatch):
    """The write fails halfway (a temp file half-written, then an error): the old checkpoint still loads,
    and no temp file is left behind."""
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=1, batch_size=50, threads=1, checkpoint_every=0, quiet=True)
    T.fit(tiny_model(), digits, cfg, out)
    before = load_file(str(out / "checkpoint" / "state.safetensors"))

    def broken(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vaekit.io, "save_file", broken)
    with pytest.raises(vaekit.VaekitError, match="no space left on device"):
        T.fit(tiny_model(), digits, TrainConfig(epochs=2, batch_size=50, threads=1, quiet=True), out, resume=True)
    after = load_file(str(out / "checkpoint" / "state.safetensors"))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.safetensors"]
    assert not list(out.glob(".*.tmp"))


def test_kill_9_during_checkpoint_write_then_resume(tmp_path, small_npz, reference):
    """SIGKILL in the middle of writing the 4th checkpoint: the 3rd is intact, the stray temp file is
    cleaned up on resume, and the resumed run still ends bit-identical."""
    out = tmp_path / "run"
    flags = ["train", "--data", small_npz, *BASE, "--checkpoint-every", 7, "--out", out]
    p = run_driver(*flags, env={"T_KILL_WRITE": 4})
    assert p.returncode == -signal.SIGKILL
    assert ckpt_meta(out)["step"] == 19  # the 3rd checkpoint (end of epoch 1)
    assert len(list((out / "checkpoint").glob(".state.safetensors.*.tmp"))) == 1
    assert main_cli(*flags, "--resume", "--quiet") == 0
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["state.safetensors"]
    assert_same_run(reference, out)


# -------------------------------------------------------------------------------------------------- signals


def test_external_sigterm_saves_checkpoint_and_exits_143(tmp_path, small_npz):
    sig = signal.SIGTERM
    out, err = tmp_path / "run", tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(err, "w") as ferr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaekit",
                "train",
                "--data",
                str(small_npz),
                "--epochs",
                "1000",
                "--batch-size",
                "50",
                "--threads",
                "1",
                "--checkpoint-every",
                "5",
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=ferr,
            env=env,
        )
        try:
            deadline = time.monotonic() + 120
            while not (out / "checkpoint" / "state.safetensors").exists():
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.02)
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err.read_text()
    assert rc == 128 + sig, text
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert f"interrupted by {sig.name}" in last and f"vaekit train --out {out} --resume" in last
    meta = ckpt_meta(out)
    assert 0 < meta["step"] < 1000 * STEPS
    model = vaekit.build_model(vaekit.RunConfig.from_json_file(out / "config.json").model)
    vaekit.checkpoint.load(out / "checkpoint" / "state.safetensors", model, T.make_optimizer(model, TrainConfig()))


def sigint_at_step(monkeypatch, n: int):
    """Send this process SIGINT when the loop asks the learning rate of step n (a point inside a step that
    every run reaches); returns the real steps.learning_rate, to put back before a resume."""
    lr = S.learning_rate

    def at_step(cfg, step, *a):
        if step == n:
            os.kill(os.getpid(), signal.SIGINT)
        return lr(cfg, step, *a)

    monkeypatch.setattr(S, "learning_rate", at_step)
    return lr


def test_ctrl_c_in_process_saves_checkpoint_and_returns_130(tmp_path, small_npz, monkeypatch, capsys):
    sigint_at_step(monkeypatch, 5)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    assert main_cli("train", "--data", small_npz, *BASE, "--checkpoint-every", 0, "--out", out) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"interrupted by SIGINT at epoch 1, step 6; checkpoint saved in {out / 'checkpoint'}. "
        f"Resume with: vaekit train --out {out} --resume"
    )
    assert ckpt_meta(out)["step"] == 6
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back


def test_second_ctrl_c_stops_at_once(tmp_path, small_npz):
    out = tmp_path / "run"
    p = run_driver(
        "train",
        "--data",
        small_npz,
        *BASE,
        "--checkpoint-every",
        7,
        "--out",
        out,
        env={"T_AT_STEP": 16, "T_SIGNAL": "SIGINT", "T_TIMES": 2},
    )
    assert p.returncode == 128 + signal.SIGINT, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "stopped at once on a second SIGINT; the last checkpoint (step 14) is kept"
    )
    assert ckpt_meta(out)["step"] == 14  # no checkpoint after the first signal: it stopped at once


# ------------------------------------------------------------------------------------------------ NaN guard


def test_huge_learning_rate_diverges_with_a_clear_error(tmp_path, small_npz, capsys):
    out = tmp_path / "run"
    rc = main_cli(
        "train",
        "--data",
        small_npz,
        "--epochs",
        2,
        "--batch-size",
        50,
        "--threads",
        1,
        "--quiet",
        "--likelihood",
        "gaussian",
        "--lr",
        1e6,
        "--max-bad-steps",
        3,
        "--checkpoint-every",
        2,
        "--out",
        out,
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: training diverged"), err
    assert "3 consecutive steps" in err and "epoch 1, step" in err and "learning rate (1e+06)" in err
    assert f"step {ckpt_meta(out)['step']}" in err
    model = vaekit.build_model(vaekit.RunConfig.from_json_file(out / "config.json").model)
    vaekit.checkpoint.load(out / "checkpoint" / "state.safetensors", model, T.make_optimizer(model, TrainConfig()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _poisoned(model, bad_calls: set[int] | None = None, bad_from: int | None = None):
    """Make training forward call number i (1-based) return a NaN loss; record the weights each call sees."""
    seen, forward = [], model.forward

    def patched(x, **kw):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        loss, terms = forward(x, **kw)
        i = len(seen)
        if (bad_calls and i in bad_calls) or (bad_from and i >= bad_from):
            loss = loss * float("nan")
        return loss, terms

    model.forward = patched
    return seen


def test_one_bad_step_is_skipped_and_training_goes_on(digits):
    model = tiny_model()
    seen = _poisoned(model, bad_calls={3})
    run = T.fit(model, digits, TrainConfig(epochs=1, batch_size=50, threads=1, quiet=True, max_bad_steps=2))
    assert run.stopped == "finished" and len(seen) == 10
    assert all(torch.equal(seen[2][k], seen[3][k]) for k in seen[2])  # step 3 left the weights alone
    assert not all(torch.equal(seen[3][k], seen[4][k]) for k in seen[3])  # step 4 trained again
    assert math.isfinite(run.metrics[0]["train_elbo"])


def test_consecutive_bad_steps_stop_training_with_last_good_checkpoint(tmp_path, digits):
    out, model = tmp_path / "run", tiny_model()
    seen = _poisoned(model, bad_from=5)
    cfg = TrainConfig(epochs=2, batch_size=50, threads=1, quiet=True, max_bad_steps=3, checkpoint_every=2)
    with pytest.raises(T.Diverged, match=r"3 consecutive steps .* the last at epoch 1, step 7\. Likely cause"):
        T.fit(model, digits, cfg, out)
    good = seen[4]  # the weights after step 4, the last good one
    ckpt = load_file(str(out / "checkpoint" / "state.safetensors"))
    assert ckpt_meta(out)["step"] == 6  # written during the bad streak: still the good weights
    assert all(torch.equal(ckpt[f"model.{k}"], v) for k, v in good.items())


# ------------------------------------------------------------------------------------------------- configs


def test_config_file_with_flag_overrides(tmp_path, small_npz, capsys):
    for ext, text in (
        (
            ".yaml",
            f"data: {small_npz}\nepochs: 1\nbatch-size: 50\nlatent_dim: 7\nlr: 0.002\nhidden: [64]\nquiet: true\n",
        ),
        (
            ".json",
            json.dumps(
                {
                    "data": str(small_npz),
                    "epochs": 1,
                    "batch_size": 50,
                    "latent-dim": 7,
                    "lr": 0.002,
                    "hidden": 64,
                    "quiet": True,
                }
            ),
        ),
    ):
        cfg_file, out = tmp_path / f"run{ext}", tmp_path / f"run{ext[1:]}"
        cfg_file.write_text(text)
        assert main_cli("train", "--config", cfg_file, "--latent-dim", 3, "--threads", 1, "--out", out) == 0
        saved = json.loads((out / "config.json").read_text())
        assert saved["model"]["latent_dim"] == 3  # the flag wins over the file
        assert saved["model"]["hidden"] == [64] and saved["train"]["lr"] == 0.002 and saved["train"]["epochs"] == 1
        assert saved["train"]["binarize"] == "dynamic"  # auto, resolved for bernoulli
        assert saved["train"]["data"] == str(small_npz)
        assert vaekit.load(out).latent_dim == 3


@pytest.mark.parametrize(
    "text,needle",
    [
        ("epochs: 1\nepoch_count: 3\n", "unknown option 'epoch_count'"),
        ("epochs: ten\n", "expected an integer"),
        ("lr: [1]\n", "expected a number"),
        ("- epochs\n", "expected a mapping"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_file_is_a_one_line_error(tmp_path, text, needle, capsys):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(text)
    rc = main_cli("train", "--config", cfg_file, "--out", tmp_path / "run")
    p = subprocess.CompletedProcess([], rc, "", capsys.readouterr().err)
    assert_clean_error(p, str(cfg_file), needle)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ progress output


class _FakeTTY(_io.StringIO):
    def isatty(self):
        return True


def _train_with_stderr(stream, out, *flags, monkeypatch) -> tuple[int, str]:
    with monkeypatch.context() as m:
        m.setattr(sys, "stderr", stream)
        rc = main_cli("train", "--epochs", 2, "--batch-size", 50, "--threads", 1, "--out", out, *flags)
    return rc, stream.getvalue()


def test_progress_bar_only_on_a_terminal(tmp_path, small_npz, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    data = ["--data", small_npz]
    rc, text = _train_with_stderr(_io.StringIO(), tmp_path / "a", *data, monkeypatch=monkeypatch)
    assert rc == 0 and "\r" not in text
    auto, *epochs = text.splitlines()  # what --amp/--compile auto chose, said once, then a line an epoch
    assert auto.startswith("auto: amp ") and "; compile off (" in auto, auto
    assert [line.split()[:2] for line in epochs] == [["epoch", "1/2"], ["epoch", "2/2"]]
    rc, text = _train_with_stderr(_io.StringIO(), tmp_path / "b", *data, "--quiet", monkeypatch=monkeypatch)
    assert rc == 0 and text == ""
    rc, text = _train_with_stderr(_FakeTTY(), tmp_path / "c", *data, monkeypatch=monkeypatch)
    assert rc == 0 and "\r" in text and "epoch 1/2" in text and "ex/s" in text and "elbo=" in text  # the bar
    monkeypatch.setenv("CI", "true")
    rc, text = _train_with_stderr(_FakeTTY(), tmp_path / "d", *data, monkeypatch=monkeypatch)
    assert rc == 0 and "\r" not in text and text.count("\n") == 3  # CI: plain lines (the auto line, 2 epochs)


# ------------------------------------------------------------------ schedules, clipping, early stopping, best


def test_schedule_reaches_the_optimizer(digits, monkeypatch):
    opts, make = [], T.make_optimizer
    monkeypatch.setattr(T, "make_optimizer", lambda *a: opts.append(make(*a)) or opts[-1])
    run = T.fit(
        tiny_model(),
        digits,
        TrainConfig(epochs=3, batch_size=100, lr=0.01, schedule="step", step_every=1, threads=1, quiet=True),
    )
    assert [r["lr"] for r in run.metrics] == [0.01, 0.005, 0.0025]
    assert opts[0].param_groups[0]["lr"] == 0.0025
    run = T.fit(
        tiny_model(), digits, TrainConfig(epochs=2, batch_size=100, lr=0.01, schedule="cosine", threads=1, quiet=True)
    )
    total = 10
    assert [r["lr"] for r in run.metrics] == pytest.approx(
        [0.005 * (1 + math.cos(math.pi * s / total)) for s in (4, 9)]
    )


def test_gradient_clipping_bounds_adams_first_moment(digits, monkeypatch):
    """Each clipped gradient has norm <= clip, so Adam's running mean m_t = (1 - b1) sum b1^i g_i does too."""
    opts = []
    make = T.make_optimizer
    monkeypatch.setattr(T, "make_optimizer", lambda *a: opts.append(make(*a)) or opts[-1])
    for clip in (1e-3, 0.0):
        T.fit(tiny_model(), digits, TrainConfig(epochs=1, batch_size=50, clip=clip, threads=1, quiet=True))
    norms = [math.sqrt(sum(s["exp_avg"].pow(2).sum().item() for s in o.state.values())) for o in opts]
    assert norms[0] <= 1e-3 * (1 + 1e-5)
    assert norms[1] > 100 * norms[0]


def test_early_stopping_and_best_model(tmp_path, digits, monkeypatch):
    """Validation ELBO improves, then stalls: training stops after `patience` bad epochs, and the run
    keeps (in memory and in model.safetensors) the weights of the best epoch."""
    scores, snapshots = iter([-100.0, -90.0, -95.0, -91.0, -80.0]), []

    def fake_validate(model, *a, **k):
        snapshots.append({n: v.detach().clone() for n, v in model.state_dict().items()})
        return [next(scores), 0.0, 0.0]

    monkeypatch.setattr(S, "validate", fake_validate)
    out = tmp_path / "run"
    run = T.fit(
        tiny_model(),
        digits,
        TrainConfig(epochs=5, batch_size=100, patience=2, threads=1, quiet=True),
        out,
        val=digits.subset(torch.arange(50)),
    )
    assert run.stopped == "early-stopped" and len(run.metrics) == 4
    assert [r["val_elbo"] for r in run.metrics] == [-100.0, -90.0, -95.0, -91.0]
    best = snapshots[1]
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], v) and torch.equal(run.model.state_dict()[k], v) for k, v in best.items())
    assert not all(torch.equal(snapshots[3][k], v) for k, v in best.items())


# ------------------------------------------------------------------------------------------------ Python API


def test_fit_in_memory_writes_nothing(tmp_path, digits, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = vaekit.fit(tiny_model(), digits, TrainConfig(epochs=2, batch_size=100, threads=1, quiet=True))
    assert isinstance(run, vaekit.Run) and run.out is None and run.stopped == "finished"
    assert [r["epoch"] for r in run.metrics] == [1, 2]
    assert {"train_elbo", "train_recon", "train_kl", "lr", "step"} <= run.metrics[-1].keys()
    assert run.metrics[-1]["train_elbo"] > run.metrics[0]["train_elbo"]
    assert not run.model.training
    assert list(tmp_path.iterdir()) == []


def test_fit_takes_arrays_and_fits_an_autoencoders_code_gaussian(digits):
    x = (digits.x[:200].float() / 255).numpy()
    ae = tiny_model(model="ae")
    run = vaekit.fit(ae, x, TrainConfig(epochs=1, batch_size=100, threads=1, quiet=True))
    assert run.model.code_mean.abs().sum() > 0  # fitted, also without a run folder
    with pytest.raises(vaekit.VaekitError, match="shape"):
        vaekit.fit(tiny_model(), np.zeros((10, 5), np.float32), TrainConfig(epochs=1, quiet=True))


def test_without_tensorboard_training_is_unaffected(tmp_path, digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    assert vaekit.runlog._tensorboard(tmp_path) is None
    run = vaekit.fit(tiny_model(), digits, TrainConfig(epochs=1, batch_size=100, threads=1, quiet=True), tmp_path / "r")
    assert run.metrics and not (tmp_path / "r" / "tensorboard").exists()


# ------------------------------------------------------------------------------------- mixed precision, compile


def test_amp_and_compile_train_to_the_same_loss_as_fp32(tmp_path, small_npz):
    """bf16 autocast (where the CPU has it) and torch.compile change speed, not what is learned: after 3
    epochs on 1000 digits the training loss is within 1% of the plain fp32 run's. With bf16, one run compiles
    the autocast model (compiling costs ~20 s a run, so compile alone is left to a CPU without bf16) and one
    trains by the hand-written step in bf16."""
    from vaekit.config import cpu_has_bf16

    runs = {}
    variants = {"fp32": ["--amp", "off", "--no-compile"]}
    if cpu_has_bf16():
        variants["amp+compile"] = ["--amp", "--compile"]
        variants["amp"] = ["--amp", "--no-compile"]  # the hand-written step (mlp_step.py) in bf16
    else:
        variants["compile"] = ["--compile"]
        p = vaekit_cli("train", "--data", small_npz, *BASE, "--device", "cpu", "--amp", "--out", tmp_path / "x")
        assert_clean_error(p, "bf16")
    for name, flags in variants.items():
        p = vaekit_cli("train", "--data", small_npz, *BASE, "--out", tmp_path / name, *flags)
        assert p.returncode == 0, p.stderr
        runs[name] = vaekit.io.read_metrics(tmp_path / name)[-1]["train_loss"]
        assert json.loads((tmp_path / name / "config.json").read_text())["train"]["compile"] == ("compile" in name)
    for loss in runs.values():
        assert abs(loss - runs["fp32"]) < 0.01 * runs["fp32"], runs


def test_compile_failure_is_a_one_line_error(digits, monkeypatch):
    monkeypatch.setattr(torch, "compile", failing_compile)
    model = vaekit.build_model(ModelConfig(hidden=(16,), latent_dim=2))
    with pytest.raises(vaekit.VaekitError, match=r"--compile: torch.compile failed .*no C\+\+ compiler found\)"):
        T.fit(model, digits, TrainConfig(epochs=1, batch_size=100, val_fraction=0, compile=True, quiet=True))


# ------------------------------------------------------------------------------ DReG, time-budgeted training


@pytest.fixture(scope="module")
def synthetic_npz(tmp_path_factory) -> Path:
    """500 synthetic digits as an .npz: 475 to train on after the 5% held out, 9 steps of 50 an epoch."""
    from conftest import synthetic_digits

    d = synthetic_digits(500)
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    np.savez(path, x=d.x[:, 0].numpy(), y=d.y.numpy())
    return path


TINY = ["--hidden", 32, "--latent-dim", 4, "--batch-size", 50, "--threads", 1, "--quiet"]
SYNTHETIC_STEPS = 475 // 50  # steps an epoch of synthetic_npz with TINY's batch


def test_dreg_run_resumes_bit_identically(tmp_path, synthetic_npz, monkeypatch):
    """--estimator dreg trains (the loss is the IWAE bound) and, stopped by SIGINT mid-epoch, resumes to the
    very weights, checkpoint and metrics of the run that was never stopped."""
    flags = ["train", "--data", synthetic_npz, *TINY, "--epochs", 3, "--iw-k", 4, "--estimator", "dreg"]
    assert main_cli(*flags, "--out", tmp_path / "ref") == 0
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["train"]["estimator"] == "dreg"
    lr = sigint_at_step(monkeypatch, 13)
    assert main_cli(*flags, "--out", tmp_path / "run") == 130
    assert ckpt_meta(tmp_path / "run")["step"] == 14
    monkeypatch.setattr(S, "learning_rate", lr)
    assert main_cli(*flags, "--out", tmp_path / "run", "--resume") == 0
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def _cosine(lr: float, elapsed: float, budget: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * min(elapsed, budget) / budget))


def test_time_budget_ends_the_run_and_resume_continues_its_schedule(tmp_path, synthetic_npz, monkeypatch, capsys):
    """--time-budget 2s, stopped by SIGINT after 0.7 s and resumed: the resumed run's first learning rate is the
    cosine at the checkpoint's elapsed seconds, every step's rate is the cosine at the run's clock, and the run
    ends within an epoch of the budget with a complete model folder, its last epoch marked partial (the model
    as it was at the budget). Resumed again, it has nothing left to do."""
    budget, out, calls, sent = 2.0, tmp_path / "run", [], []
    flags = ["train", "--data", synthetic_npz, *TINY, "--time-budget", "2s", "--schedule", "cosine", "--out", out]
    lr = S.learning_rate

    def recorded(cfg, step, total, epoch, elapsed=0.0):
        # the first run: stop it a third of the way in, inside an epoch (a SIGINT during an epoch's last step
        # stops at its end, and the resumed run first writes that epoch's row: not the case tested here)
        if elapsed >= 0.7 and not sent and step % SYNTHETIC_STEPS != SYNTHETIC_STEPS - 1:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        value = lr(cfg, step, total, epoch, elapsed)
        calls.append((step, elapsed, value))
        return value

    monkeypatch.setattr(S, "learning_rate", recorded)
    assert main_cli(*flags) == 130
    saved = ckpt_meta(out)
    assert 0.7 <= saved["seconds"] < budget and 0 < saved["step_in_epoch"] < SYNTHETIC_STEPS
    calls.clear()
    assert main_cli(*flags, "--resume") == 0
    first = calls[0]
    assert first[0] == saved["step"] and first[1] == saved["seconds"]  # the schedule goes on where it was
    assert first[2] == pytest.approx(_cosine(1e-3, saved["seconds"], budget), rel=1e-12)
    steps_taken = [c for c in calls if c[0] >= saved["step"]]  # (not the metrics rows' lr of step - 1)
    assert all(v == pytest.approx(_cosine(1e-3, t, budget), rel=1e-12) for _, t, v in steps_taken)
    assert [t for _, t, _ in steps_taken] == sorted(t for _, t, _ in steps_taken)
    rows = vaekit.io.read_metrics(out)
    assert rows[-1]["seconds"] >= budget
    assert rows[-1]["seconds"] - budget <= max(r["epoch_seconds"] for r in rows) + 0.5  # one epoch (+ load slack)
    assert 0 < rows[-1].get("partial_epoch", 1.0) <= 1.0 and all("partial_epoch" not in r for r in rows[:-1])
    assert rows[-1]["lr"] < 0.05 * 1e-3  # the cosine has run its course
    assert "(time-budget, " in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "checkpoint/state.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["train"]["time_budget"] == "2s"
    model, weights = vaekit.load(out), load_file(str(out / "model.safetensors"))
    assert model.is_vae
    assert main_cli(*flags, "--resume") == 0  # the budget is spent: nothing is trained, nothing is added
    assert len(vaekit.io.read_metrics(out)) == len(rows)
    assert all(torch.equal(v, load_file(str(out / "model.safetensors"))[k]) for k, v in weights.items())


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "5x"])
def test_bad_time_budget_is_a_one_line_error_and_writes_nothing(tmp_path, synthetic_npz, bad, capsys):
    out = tmp_path / "run"
    rc = main_cli("train", "--data", synthetic_npz, *TINY, "--time-budget", bad, "--out", out)
    assert_clean_error(subprocess.CompletedProcess([], rc, "", capsys.readouterr().err), "--time-budget", "60m")
    assert not out.exists()
