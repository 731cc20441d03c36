"""Pictures of the claims (claims.py, claims_latent.py); the same conventions as figures.py.

    hole_maps             C1  per model: the decoded grid over its codes, and the classifier's confidence map
                              with the codes on top; AE beside VAE
    neighbourhood_curves  C2  agreement with the digit's label and confidence vs radius, AE vs VAE, per setting

Each takes plain results and a path, writes one PNG and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit.claims_latent import HoleMap, Neighbourhood
from vaekit.figures import _plt, _save, grid


def _extent(h: HoleMap) -> tuple[float, float, float, float]:
    """The grid's extent for imshow: each grid point at the centre of its cell."""
    dx = (h.xs[-1] - h.xs[0]) / max(len(h.xs) - 1, 1) / 2
    dy = (h.ys[0] - h.ys[-1]) / max(len(h.ys) - 1, 1) / 2
    return (h.xs[0] - dx, h.xs[-1] + dx, h.ys[-1] - dy, h.ys[0] + dy)


def hole_maps(panels: list[dict], path: str | Path) -> Path:
    """One column per model (AE beside VAE). Each panel: {"title", "hole": a HoleMap, "codes": (N, 2) test
    codes, "labels": (N,) or None}. Top: the decoded grid. Bottom: the classifier's confidence per grid
    point (red: low), the holes (low confidence or atypical features: HoleMap) outlined, the test codes as dots."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(panels), figsize=(5.4 * len(panels), 10.4), squeeze=False)
    for col, p in enumerate(panels):
        h, top, bottom = p["hole"], axes[0][col], axes[1][col]
        ext, n = _extent(h), len(h.xs)
        top.imshow(np.asarray(grid(h.images, nrow=n, pad=0)), cmap="gray", vmin=0, vmax=255, extent=ext, aspect="auto")
        top.set_title(f"{p['title']}: decoded {n}x{n} grid", fontsize=10)
        im = bottom.imshow(h.confidence, cmap="RdYlGn", vmin=0, vmax=1, extent=ext, aspect="auto", alpha=0.85)
        holes = ((h.confidence < h.threshold) | h.atypical).astype(float)
        if 0 < holes.mean() < 1:
            bottom.contour(h.xs, h.ys, holes, levels=[0.5], colors="k", linewidths=1.0)
        codes = np.asarray(p["codes"])
        labels = p.get("labels")
        bottom.scatter(
            codes[:, 0],
            codes[:, 1],
            s=3,
            c="k" if labels is None else np.asarray(labels),
            cmap=None if labels is None else "tab10",
            vmin=-0.5,
            vmax=9.5,
            alpha=0.6,
            linewidths=0,
        )
        bottom.set_xlim(ext[0], ext[1])
        bottom.set_ylim(ext[2], ext[3])
        bottom.set_title(
            f"confidence; holes (outlined) {h.hole_fraction:.1%} of the grid; {h.empty_fraction:.0%} of cells hold "
            "no code",
            fontsize=10,
        )
        for ax in (top, bottom):
            ax.set_xlabel("z1")
            ax.set_ylabel("z2")
        fig.colorbar(im, ax=bottom, fraction=0.046, pad=0.02).set_label("max class probability")
    fig.tight_layout()
    return _save(fig, path)


def neighbourhood_curves(settings: dict[str, dict[str, Neighbourhood]], path: str | Path) -> Path:
    """One panel per setting ({"D=2": {"AE": Neighbourhood, "VAE": ...}, "D=20": {...}}): agreement with the
    digit's label (solid) and mean confidence (dashed) against the radius r, one colour per model."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False)
    colors = {"AE": "tab:orange", "VAE": "tab:blue"}
    for ax, (setting, curves) in zip(axes[0], settings.items()):
        for name, nb in curves.items():
            c = colors.get(name)
            ax.plot(nb.radii, nb.agreement, "-o", ms=3, color=c, label=f"{name}: agreement with the label")
            ax.plot(nb.radii, nb.confidence, "--", color=c, label=f"{name}: mean confidence")
        ax.set_title(f"{setting}: decoding z + r s eps ({next(iter(curves.values())).n} test digits)", fontsize=10)
        ax.set_xlabel("r (in code spreads s)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)
