"""Pictures: image grids (Pillow, exact pixels) and plots (matplotlib, headless).

    grid / save_grid        images -> one tiled PNG (the CLI's sample / reconstruct / interpolate)
    training_curves         ELBO, reconstruction term and KL per epoch, one line per run
    image_rows              labelled rows of small images, optionally a caption under each
    sample_panels           image grids side by side, one title each
    latent_scatter          2-D codes coloured by label, optionally with generated codes on top
    manifold                the 2-D VAE decoded on a grid beside its latent scatter

Every plot function takes plain tensors/arrays and a path, writes one PNG and returns the path; without a
path it returns the PNG as a vaekit.display.Picture, which draws itself in Jupyter.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from vaekit.display import Picture

DPI = 100


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile images (N, C, H, W) or (N, H, W) with values in [0, 1] into one PIL image, `nrow` per row."""
    x = images.detach().float().cpu().clamp(0, 1)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() == 2:  # flat vectors: show as a square if possible
        side = math.isqrt(x.shape[1])
        x = x.view(-1, 1, side, side) if side * side == x.shape[1] else x.view(-1, 1, 1, x.shape[1])
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = x[i].permute(1, 2, 0).numpy()
    arr = (canvas * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr[..., :3], mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, nrow, scale=scale).save(path)
    return path


# ------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path | None) -> Path | Picture:
    """Write the figure to `path` and return the path; with path None, return it as a Picture."""
    if path is None:
        from vaekit.display import Picture

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
        _plt().close(fig)
        return Picture(buf.getvalue())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    _plt().close(fig)
    return path


def _image(x: torch.Tensor) -> np.ndarray:
    """One image (C, H, W) / (H, W) / (D,) in [0, 1] as an (H, W) or (H, W, 3) array for imshow."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 1:
        side = math.isqrt(x.numel())
        x = x.view(side, side) if side * side == x.numel() else x.view(1, -1)
    if x.dim() == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.numpy()


def _show(ax, x: torch.Tensor) -> None:
    img = _image(x)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def training_curves(
    histories: dict[str, list[dict]], path: str | Path | None = None, autoencoders: set[str] = frozenset()
) -> Path | Picture:
    """Three panels per epoch: ELBO, reconstruction term E_q[log p(x|z)], KL; one colour per run.

    histories: run name -> its metrics.jsonl rows. Runs named in `autoencoders` appear in the
    reconstruction panel only (an AE has no KL and its loss is no bound on anything).
    Solid lines: training (mean over the epoch); dashed: validation at the epoch's end.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("elbo", "ELBO (nats, higher is better)"),
        ("recon", "reconstruction  E_q[log p(x|z)]  (nats)"),
        ("kl", "KL(q(z|x) || p(z))  (nats)"),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        is_ae = name in autoencoders
        for ax, (key, _title) in zip(axes, panels):
            if is_ae and key != "recon":
                continue
            c = colors[i % len(colors)]
            ax.plot(ep, [r[f"train_{key}"] for r in rows], color=c, marker="o", ms=2.5, label=f"{name} train")
            if f"val_{key}" in rows[0]:
                ax.plot(ep, [r[f"val_{key}"] for r in rows], color=c, ls="--", marker="o", ms=2.5, label=f"{name} val")
    for ax, (_key, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
            if key in ("elbo", "recon"):  # the first epoch is far below the rest: zoom on the useful part
                ys = np.concatenate([ln.get_ydata() for ln in ax.lines])
                lo, hi = np.percentile(ys, 5), ys.max()
                ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.05 * (hi - lo))
        else:
            ax.text(0.5, 0.5, "no VAE runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def image_rows(
    rows: list[tuple[str, torch.Tensor]],
    path: str | Path | None = None,
    captions: list[list[str]] | None = None,
    col_titles: list[str] | None = None,
    title: str | None = None,
    size: float = 0.85,
) -> Path | Picture:
    """Rows of images, each (N, *shape) in [0, 1], a label at the left of each row, an optional caption
    under every image (captions[row][col]) and optional column titles."""
    plt = _plt()
    n_rows, n_cols = len(rows), max(len(imgs) for _, imgs in rows)
    cap_h = 0.22 if captions else 0.0
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(1.6 + size * n_cols, (size + cap_h) * n_rows + 0.4 + (0.3 if title else 0)),
        squeeze=False,
    )
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c < len(imgs):
                _show(ax, imgs[c])
                if captions and captions[r] and c < len(captions[r]) and captions[r][c]:
                    ax.set_xlabel(captions[r][c], fontsize=7, labelpad=1)
                if r == 0 and col_titles and c < len(col_titles):
                    ax.set_title(col_titles[c], fontsize=8)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9, labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.2)
    return _save(fig, path)


