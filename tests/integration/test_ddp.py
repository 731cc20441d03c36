"""`torchrun -m vaekit train` on CPU (gloo): DDP against one process at the same global batch, a DDP run
resumed (typed --resume, and by itself after a rank is killed under --max-restarts), and two nodes.

A step sees the same data and the same noise whatever the number of processes: the same permutation, each
rank a slice of the global batch (tensor_split: 15 over 2 ranks is 8 + 7), the binarization and the
reparameterization noise drawn for the whole global batch from streams every rank shares, each rank's mean
loss weighted by its share; DDP averages the gradients. So DDP and one process differ only in the float32
summation order of the gradients (the all-reduce, two half-batch sums instead of one), which moves a step's
update by a few ulps; over the run it stays far below the tolerance 1e-5 (weights are O(0.5)).

Numbers seen (1000 MNIST digits, MLP 64 hidden, 4 latent, batch 15 (8 + 7 per rank), 2 epochs = 126
steps, 1 thread per process):
  VAE: max |w1 - w2| = 6.0e-8 (before the shared noise: 0.081; shared noise but equal per-rank means on
       unequal shards: 0.02); train and validation ELBO equal to 6 digits.
  AE (default MLP, batch 50): max |w1 - w2| = 5.8e-6; train ELBO -214.0744 in both.
A DDP run resumed from its checkpoint, by --resume or by torchrun's restart after `kill -9` of a rank,
ends bit-identical to an uninterrupted DDP run; two torchrun agents (--nnodes 2, c10d rendezvous on
127.0.0.1) train bit-identically to one agent with 2 processes (a 2-rank all-reduce is a + b either way).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import numpy as np
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

import vaekit.train as T
from vaekit import checkpoint as ckpt

pytestmark = pytest.mark.slow
FLAGS = ["--batch-size", 50, "--threads", 1, "--checkpoint-every", 7]
# a small VAE whose global batch does not split evenly over 2 ranks; 950 training examples: 63 steps an epoch
VAE = ["--hidden", 64, "--latent-dim", 4, "--batch-size", 15, "--threads", 1, "--checkpoint-every", 5]
TOL = 1e-5  # max |w| difference, DDP against one process (see the docstring)


def _env() -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONFAULTHANDLER": "1"}  # a crash shows its stack
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CI"):
        e.pop(k, None)
    return e


def command(out: Path, flags, torchrun: list[str] | None = None) -> list[str]:
    """`vaekit train FLAGS --out OUT`, in one process or under torchrun with its arguments `torchrun`."""
    launch = [sys.executable, "-m", "vaekit"]
    if torchrun is not None:
        launch = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "vaekit"]
    return [*launch, "train", *map(str, flags), "--out", str(out)]


def train(out: Path, *flags, procs: int = 1, base=FLAGS) -> subprocess.CompletedProcess:
    torchrun = None if procs == 1 else ["--standalone", "--nproc-per-node", str(procs)]
    p = subprocess.run(command(out, [*flags, *base], torchrun), capture_output=True, text=True, timeout=300, env=_env())
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


def same_files(a: Path, b: Path, names=("model.safetensors", "checkpoint/state.safetensors")) -> None:
    """Bit-identical weights and checkpoints (Adam's moments, every RNG state), and the same metrics but
    for the timings."""
    for name in names:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    drop = lambda rows: [{k: v for k, v in r.items() if k not in T.TIMING_KEYS} for r in rows]  # noqa: E731
    assert drop(metrics(a)) == drop(metrics(b))


@pytest.fixture(scope="module")
def vae(tmp_path_factory, data) -> Path:
    """The same VAE trained in one process (runs/one) and by 2 ranks (runs/two): the references."""
    runs = tmp_path_factory.mktemp("vae")
    train(runs / "one", "--data", data, "--epochs", 2, base=VAE)
    train(runs / "two", "--data", data, "--epochs", 2, base=VAE, procs=2)
    return runs


def test_vae_two_processes_equal_one(vae):
    assert max_diff(vae / "one", vae / "two") < TOL  # seen: 6.0e-8; 0.081 when each rank drew its own noise
    for r1, r2 in zip(metrics(vae / "one"), metrics(vae / "two")):
        for k in ("train_elbo", "train_kl", "val_elbo", "val_kl"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-6), k


def test_vae_resumed_under_torchrun_is_bit_identical(tmp_path, data, vae):
    """1 epoch, then --resume to 2, under torchrun: the uninterrupted DDP run's weights, bit for bit."""
    train(tmp_path / "resumed", "--data", data, "--epochs", 1, base=VAE, procs=2)
    train(tmp_path / "resumed", "--data", data, "--epochs", 2, "--resume", base=VAE, procs=2)
    same_files(vae / "two", tmp_path / "resumed")
    assert {"rng.torch.r0", "rng.torch.r1"} <= load_file(str(vae / "two" / "checkpoint/state.safetensors")).keys()


def worker_pids(agent: int) -> dict[int, int]:
    """{rank: pid} of the workers a torchrun agent started (its children, RANK in their environment)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
            found[int(env["RANK"])] = int(proc.name)
        except (OSError, KeyError, ValueError, IndexError):  # gone meanwhile, or not a worker
            continue
    return found


def test_a_rank_killed_mid_epoch_is_restarted_and_the_run_resumes_by_itself(tmp_path, data, vae):
    """torchrun --max-restarts 1; once the first mid-epoch checkpoint exists, both ranks are stopped (so the
    kill lands at a known point), rank 1 gets SIGKILL, rank 0 goes on and fails on its next collective; the
    agent restarts the group, which resumes from the checkpoint with no --resume typed: the uninterrupted
    run's weights, bit for bit."""
    out, flags = tmp_path / "killed", ["--data", data, "--epochs", 2, *VAE]
    torchrun = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.1"]
    p = subprocess.Popen(command(out, flags, torchrun), stdout=PIPE, stderr=PIPE, text=True, env=_env())
    try:
        file, deadline = ckpt.path(out), time.monotonic() + 200
        while ckpt.saved_meta(file).get("step", 0) == 0:  # under --max-restarts there is one at step 0
            assert p.poll() is None and time.monotonic() < deadline, "no mid-epoch checkpoint was written"
            time.sleep(0.005)
        ranks = worker_pids(p.pid)
        for pid in ranks.values():
            os.kill(pid, signal.SIGSTOP)
        at = ckpt.saved_meta(file)
        os.kill(ranks[1], signal.SIGKILL)
        os.kill(ranks[0], signal.SIGCONT)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert at["epoch"] == 0 and 0 < at["step_in_epoch"] < 63, at  # the kill landed mid-epoch, after a checkpoint
    assert stderr.count(": resuming ") == 1 and stdout.count("run: ") == 1
    same_files(vae / "two", out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_what_one_node_does(tmp_path, data, vae):
    """Two torchrun agents, one process each, meeting by c10d rendezvous on 127.0.0.1, as two machines would;
    checkpoints spaced by time (every 50 ms of rank 0's clock: many in a run) keep the ranks in step."""
    rdzv = [
        *("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"),
        *("--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "vaekit-two-nodes"),
    ]
    cmd = command(tmp_path / "nodes", ["--data", data, "--epochs", 2, *VAE, "--checkpoint-every", "0.05s"], rdzv)
    logs = [tmp_path / f"agent{i}.log" for i in range(2)]  # files, not pipes: an undrained pipe can block an agent
    agents = [subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env()) for log in logs]
    try:
        for a in agents:
            a.wait(timeout=300)
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    said = [log.read_text() for log in logs]
    assert [a.returncode for a in agents] == [0, 0], said
    assert sum(text.count("run: ") for text in said) == 1  # rank 0's agent alone reports
    same_files(vae / "two", tmp_path / "nodes")
