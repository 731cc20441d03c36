"""`torchrun --nproc-per-node 2 -m vaekit train` on CPU (gloo) against one process at the same global batch.

A step sees the same data whatever the number of processes (same permutation, each rank a slice of the
global batch, the binarization drawn for the whole global batch), and DDP averages the gradients, so:
  - an autoencoder (no sampling) trains to the same weights up to float summation order;
  - a VAE differs only by its reparameterization noise (each rank draws its own), so its ELBO is close
    and its weights are not comparable element by element.
A DDP run resumed from its checkpoint ends bit-identical to an uninterrupted DDP run (each rank's RNG
states are in the checkpoint).

Numbers seen (1000 MNIST digits, batch 50, 2 epochs, 1 thread per process):
  AE:  max |w1 - w2| = 5.8e-6; train ELBO -214.0744 in both.
  VAE: train ELBO -223.14 (1 process) vs -223.45 (2 processes); max |w1 - w2| = 0.048.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

import vaekit.train as T

pytestmark = pytest.mark.slow
FLAGS = ["--batch-size", 50, "--threads", 1, "--checkpoint-every", 7]


def _env() -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CI"):
        e.pop(k, None)
    return e


def train(out: Path, *flags, procs: int = 1) -> subprocess.CompletedProcess:
    launch = (
        [sys.executable, "-m", "vaekit"]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            "-m",
            "vaekit",
        ]
    )
    p = subprocess.run(
        [*launch, "train", *map(str, flags), *map(str, FLAGS), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert p.returncode == 0, p.stderr
    return p


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    return max((ta[k] - tb[k]).abs().max().item() for k in ta)


@pytest.fixture(scope="module")
def data(tmp_path_factory, mnist_train) -> Path:
    path = tmp_path_factory.mktemp("data") / "mnist1k.npz"
    np.savez(path, x=mnist_train.x[:1000, 0].numpy(), y=mnist_train.y[:1000].numpy())
    return path


def test_autoencoder_two_processes_match_one(tmp_path, data):
    one = train(tmp_path / "one", "--data", data, "--model", "ae", "--epochs", 2)
    two = train(tmp_path / "two", "--data", data, "--model", "ae", "--epochs", 2, procs=2)
    assert max_diff(tmp_path / "one", tmp_path / "two") < 1e-4
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    for r1, r2 in zip(m1, m2):
        for k in ("train_elbo", "val_elbo"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-5), k
    # rank 0 alone speaks and writes: one summary line, one line per epoch, the same files
    assert two.stdout.count("run: ") == 1 and one.stdout.count("run: ") == 1
    assert [ln.split()[1] for ln in two.stderr.splitlines() if ln.startswith("epoch ")] == ["1/2", "2/2"]
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one")


def test_vae_two_processes_close_to_one_and_resume_exactly(tmp_path, data):
    train(tmp_path / "one", "--data", data, "--epochs", 2)
    train(tmp_path / "two", "--data", data, "--epochs", 2, procs=2)
    e1, e2 = metrics(tmp_path / "one")[-1]["train_elbo"], metrics(tmp_path / "two")[-1]["train_elbo"]
    assert e2 == pytest.approx(e1, rel=0.01)  # seen: -223.14 vs -223.45
    assert max_diff(tmp_path / "one", tmp_path / "two") < 0.5  # seen: 0.048 (the noise differs per rank)
    # 1 epoch, then --resume to 2, under torchrun: bit-identical to the uninterrupted DDP run
    train(tmp_path / "resumed", "--data", data, "--epochs", 1, procs=2)
    train(tmp_path / "resumed", "--data", data, "--epochs", 2, "--resume", procs=2)
    for name in ("model.safetensors", "checkpoint/state.safetensors"):
        a, b = load_file(str(tmp_path / "two" / name)), load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert {"rng.torch.r0", "rng.torch.r1"} <= a.keys()
    drop = lambda rows: [{k: v for k, v in r.items() if k not in T.TIMING_KEYS} for r in rows]  # noqa: E731
    assert drop(metrics(tmp_path / "two")) == drop(metrics(tmp_path / "resumed"))
