"""How a latent space forms: the codes of a fixed set of examples after every epoch, and their animation.

    snap = LatentSnapshots(run, x)           # x (N, *shape) in [0, 1]: the examples to follow
    train(cfg, run, on_epoch=snap)           # writes RUN/snapshots/epoch_000.npy (before training), 001, ...
    frames = load_snapshots(run)             # [(epoch, codes (N, D) float32), ...] in epoch order
    latent_animation([("AE", frames_ae), ("VAE", frames_vae)], labels, "formation.gif", "frames/")

The codes are posterior means E_q[z|x] (deterministic: taking them draws no random numbers, so a run with
snapshots trains the same weights as one without). Each file is written atomically; a resumed run rewrites
the epochs it repeats.
"""

from __future__ import annotations

import io as _io
import re
from pathlib import Path

import numpy as np
import torch

from vaekit import io

FOLDER = "snapshots"
_NAME = re.compile(r"epoch_(\d{3,})\.npy$")


class LatentSnapshots:
    """A training callback, `(model, epoch) -> None`: saves the codes of `x` (N, *shape) after `epoch`
    epochs (0: the initial weights) to RUN/snapshots/epoch_###.npy as float32 (N, D)."""

    def __init__(self, run: str | Path, x: torch.Tensor, batch_size: int = 1000):
        self.folder = Path(run) / FOLDER
        self.x, self.batch_size = x, batch_size

    def __call__(self, model, epoch: int) -> None:
        from vaekit.evaluate import posterior_means

        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                dev = next(model.parameters()).device
                z = posterior_means(model, self.x, self.batch_size, dev).float().cpu().numpy()
        finally:
            model.train(was_training)
        self.folder.mkdir(parents=True, exist_ok=True)
        io.atomic_write(self.folder / f"epoch_{epoch:03d}.npy", lambda tmp: _save_npy(tmp, z))


def _save_npy(path: str, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, a)


def load_snapshots(run: str | Path) -> list[tuple[int, np.ndarray]]:
    """The run's snapshots as (epoch, codes (N, D)) in epoch order; [] when it has none."""
    folder = Path(run) / FOLDER
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), np.load(p, allow_pickle=False)))
    return sorted(found, key=lambda t: t[0])


def _limits(codes: np.ndarray, margin: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits holding the 0.5th-99.5th percentile box of `codes` (N, 2), widened by `margin` each side."""
    lo, hi = np.percentile(codes, 0.5, axis=0), np.percentile(codes, 99.5, axis=0)
    pad = (hi - lo) * margin + 1e-6
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def latent_animation(
    panels: list[tuple[str, list[tuple[int, np.ndarray]]]],
    labels: np.ndarray | None,
    path: str | Path,
    frames_dir: str | Path | None = None,
    ms_per_frame: int = 600,
) -> Path:
    """A GIF of 2-D codes over training, one scatter per panel side by side (e.g. AE beside VAE).

    panels: (title, [(epoch, codes (N, 2)), ...]) each; frame i shows every panel's i-th snapshot (panels
    with fewer snapshots hold their last one). Each panel keeps the axes of its final snapshot, so codes
    spreading out or closing in show as movement. The frames are also written as PNGs to `frames_dir`
    (frame_###.png) when given. Returns `path`; the last frame is held three times as long."""
    from PIL import Image

    from vaekit.figures import _plt, _scatter

    plt = _plt()
    n_frames = max(len(f) for _, f in panels)
    limits = [_limits(f[-1][1]) for _, f in panels]
    images = []
    for i in range(n_frames):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
        for ax, (title, frames), (xl, yl) in zip(axes[0], panels, limits):
            epoch, codes = frames[min(i, len(frames) - 1)]
            _scatter(ax, codes[:, :2], labels, s=3)
            ax.set_xlim(*xl)
            ax.set_ylim(*yl)
            ax.set_title(f"{title}, epoch {epoch}", fontsize=10)
            ax.set_xlabel("z1")
            ax.set_ylabel("z2")
            ax.grid(alpha=0.2)
        fig.tight_layout()
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        img = Image.open(buf).convert("RGB")
        images.append(img)
        if frames_dir is not None:
            Path(frames_dir).mkdir(parents=True, exist_ok=True)
            png = Path(frames_dir) / f"frame_{i:03d}.png"
            io.atomic_write(png, lambda tmp, im=img: im.save(tmp, format="PNG"))
    path = Path(path)
    durations = [ms_per_frame] * (len(images) - 1) + [3 * ms_per_frame]
    io.atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0
        ),
    )
    return path
