"""The report's studies: each one measures something on trained runs and returns numbers (and the images
it measured); report.py and report_sections.py render them. No HTML here, no maths there.

    load_runs, test_set        the runs (named by io.run_names) and the held-out data they are measured on
    evaluate_runs              test ELBO, NLL, active units, reconstruction MSE per run        (section 1)
    latent_study               codes on a plane, generated digits, classifier scores          (section 3)
    interp_study               frames along linear/spherical paths, smoothness, confidence    (section 4)
    manifold_study             the 2-D VAE decoded on a grid, where its test codes fall       (section 5)
    shift_study                pixel MSE vs log p(x) for shifted digits                       (section 6)
    reparam_gradients          encoder gradient norms with and without the trick              (section 7)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaekit import io, seeds
from vaekit.classifier import Classifier, generation_scores, is_classifier_folder, load_classifier
from vaekit.data import DATASETS, Dataset, binarize
from vaekit.data import load as load_data
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, posterior_means
from vaekit.latent import interpolate, normal_grid, pca


@dataclass(frozen=True)
class ReportSettings:
    n_eval: int = 2000  # test digits for ELBO, NLL, active units, reconstruction MSE
    iw_k: int = 1000  # importance samples per digit for the NLL
    n_gen: int = 2000  # generated digits per model for the classifier scores
    pairs: int = 3  # interpolation pairs
    steps: int = 10  # frames per interpolation, ends included
    shift_draws: int = 10  # binarizations averaged in section 6
    grad_draws: int = 20  # single-sample gradient estimates in section 7
    grad_batch: int = 100  # the batch they are measured on
    manifold_n: int = 20  # the 2-D manifold is manifold_n x manifold_n
    scatter_n: int = 2000  # test codes in the latent scatters
    seed: int = 0
    quick_claims: bool = False  # the claims table measured with claims.QUICK_CLAIMS, not ClaimSettings()


QUICK = ReportSettings(
    n_eval=200,
    iw_k=50,
    n_gen=300,
    pairs=2,
    steps=8,
    shift_draws=2,
    grad_draws=5,
    grad_batch=50,
    manifold_n=12,
    scatter_n=500,
    quick_claims=True,
)

PAIR_LABELS = [(1, 0), (3, 6), (4, 9), (2, 7), (5, 8)]  # interpolation endpoints: first test digit of each label
SHIFTS = (1, 2, 3)


# ------------------------------------------------------------------------------------------- the runs


@dataclass
class Entry:
    """One latent-variable run in the report."""

    name: str
    path: Path
    model: torch.nn.Module
    metrics: list[dict]  # its metrics.jsonl rows

    @property
    def is_vae(self) -> bool:
        return self.model.is_vae

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim


def load_runs(paths: list[Path]) -> tuple[list[Entry], tuple[Path, Classifier] | None]:
    """Run folders -> latent-model entries (in the order given, named by io.run_names) and the classifier,
    if one is among them (the first one)."""
    import vaekit

    runs, clf = [], None
    for p in map(Path, paths):
        if not is_classifier_folder(p):
            runs.append((p, vaekit.load(p)))
        elif clf is None:
            clf = (p, load_classifier(p))
    if not runs:
        raise VaekitError("report: no VAE or AE run among " + ", ".join(map(str, paths)))
    names = io.run_names([p for p, _ in runs])
    return [Entry(n, p, m, io.read_metrics(p)) for n, (p, m) in zip(names, runs)], clf


def test_set(entries: list[Entry], source: str | None) -> tuple[Dataset, str]:
    """The held-out data the report measures on: `source`'s test split, else the first run's data's."""
    source = source or entries[0].model.run_config.train.data
    ds = load_data(source, "test")
    where = f"{source} test split" if source in DATASETS else f"{source} (a file: no separate test split)"
    for e in entries:
        if tuple(e.model.config.input_shape) != ds.shape:
            raise VaekitError(
                f"report: {e.path} expects examples of shape {tuple(e.model.config.input_shape)}, "
                f"{source} has {ds.shape}"
            )
    return ds, where


