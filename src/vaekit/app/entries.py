"""The explorer's models, loaded once at start: each run's model, its latent map (test-set posterior means;
a conditional model's codes of the test digits encoded with their own labels; a hierarchy's top layer), its
anomaly detector (vaekit.anomaly.Detector with the run's threshold.json, when it has one), and, for a 2-D model when a
reference classifier folder is among the runs, its confidence map (claims_latent.hole_map: one per label for a
conditional model), the background of its map.

A run whose threshold.json is damaged or belongs to other weights is still served, without a threshold, and
a warning on stderr says why: the explorer is for looking at a model, and a stale threshold (say, after
training more) should not stop that; the page then says how to calibrate one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vaekit.anomaly import Detector
from vaekit.app.schema import ELBO_SAMPLES, MAP_POINTS, AnomalyScore, ThresholdInfo
from vaekit.claims import ClaimSettings
from vaekit.claims_latent import HoleMap, fit_typicality, hole_map
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
    mu: torch.Tensor  # (N, D) their posterior means (an AE: its codes); a hierarchy's top layer's, (N, dL)
    pca: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # latent.pca of mu: mean (D,), basis (2, D), share (2,)
    elbo_mean: float | None  # mean ELBO of the map's examples (greyscale), nats; None for an AE
    recon_mean: float | None  # mean E_q log p(x|z) of the same, nats
    eps: torch.Tensor  # (ELBO_SAMPLES, 1, D) fixed noise for the ELBO of a drawing
    detector: Detector  # anomaly scores; .threshold from the run's threshold.json, or None
    holes: list[HoleMap] | None = None  # the confidence map (images dropped): one, or one per label; None without
    classifier: str | None = None  # the reference classifier's folder name, when one was loaded

    @property
    def latent_dim(self) -> int:
        """The size of the z the explorer shows and takes: D, or a hierarchy's top layer's (hierarchy.py)."""
        return self.model.latent_sizes[-1]

    @property
    def latent_words(self) -> str:
        """ "latent_dim 20", or for a hierarchy "latent_dim 50 (the top layer z2 of 100,50)", for messages."""
        sizes = self.model.latent_sizes
        top = f" (the top layer z{len(sizes)} of {','.join(map(str, sizes))})" if len(sizes) > 1 else ""
        return f"latent_dim {self.latent_dim}{top}"

    def decode(self, z_top: torch.Tensor, label: int | None = None):
        """p(x|z) at points z_top (N, latent_dim) of the explorer's latent: a hierarchy's top layer, the layers
        below at their means under p (model.complete)."""
        return self.bound(label).decode(self.model.complete(z_top))

    @property
    def num_classes(self) -> int:
        """A conditional model's label classes; 0 for an unconditional one."""
        return self.model.num_classes

    def bound(self, label: int | None):
        """The model to encode and decode with: bound to `label` for a conditional model, else itself."""
        return self.model if label is None else self.model.given(label)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.model.shape

    def threshold_info(self) -> ThresholdInfo | None:
        t = self.detector.threshold
        return None if t is None else ThresholdInfo(value=t.value, fpr=t.fpr, n=t.n)

    def anomaly(self, x: torch.Tensor, label: int | None = None) -> AnomalyScore:
        """The anomaly score of one image x (1, *shape) in [0, 1], as `vaekit score` computes it: binarized as
        the run's data was (with the threshold's seed, else seed 0: the same image, the same number); a
        conditional model's given the label."""
        d = self.detector
        t = d.table(x, y=None if label is None else torch.tensor([label]))  # columns (1,) float64
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


def _fits(model, clf, run: Path) -> bool:
    """Whether the classifier can judge the model's images: its input shape, and its dataset when the run's
    data is a built-in one (a file's cannot be told; a warning says why not)."""
    from vaekit.data import DATASETS

    source, want = model.run_config.train.data, clf.config.data
    if tuple(clf.config.input_shape) != tuple(model.shape):
        shape = list(clf.config.input_shape)
        _warn(f"{run}: no confidence map (the classifier takes images of shape {shape}, not {list(model.shape)})")
        return False
    if source in DATASETS and source != want:
        _warn(f"{run}: no confidence map (the classifier was trained on {want}, the run on {source})")
        return False
    return True


