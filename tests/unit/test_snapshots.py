"""vaekit.snapshots: codes saved after every epoch through fit's on_epoch callback (and nothing else changed
by it), and the animation built from them (synthetic digits, a tiny 2-D model, seconds)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vaekit.config import ModelConfig, TrainConfig
from vaekit.evaluate import posterior_means
from vaekit.models import build_model
from vaekit.snapshots import FOLDER, LatentSnapshots, latent_animation, load_snapshots
from vaekit.train import fit


def tiny(model: str = "vae"):
    torch.manual_seed(0)
    return build_model(ModelConfig(model=model, latent_dim=2, hidden=(32,), input_shape=(1, 28, 28)))


def small(digits):
    return digits.subset(torch.arange(200))


CFG = TrainConfig(epochs=2, batch_size=100, quiet=True, seed=0)


def test_one_snapshot_per_epoch_and_the_last_is_the_final_model(digits, tmp_path):
    x = digits.batch(slice(0, 64))
    run = fit(tiny(), small(digits), CFG, tmp_path / "run", on_epoch=LatentSnapshots(tmp_path / "run", x))
    snaps = load_snapshots(tmp_path / "run")
    assert [e for e, _ in snaps] == [0, 1, 2]
    assert all(z.shape == (64, 2) and z.dtype == np.float32 for _, z in snaps)
    np.testing.assert_array_equal(snaps[-1][1], posterior_means(run.model, x).numpy())
    assert not np.array_equal(snaps[0][1], snaps[-1][1])  # the codes moved
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run" / FOLDER).iterdir())


def test_the_callback_changes_no_weight(digits, tmp_path):
    x = digits.batch(slice(0, 64))
    with_cb = fit(tiny(), small(digits), CFG, tmp_path / "a", on_epoch=LatentSnapshots(tmp_path / "a", x)).model
    without = fit(tiny(), small(digits), CFG, tmp_path / "b").model
    for (k, a), b in zip(with_cb.state_dict().items(), without.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_run_without_snapshots_has_none(tmp_path):
    assert load_snapshots(tmp_path) == []


def test_animation_has_one_frame_per_snapshot_and_writes_the_frames(tmp_path):
    g = np.random.default_rng(0)
    frames_a = [(e, g.normal(size=(50, 2)).astype(np.float32) * (e + 1)) for e in range(4)]
    frames_b = [(e, g.normal(size=(50, 2)).astype(np.float32)) for e in range(3)]  # shorter: holds its last
    labels = np.arange(50) % 10
    path = latent_animation([("AE", frames_a), ("VAE", frames_b)], labels, tmp_path / "f.gif", tmp_path / "frames")
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 4
        w, h = im.size
        assert w > 1.5 * h  # two panels side by side
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:03d}.png" for i in range(4)]
