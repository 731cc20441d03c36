"""Data bigger than memory through the CLI: `vaekit train` on a .npy that VAEKIT_IN_MEMORY=no keeps on disk
trains the very model the in-memory run does (same permutations, same batches, a validation split taken
as a view). The CLI in-process (no interpreter start-up), a small synthetic file and a tiny model: seconds."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from vaekit import cli
from vaekit.data import Rows

FLAGS = ("--epochs", 2, "--batch-size", 32, "--hidden", 16, "--latent-dim", 2, "--threads", 1, "--quiet")


def test_training_from_disk_equals_training_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (320, 8, 8), dtype=np.uint8))
    reads, read = [], Rows.read
    monkeypatch.setattr(Rows, "read", lambda self, idx: reads.append(len(self)) or read(self, idx))
    for mode in ("yes", "no"):
        monkeypatch.setenv("VAEKIT_IN_MEMORY", mode)
        args = ("train", "--data", tmp_path / "x.npy", *FLAGS, "--out", tmp_path / mode)
        assert cli.main([str(a) for a in args]) == 0
        assert bool(reads) == (mode == "no")  # batches came from disk in the second run only
    assert set(reads) == {304, 16}  # the training set and the validation split (5%), both read from disk
    a, b = load_file(str(tmp_path / "yes" / "model.safetensors")), load_file(str(tmp_path / "no" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
