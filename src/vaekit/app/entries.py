"""The explorer's models, loaded once at start: each run's model, its latent map (test-set posterior means),
and its anomaly detector (vaekit.anomaly.Detector with the run's threshold.json, when it has one).

A run whose threshold.json is damaged or belongs to other weights is still served, without a threshold, and
a warning on stderr says why: the explorer is for looking at a model, and a stale threshold (say, after
training more) should not stop that; the page then says how to calibrate one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vaekit.anomaly import Detector
from vaekit.app.schema import ELBO_SAMPLES, MAP_POINTS, AnomalyScore, ThresholdInfo
from vaekit.errors import VaekitError
from vaekit.evaluate import posterior_means
from vaekit.io import run_names
from vaekit.latent import pca
from vaekit.objectives import elbo


@dataclass
class Entry:
    """One loaded model and its map."""

    name: str
    model: object
    data: str  # the name of the data the map shows (a file's name, never its path)
    split: str  # "test" (a built-in dataset's test split) or "file" (the whole file)
    x: torch.Tensor  # (N, *shape) test examples in [0, 1], N <= MAP_POINTS
    labels: torch.Tensor | None  # (N,)
    mu: torch.Tensor  # (N, D) their posterior means (an AE: its codes)
    pca: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # latent.pca of mu: mean (D,), basis (2, D), share (2,)
    elbo_mean: float | None  # mean ELBO of the map's examples (greyscale), nats; None for an AE
    recon_mean: float | None  # mean E_q log p(x|z) of the same, nats
    eps: torch.Tensor  # (ELBO_SAMPLES, 1, D) fixed noise for the ELBO of a drawing
    detector: Detector  # anomaly scores; .threshold from the run's threshold.json, or None

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def shape(self) -> tuple[int, ...]:
        return self.model.shape

    def threshold_info(self) -> ThresholdInfo | None:
        t = self.detector.threshold
        return None if t is None else ThresholdInfo(value=t.value, fpr=t.fpr, n=t.n)

    def anomaly(self, x: torch.Tensor) -> AnomalyScore:
        """The anomaly score of one image x (1, *shape) in [0, 1], as `vaekit score` computes it: binarized as
        the run's data was (with the threshold's seed, else seed 0: the same image, the same number)."""
        d = self.detector
        t = d.table(x)  # columns (1,) float64
        return AnomalyScore(
            score=t["score"].item(),
            neg_elbo=t["neg_elbo"].item(),
            complexity=t["complexity"].item(),
            binarize=d.binarize,
            seed=d.seed,
            threshold=self.threshold_info(),
            outlier=None if d.threshold is None else bool(d.flag(t["score"])[0]),
        )


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@torch.inference_mode()
def _map_data(model, run: Path, cache: dict):
    """(data name, split, x (N, *shape), labels) of the run's test data (for a file: the file, which has no
    test split), or no examples when the data cannot be had."""
    from vaekit.data import DATASETS, load

    source = model.run_config.train.data
    split = "test" if source in DATASETS else "file"
    empty = (Path(source).name, split, torch.zeros(0, *model.shape), None)
    try:
        if source not in cache:
            cache[source] = load(source, "test")
        ds = cache[source]
    except VaekitError as e:
        _warn(f"{run}: no latent map ({e})")
        return empty
    if ds.shape != model.shape:
        _warn(f"{run}: no latent map (its data {source} has shape {ds.shape}, the model expects {model.shape})")
        return empty
    n = min(len(ds), MAP_POINTS)
    labels = None if ds.y is None else ds.y[:n].clone()
    return Path(source).name, split, ds.batch(slice(0, n)), labels


def _detector(model, run: Path) -> Detector:
    det = Detector(model)
    try:
        det.load(run)
    except VaekitError as e:
        _warn(f"{e} (serving {run} without a threshold)")
    return det


@torch.inference_mode()
def make_entry(name: str, model, run: Path, cache: dict) -> Entry:
    data, split, x, labels = _map_data(model, run, cache)
    d = model.latent_dim
    mu = posterior_means(model, x) if len(x) else torch.zeros(0, d)
    plane = pca(mu, 2) if len(x) >= 2 and d >= 2 else None
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(ELBO_SAMPLES, 1, d, generator=g)
    elbo_mean = recon_mean = None
    if len(x):
        t = elbo(model, x, eps=torch.randn(len(x), d, generator=g))
        recon_mean = t.recon.mean().item()
        elbo_mean = t.elbo.mean().item() if model.is_vae else None
    return Entry(name, model, data, split, x, labels, mu, plane, elbo_mean, recon_mean, eps, _detector(model, run))


def load_entries(runs: list[str | Path]) -> list[Entry]:
    """Load every run with vaekit.load (safetensors only) and encode its map. Raises VaekitError."""
    import vaekit

    runs = [Path(r) for r in runs]
    models = [vaekit.load(r) for r in runs]
    cache: dict = {}
    return [make_entry(n, m, r, cache) for n, m, r in zip(run_names(runs), models, runs)]