def binarized(model, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x as the model saw it in training: a Bernoulli draw when it was trained on binarized data."""
    return binarize(x, g) if model.run_config.train.binarize != "none" else x


def ae_and_vae(entries: list[Entry]) -> tuple[Entry | None, Entry | None]:
    """The first autoencoder and the first VAE among `entries` (None where there is none)."""
    return (next((e for e in entries if not e.is_vae), None), next((e for e in entries if e.is_vae), None))


# ------------------------------------------------------------------------------------------- measures


@torch.inference_mode()
def reconstruction_mse(model, x: torch.Tensor) -> float:
    """Mean squared pixel error between greyscale x (N, *shape) and its reconstruction (decoded mean at
    the posterior mean), per pixel."""
    return float(
        torch.cat(
            [
                ((model.reconstruct(x[i : i + 1000]) - x[i : i + 1000]) ** 2).flatten(1).mean(1)
                for i in range(0, len(x), 1000)
            ]
        ).mean()
    )


def path_smoothness(frames: torch.Tensor) -> torch.Tensor:
    """Pixel change between consecutive frames (T, *shape): mean |x_{t+1} - x_t| per pixel, (T-1,)."""
    return (frames[1:] - frames[:-1]).abs().flatten(1).mean(1)


def shift_right(x: torch.Tensor, s: int) -> torch.Tensor:
    """x (..., H, W) moved s pixels to the right, zeros coming in from the left."""
    if s == 0:
        return x.clone()
    out = torch.zeros_like(x)
    out[..., s:] = x[..., :-s]
    return out


def evaluate_runs(entries: list[Entry], ds: Dataset, n: int, s: ReportSettings) -> dict[str, dict]:
    """Section 1: per run name, evaluate()'s numbers on the first n examples of ds (nats per example), its
    reconstruction MSE and, for a VAE, "bound_gap" = -ELBO - NLL (the bound lost to an imperfect q) and
    "bound_holds" (NLL <= -ELBO, as it must be)."""
    x = ds.batch(slice(0, n))
    evals = {}
    for e in entries:
        cfg = e.model.run_config.train
        r = evaluate(
            e.model, ds.subset(slice(0, n)), binarize=cfg.binarize, iw_samples=s.iw_k if e.is_vae else 0, seed=s.seed
        )
        r["recon_mse"] = reconstruction_mse(e.model, x)
        if e.is_vae:
            r["bound_gap"] = -r["elbo"] - r["nll"]
            r["bound_holds"] = r["nll"] <= -r["elbo"] + 1e-6  # allowing for rounding
        evals[e.name] = r
    return evals


# ------------------------------------------------------------------------------------------- section 3


@dataclass
class LatentPanel:
    """One run's test codes on a plane, and the codes it generates from, projected the same way."""

    xy: np.ndarray  # (N, 2) test codes: the latent itself (2-D) or its top-2 PCA plane
    extra: np.ndarray  # (M, 2) latent draws of the model's sampler
    share: float | None  # the share of the codes' variance the PCA plane keeps; None for a 2-D latent


@dataclass
class LatentStudy:
    panels: dict[str, LatentPanel]  # per run name, the runs of `main`
    samples: dict[str, torch.Tensor]  # per run name, (n_gen, *shape) generated images
    scores: dict[str, dict]  # per run name and "real": classifier.generation_scores; empty without one
    n_ref: int  # real test examples each generated set is compared with (0 without a classifier)
    labels: np.ndarray | None  # (N,) the labels of the scattered test examples


def latent_study(entries, main, clf: Classifier | None, x_eval, y_eval, ds: Dataset, s: ReportSettings) -> LatentStudy:
    """Section 3: codes of the first scatter_n examples of x_eval for each run of `main`; n_gen samples of
    every run, scored by the classifier (when there is one) against n_ref real test examples."""
    g = torch.Generator().manual_seed(s.seed)
    xs = x_eval[: s.scatter_n]
    panels = {}
    for e in main:
        z = posterior_means(e.model, xs)
        extra = e.model.latent_sampler(min(500, s.n_gen), g)
        if e.latent_dim == 2:
            panels[e.name] = LatentPanel(z.numpy(), extra.numpy(), None)
        else:
            mean, basis, share = pca(z, 2)
            xy, ex = (z - mean) @ basis.T, (extra - mean) @ basis.T  # (N, 2), (M, 2)
            panels[e.name] = LatentPanel(xy.numpy(), ex.numpy(), float(share.sum()))
    gens = {e.name: e.model.sample(s.n_gen, torch.Generator().manual_seed(seeds.generated(s.seed))) for e in entries}
    scores, n_ref = {}, 0
    if clf is not None:
        n_ref = min(s.n_gen, len(ds) // 2)
        x_ref = ds.batch(slice(0, n_ref))
        x_ref2 = ds.batch(slice(n_ref, 2 * n_ref))
        for e in entries:
            scores[e.name] = generation_scores(clf, gens[e.name], x_ref)
        scores["real"] = generation_scores(clf, x_ref2, x_ref)
    return LatentStudy(panels, gens, scores, n_ref, None if y_eval is None else y_eval[: s.scatter_n].numpy())


def compare_generation(a: dict, v: dict) -> dict:
    """The AE's (a) and the VAE's (v) generation scores side by side: which wins each measure (lower
    Frechet distance, higher confidence, higher coverage) and how many the VAE wins."""
    won = {"frechet": v["frechet"] < a["frechet"], "confidence": v["confidence"] > a["confidence"]}
    won["coverage"] = v["coverage"] > a["coverage"]
    return {
        "vae_wins": won,
        "wins": sum(won.values()),
        "frechet_gap": abs(a["frechet"] - v["frechet"]),
        "frechet_ratio": a["frechet"] / v["frechet"] if v["frechet"] > 0 else math.inf,
        "confidence_gap": abs(v["confidence"] - a["confidence"]),
    }


# ------------------------------------------------------------------------------------------- section 4


def pair_indices(y: torch.Tensor | None, n_pairs: int, n: int) -> list[tuple[int, int]]:
    """Interpolation endpoints among the first n examples: the first of each label pair in PAIR_LABELS
    (without labels: examples 0-1, 2-3, ...); at most n_pairs of them."""
    if y is None:
        return [(2 * i, 2 * i + 1) for i in range(n_pairs)]
    pairs = []
    for a, b in PAIR_LABELS:
        ia, ib = (y[:n] == a).nonzero(), (y[:n] == b).nonzero()
        if len(ia) and len(ib):
            pairs.append((int(ia[0]), int(ib[0])))
        if len(pairs) == n_pairs:
            break
    return pairs


@dataclass
class InterpPath:
    name: str  # the run
    mode: str  # "linear" or "spherical"
    frames: torch.Tensor  # (steps, *shape) decoded means along the path, ends included
    change: torch.Tensor  # (steps - 1,) path_smoothness of the frames
    confidence: torch.Tensor | None  # (steps,) the classifier's top probability per frame
    label: torch.Tensor | None  # (steps,) its label per frame


@dataclass
class InterpStudy:
    pairs: list[tuple[int, int]]  # test example indices
    paths: list[list[InterpPath]]  # per pair: every run of `main`, linear then spherical
    summary: dict[tuple[str, str], dict]  # (run, mode) -> mean_change, max_change, max_over_mean,
    # mean_confidence, min_confidence (None without a classifier), over every step/frame of every pair


def interp_study(main, clf: Classifier | None, x_eval, y_eval, s: ReportSettings) -> InterpStudy:
    """Section 4: linear and spherical paths between the codes of test pairs, decoded, measured."""
    pairs = pair_indices(y_eval, s.pairs, len(x_eval))
    paths = []
    for i, j in pairs:
        row = []
        for e in main:
            z = posterior_means(e.model, x_eval[[i, j]])
            for mode in ("linear", "spherical"):
                with torch.inference_mode():
                    frames = e.model.decode(interpolate(z[0], z[1], s.steps, mode == "spherical")).mean
                conf = lab = None
                if clf is not None:
                    conf, lab = clf.predict_proba(frames).max(-1)
                row.append(InterpPath(e.name, mode, frames, path_smoothness(frames), conf, lab))
        paths.append(row)
    pooled: dict[tuple[str, str], tuple[list, list]] = {}
    for p in (p for row in paths for p in row):
        ch, conf = pooled.setdefault((p.name, p.mode), ([], []))
        ch += p.change.tolist()
        conf += [] if p.confidence is None else p.confidence.tolist()
    summary = {}
    for key, (ch, conf) in pooled.items():
        ch = np.asarray(ch)
        summary[key] = {
            "mean_change": ch.mean(),
            "max_change": ch.max(),
            "max_over_mean": ch.max() / max(ch.mean(), 1e-12),
            "mean_confidence": np.mean(conf) if conf else None,
            "min_confidence": np.min(conf) if conf else None,
        }
    return InterpStudy(pairs, paths, summary)


def compare_interp(summary: dict, ae: str, vae: str) -> dict:
    """AE vs VAE paths per mode: the largest step over the mean step (lower = more even) and, with a
    classifier, the least recognisable frame (higher = better); how many of these the VAE wins."""
    modes, wins = {}, 0
    for mode in ("linear", "spherical"):
        a, v = summary[(ae, mode)], summary[(vae, mode)]
        m = {"ratio_ae": a["max_over_mean"], "ratio_vae": v["max_over_mean"]}
        wins += m["ratio_vae"] < m["ratio_ae"]
        if a["min_confidence"] is not None and v["min_confidence"] is not None:
            m |= {"min_confidence_ae": a["min_confidence"], "min_confidence_vae": v["min_confidence"]}
            wins += m["min_confidence_vae"] > m["min_confidence_ae"]
        modes[mode] = m
    n = 4 if "min_confidence_ae" in modes["linear"] else 2
    return {"modes": modes, "wins": wins, "n": n}


# ------------------------------------------------------------------------------------------- section 5


@dataclass
class ManifoldStudy:
    images: torch.Tensor  # (n * n, *shape) decoded means on the grid, row-major
    axis: np.ndarray  # (n,) the grid's coordinates on each axis, Phi^-1 of quantiles in [0.05, 0.95]
    z: np.ndarray  # (N, 2) posterior means of the first scatter_n test examples
    inside: float  # the share of them inside the plotted square


def manifold_study(model, x_eval, s: ReportSettings) -> ManifoldStudy:
    """Section 5: a 2-D VAE decoded on an n x n normal_grid, and where its test codes fall."""
    n = s.manifold_n
    with torch.inference_mode():
        imgs = model.decode(normal_grid(n)).mean
    axis = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n, dtype=torch.float64)).numpy()
    z = posterior_means(model, x_eval[: s.scatter_n])
    lo, hi = float(axis[0]), float(axis[-1])
    inside = float(((z >= lo) & (z <= hi)).all(1).float().mean())
    return ManifoldStudy(imgs, axis, z.numpy(), inside)
