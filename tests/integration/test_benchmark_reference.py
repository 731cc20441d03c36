"""benchmarks/reference.py, the PyTorch examples VAE the speed benchmarks compare against: its JSON lines,
and its losses against an independent computation on a tiny synthetic IDX set (no MNIST, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error
from torch import nn

from vaekit.data.idx import write_idx

REFERENCE = ROOT / "benchmarks" / "reference.py"
KEYS = {"epoch", "train_seconds", "test_seconds", "train_loss", "test_loss"}
SEED, BATCH = 3, 16


def reference(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, str(REFERENCE), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def synthetic_idx(folder: Path) -> dict[str, np.ndarray]:
    """40 training and 20 test images (uint8 (N, 28, 28)) of sparse strokes of varied density and grey level,
    so the loss depends on which image meets which noise draw; written as the four MNIST IDX files."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 40), ("t10k", 20)):
        density = rng.uniform(0.05, 0.5, (n, 1, 1))
        level = rng.integers(100, 256, (n, 1, 1))
        images = ((rng.random((n, 28, 28)) < density) * level).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
        arrays[prefix] = images
    return arrays


def oracle_losses(train_images: np.ndarray, test_images: np.ndarray) -> tuple[float, float]:
    """One epoch of the example, written out by hand: the same seed, layers made in the same order, the same
    DataLoader draws (over ready-made tensors), BCE and KL from their formulas. (train, test) nats/example."""
    torch.manual_seed(SEED)
    fc1, fc21, fc22, fc3, fc4 = (
        nn.Linear(784, 400),
        nn.Linear(400, 20),
        nn.Linear(400, 20),
        nn.Linear(20, 400),
        nn.Linear(400, 784),
    )
    params = [p for layer in (fc1, fc21, fc22, fc3, fc4) for p in layer.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)

    def neg_elbo(x):  # x (B, 784) in [0, 1] -> summed over the batch, nats
        h = torch.relu(x @ fc1.weight.T + fc1.bias)
        mu, logvar = h @ fc21.weight.T + fc21.bias, h @ fc22.weight.T + fc22.bias  # (B, 20)
        z = mu + torch.randn(mu.shape) * torch.exp(0.5 * logvar)
        p = torch.sigmoid(torch.relu(z @ fc3.weight.T + fc3.bias) @ fc4.weight.T + fc4.bias)  # (B, 784)
        bce = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()
        return bce + kl

    def loader(images, shuffle):
        x = torch.from_numpy(images).reshape(len(images), 784).float() / 255
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=BATCH, shuffle=shuffle)

    train_sum = 0.0
    for (x,) in loader(train_images, shuffle=True):
        opt.zero_grad()
        loss = neg_elbo(x)
        loss.backward()
        train_sum += loss.item()
        opt.step()
    with torch.no_grad():
        test_sum = sum(neg_elbo(x).item() for (x,) in loader(test_images, shuffle=False))
    return train_sum / len(train_images), test_sum / len(test_images)


def test_reference_losses_match_an_independent_computation(tmp_path):
    arrays = synthetic_idx(tmp_path)
    p = reference("--idx-dir", tmp_path, "--epochs", 1, "--batch-size", BATCH, "--seed", SEED, "--threads", 1)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 1 and set(rows[0]) == KEYS and rows[0]["epoch"] == 1
    assert rows[0]["train_seconds"] >= 0 and rows[0]["test_seconds"] >= 0
    torch.set_num_threads(1)  # the reference's thread count, so the matmuls sum in the same order
    train_loss, test_loss = oracle_losses(arrays["train"], arrays["t10k"])
    assert rows[0]["train_loss"] == pytest.approx(train_loss, rel=1e-6)
    assert rows[0]["test_loss"] == pytest.approx(test_loss, rel=1e-6)


def test_reference_refuses_a_missing_idx_file(tmp_path):
    assert_clean_error(reference("--idx-dir", tmp_path, "--epochs", 1), "train-images-idx3-ubyte")