def sample_panels(
    panels: list[tuple[str, torch.Tensor]], path: str | Path | None = None, nrow: int = 10
) -> Path | Picture:
    """Image grids side by side (each (N, *shape) in [0, 1], `nrow` images per row), a title above each."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.9), squeeze=False)
    for ax, (title, imgs) in zip(axes[0], panels):
        ax.imshow(np.asarray(grid(imgs, nrow=nrow)), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def _scatter(ax, xy: np.ndarray, labels: np.ndarray | None, s: float = 4):
    if labels is None:
        return ax.scatter(xy[:, 0], xy[:, 1], s=s, c="tab:blue", alpha=0.6, linewidths=0)
    return ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=s, alpha=0.7, linewidths=0)


def latent_scatter(panels: list[dict], path: str | Path | None = None) -> Path | Picture:
    """One scatter per panel. Each panel: {"title", "xy" (N, 2), "labels" (N,) or None,
    "xlabel", "ylabel", optional "extra" (M, 2) drawn as grey crosses with "extra_label"}."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if p.get("extra") is not None:
            e = np.asarray(p["extra"])
            ax.scatter(
                e[:, 0],
                e[:, 1],
                marker="x",
                s=9,
                c="0.45",
                alpha=0.55,
                linewidths=0.6,
                label=p.get("extra_label", "generated"),
                zorder=1,
            )
        sc = _scatter(ax, np.asarray(p["xy"]), None if p.get("labels") is None else np.asarray(p["labels"]))
        sc.set_zorder(2)
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel(p.get("xlabel", "z1"))
        ax.set_ylabel(p.get("ylabel", "z2"))
        if p.get("labels") is not None:
            cb = fig.colorbar(sc, ax=ax, ticks=range(10), fraction=0.046, pad=0.02)
            cb.set_label("digit")
            cb.solids.set_alpha(1)
        if p.get("extra") is not None:
            ax.legend(loc="upper right", fontsize=7, markerscale=1.5)
        ax.grid(alpha=0.2)
    fig.tight_layout()
    return _save(fig, path)


def manifold(
    images: torch.Tensor,
    n: int,
    axis_values: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray | None,
    path: str | Path | None = None,
) -> Path | Picture:
    """Left: images (n*n, *shape) decoded on an n x n grid of 2-D codes (row-major, z2 decreasing down the
    rows, as vaekit.latent.normal_grid makes them), axis_values (n,) the grid's z values. Right: the
    latent codes (N, 2) of test data coloured by label, with the grid's extent drawn as a rectangle."""
    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12.5, 6), gridspec_kw={"width_ratios": [1, 1.12]})
    img = np.asarray(grid(images, nrow=n, pad=0))
    lo, hi = float(axis_values[0]), float(axis_values[-1])
    half = (hi - lo) / (n - 1) / 2
    a0.imshow(
        img, cmap="gray", vmin=0, vmax=255, extent=(lo - half, hi + half, lo - half, hi + half), interpolation="nearest"
    )
    a0.set_title(f"decoded means on a {n}x{n} grid  z = Phi^-1(q), q in [0.05, 0.95]", fontsize=10)
    a0.set_xlabel("z1")
    a0.set_ylabel("z2")
    sc = _scatter(a1, codes, labels, s=5)
    a1.add_patch(
        plt.Rectangle(
            (lo, lo), hi - lo, hi - lo, fill=False, ec="k", lw=1.2, ls="--", label="extent of the grid on the left"
        )
    )
    a1.set_title("posterior means of test digits (the 2-D latent itself)", fontsize=10)
    a1.set_xlabel("z1")
    a1.set_ylabel("z2")
    a1.set_aspect("equal", adjustable="datalim")
    a1.legend(loc="upper right", fontsize=8)
    a1.grid(alpha=0.2)
    if labels is not None:
        cb = fig.colorbar(sc, ax=a1, ticks=range(10), fraction=0.046, pad=0.02)
        cb.set_label("digit")
        cb.solids.set_alpha(1)
    fig.tight_layout()
    return _save(fig, path)
