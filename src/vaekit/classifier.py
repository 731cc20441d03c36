"""The reference MNIST classifier, and the numbers it gives a set of generated digits.

    clf = train_classifier(ClassifierConfig(epochs=3), "runs/demo/classifier")
    scores = generation_scores(clf, x_generated, x_real)   # confidence, coverage, frechet

A small MLP (784-512-128-10) trained by vaekit on greyscale MNIST. Its last hidden
layer (128 ReLU units) is the feature space of the Frechet distance, the same idea
as FID (Heusel et al. 2017) with an MNIST classifier in place of Inception.
A classifier folder holds config.json ({"classifier": {...}}), model.safetensors,
metrics.jsonl (one row per epoch, with the test accuracy) and checkpoint/ for resume.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaekit import checkpoint as ckpt
from vaekit import io, seeds
from vaekit.config import from_dict, to_dict
from vaekit.data import DATASETS, Dataset
from vaekit.data import load as load_data
from vaekit.errors import VaekitError
from vaekit.networks import mlp
from vaekit.runlog import RunLog, truncate_metrics

CONFIG_KEY = "classifier"
RESUMABLE = ("epochs",)  # what may change when a classifier run is resumed


@dataclass(frozen=True)
class ClassifierConfig:
    data: str = "mnist"
    input_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = (512, 128)  # the last width is the feature size of the Frechet distance
    classes: int = 10
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    limit: int = 0  # train on the first N examples only; 0 = all

    def to_json(self) -> str:
        return json.dumps({CONFIG_KEY: to_dict(self)}, indent=2)


class Classifier(nn.Module):
    """x (B, *shape) in [0, 1] -> class logits (B, classes); `features` gives the last hidden layer."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.body = nn.Sequential(mlp([math.prod(config.input_shape), *config.hidden], "relu"), nn.ReLU())
        self.head = nn.Linear(config.hidden[-1], config.classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations, (B, hidden[-1])."""
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
        """Class probabilities, (B, classes)."""
        return torch.cat([F.softmax(self(x[i : i + batch_size]), -1) for i in range(0, len(x), batch_size)])

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels, (B,) int64."""
        return self.predict_proba(x).argmax(-1)

    @torch.inference_mode()
    def embed(self, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
        """Hidden features of many images, (B, hidden[-1]), batched."""
        return torch.cat([self.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


# ------------------------------------------------------------------------------------------- training


@torch.inference_mode()
def accuracy(model: Classifier, ds: Dataset, batch_size: int = 2000) -> float:
    """Fraction of `ds` (labelled) classified correctly."""
    model.eval()
    right = sum(
        int((model(ds.batch(slice(i, i + batch_size))).argmax(-1) == ds.y[i : i + batch_size]).sum())
        for i in range(0, len(ds), batch_size)
    )
    return right / len(ds)


def fit_classifier(
    model: Classifier,
    train_ds: Dataset,
    cfg: ClassifierConfig,
    out: Path | None = None,
    *,
    test: Dataset | None = None,
    resume: bool = False,
    quiet: bool = True,
) -> list[dict]:
    """Adam on the cross-entropy; one metrics row per epoch (with the test accuracy when `test` is given).

    With `out`, writes the folder as train.fit does, with the same pieces (checkpoint.py, runlog.py):
    weights, metrics and checkpoint after every epoch, so an interrupted run resumes from its last finished
    epoch. Returns the metrics rows.
    """
    if train_ds.y is None:
        raise VaekitError(f"{train_ds.name}: the classifier needs labelled data")
    torch.manual_seed(cfg.seed)
    gens = {"order": torch.Generator().manual_seed(seeds.order(cfg.seed))}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state, rows = {"epoch": 0, "metrics_lines": 0, "seconds": 0.0}, []
    if resume:
        state, rngs, _ = ckpt.load(ckpt.path(out), model, opt, what="classifier")
        ckpt.restore_generators(rngs, gens, ckpt.path(out), "classifier")
        rows = io.read_metrics(out)[: state["metrics_lines"]]
        truncate_metrics(out, state["metrics_lines"])
    t_start = time.perf_counter() - state["seconds"]
    with RunLog(out, 0, quiet, cfg.epochs, what="classifier ", bar=False) as log:
        for epoch in range(state["epoch"], cfg.epochs):
            t_epoch = time.perf_counter()
            loss = _train_epoch(model, opt, train_ds, cfg.batch_size, gens["order"])
            now = time.perf_counter()
            row = {"epoch": epoch + 1, "seconds": round(now - t_start, 3), "epoch_seconds": round(now - t_epoch, 3)}
            row["train_loss"] = loss
            if test is not None:
                row["test_accuracy"] = accuracy(model, test)
            rows.append(row)
            log.end_epoch(row, model)
            if out is not None:
                state.update(epoch=epoch + 1, metrics_lines=len(rows), seconds=time.perf_counter() - t_start)
                rngs = {k: g.get_state() for k, g in gens.items()}
                ckpt.save(ckpt.path(out), model, opt, state, rngs, host_rngs=False)
    model.eval()
    return rows


def _train_epoch(model: Classifier, opt, ds: Dataset, batch_size: int, order: torch.Generator) -> float:
    """One pass over `ds` in a fresh random order; the mean cross-entropy per example, in nats."""
    model.train()
    n = len(ds)
    perm = torch.randperm(n, generator=order)
    loss_sum = 0.0
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        loss = F.cross_entropy(model(ds.batch(idx)), ds.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
    return loss_sum / n


def train_classifier(
    cfg: ClassifierConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False, quiet: bool = True
) -> Classifier:
    """Load the data, train, write the classifier folder `out`; returns the trained classifier.

    The test accuracy is measured on the test split of a built-in dataset (none for a user's file).
    """
    out = Path(out)
    ckpt.prepare_out(out, resume, overwrite)
    if resume:  # the saved config rules; only the number of epochs may grow
        cfg = ckpt.merge_on_resume(load_config(out), cfg, None, RESUMABLE, skip=("input_shape",))
    ds = load_data(cfg.data, "train")
    if cfg.limit:
        ds = ds.subset(slice(0, cfg.limit))
    cfg = replace(cfg, input_shape=ds.shape)
    test = load_data(cfg.data, "test") if cfg.data in DATASETS else None
    io.atomic_write_text(out / io.CONFIG, cfg.to_json() + "\n")
    torch.manual_seed(cfg.seed)  # reproducible initial weights
    model = Classifier(cfg)
    fit_classifier(model, ds, cfg, out, test=test, resume=resume, quiet=quiet)
    return model


def is_classifier_folder(folder: str | Path) -> bool:
    path = Path(folder) / io.CONFIG
    try:
        return CONFIG_KEY in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def load_config(folder: str | Path) -> ClassifierConfig:
    path = Path(folder) / io.CONFIG
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise VaekitError(f"{path}: missing (not a classifier folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VaekitError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or CONFIG_KEY not in d:
        raise VaekitError(f"{path}: not a classifier config (no '{CONFIG_KEY}' section)")
    return from_dict(ClassifierConfig, d[CONFIG_KEY], f"{path}: {CONFIG_KEY}")


def load_classifier(folder: str | Path) -> Classifier:
    """The trained classifier in `folder`, in eval mode; `.test_accuracy` from its last metrics row."""
    folder = Path(folder)
    model = Classifier(load_config(folder))
    try:
        model.load_state_dict(io.load_tensors(folder / io.WEIGHTS))
    except RuntimeError as e:
        raise VaekitError(
            f"{folder / io.WEIGHTS}: does not match {io.CONFIG} ({str(e).splitlines()[0][:120]})"
        ) from None
    rows = io.read_metrics(folder)
    model.test_accuracy = rows[-1].get("test_accuracy") if rows else None
    return model.eval()


# ------------------------------------------------------------------------------ scoring generated digits


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):

        |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))      (Dowson & Landau 1982)

    tr (cov1 cov2)^(1/2) is computed as the sum of sqrt eigenvalues of the symmetric PSD matrix
    cov1^(1/2) cov2 cov1^(1/2), which has the same eigenvalues: real, no complex sqrtm residue.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(d, 0.0)


def feature_frechet(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N1, F) and (N2, F)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def class_coverage(labels: torch.Tensor, classes: int) -> float:
    """exp(entropy of the predicted-label histogram) / classes, in (0, 1]: the effective number of
    classes as a fraction of all classes. 1 when every class is equally frequent, 1/classes when
    every image gets the same label."""
    p = torch.bincount(labels.flatten(), minlength=classes).double()
    p = p / p.sum()
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h.exp() / classes)


@torch.inference_mode()
def generation_scores(clf: Classifier, x_gen: torch.Tensor, x_real: torch.Tensor) -> dict:
    """Scores of generated images x_gen (N, *shape) in [0, 1] against real ones x_real (M, *shape):

    confidence  mean over images of the max class probability (a recognisable digit scores near 1)
    coverage    class_coverage of the predicted labels (1 = all classes equally often)
    frechet     Frechet distance between the classifier's hidden features of x_gen and x_real
    label_counts  the predicted-label histogram
    """
    p = clf.predict_proba(x_gen)
    labels = p.argmax(-1)
    return {
        "confidence": float(p.max(-1).values.mean()),
        "coverage": class_coverage(labels, clf.config.classes),
        "frechet": feature_frechet(clf.embed(x_gen), clf.embed(x_real)),
        "label_counts": torch.bincount(labels, minlength=clf.config.classes).tolist(),
    }