@torch.inference_mode()
def confidence_maps(model, clf, mu: torch.Tensor, x: torch.Tensor, labels) -> list[HoleMap]:
    """The hole map (claims_latent.hole_map with the report's settings: ClaimSettings) of a 2-D model over its
    map's codes mu (N, 2), once for an unconditional model, once per label for a conditional one (its decoder
    given that label); a hole is also a grid point whose image's features are atypical of the map's digits x
    (N, *shape) when their labels (N,) are known. The decoded images are dropped: (K or 1) small grids."""
    s = ClaimSettings()
    typical = fit_typicality(clf, x, labels, s.typical_q) if labels is not None and len(x) >= 20 else None
    views = [model.given(k) for k in range(model.num_classes)] if model.conditional else [model]
    maps = [hole_map(v, clf, mu, s.grid, threshold=s.threshold, typical=typical) for v in views]
    return [replace(h, images=h.images[:0]) for h in maps]


@torch.inference_mode()
def make_entry(name: str, model, run: Path, cache: dict, clf=None, clf_name: str | None = None) -> Entry:
    """One run's Entry; `clf`: the reference classifier (a 2-D model then gets its confidence maps)."""
    data, split, x, labels = _map_data(model, run, cache)
    if model.conditional and len(x) and labels is None:
        _warn(f"{run}: no latent map (its data {data} has no labels, and this conditional model needs them)")
        x = x[:0]
    d, top = model.latent_dim, model.latent_sizes[-1]  # a hierarchy's map shows its top layer
    mu = model.top(posterior_means(model, x, y=labels)) if len(x) else torch.zeros(0, top)
    plane = pca(mu, 2) if len(x) >= 2 and top >= 2 else None
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(ELBO_SAMPLES, 1, d, generator=g)
    elbo_mean = recon_mean = None
    if len(x):
        t = elbo(model.given(labels) if model.conditional else model, x, eps=torch.randn(len(x), d, generator=g))
        recon_mean = t.recon.mean().item()
        elbo_mean = t.elbo.mean().item() if model.is_vae else None
    holes = None
    if clf is not None and d == 2 == top and len(x) >= 2 and _fits(model, clf, run):
        holes = confidence_maps(model, clf, mu, x, labels)
    det = _detector(model, run)
    return Entry(name, model, data, split, x, labels, mu, plane, elbo_mean, recon_mean, eps, det, holes, clf_name)


def split_runs(runs: list[Path]) -> tuple[list[Path], Path | None]:
    """Model runs, and the classifier folder (classifier.is_classifier_folder) if one is among them, as
    `vaekit report` takes them. More than one classifier, or none but classifiers: a VaekitError."""
    from vaekit.classifier import is_classifier_folder

    clfs = [r for r in runs if is_classifier_folder(r)]
    models = [r for r in runs if r not in clfs]
    if len(clfs) > 1:
        raise VaekitError(f"serve: give one classifier folder at most, got {', '.join(map(str, clfs))}")
    if not models:
        raise VaekitError(f"serve: no VAE or AE run among {', '.join(map(str, runs))}")
    return models, clfs[0] if clfs else None


def load_entries(runs: list[str | Path]) -> list[Entry]:
    """Load every run with vaekit.load (safetensors only) and encode its map; a classifier folder among them
    (as `vaekit report` takes one) gives the 2-D models their confidence maps. Raises VaekitError."""
    import vaekit
    from vaekit.classifier import load_classifier

    runs, clf_dir = split_runs([Path(r) for r in runs])
    models = [vaekit.load(r) for r in runs]
    clf = None if clf_dir is None else load_classifier(clf_dir)
    cache: dict = {}
    name = None if clf_dir is None else clf_dir.resolve().name
    return [make_entry(n, m, r, cache, clf, name) for n, m, r in zip(run_names(runs), models, runs)]
