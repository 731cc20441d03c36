"""Data bigger than memory through the CLI: `vaekit train` on a .npy that VAEKIT_IN_MEMORY=no keeps on disk
trains the very model the in-memory run does (same permutations, same batches, a validation split taken
as a view). A small synthetic file and a tiny model: seconds."""

from __future__ import annotations

import numpy as np
import torch
from conftest import run_cli
from safetensors.torch import load_file

FLAGS = ("--epochs", 2, "--batch-size", 32, "--hidden", 16, "--latent-dim", 2, "--threads", 1, "--quiet")


def test_training_from_disk_equals_training_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (320, 8, 8), dtype=np.uint8))
    for mode in ("yes", "no"):
        run_cli(
            "train",
            "--data",
            tmp_path / "x.npy",
            *FLAGS,
            "--out",
            tmp_path / mode,
            env={"VAEKIT_IN_MEMORY": mode},
            check=True,
        )
    a, b = load_file(str(tmp_path / "yes" / "model.safetensors")), load_file(str(tmp_path / "no" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
