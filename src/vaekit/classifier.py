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
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaekit import io
from vaekit.config import from_dict, to_dict
from vaekit.data import DATASETS, Dataset
from vaekit.data import load as load_data
from vaekit.errors import VaekitError
from vaekit.networks import mlp

CONFIG_KEY = "classifier"
CKPT_DIR, CKPT_FILE = "checkpoint", "state.safetensors"  # as in a run folder


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


def _save_checkpoint(path: Path, model, opt, state: dict, gens: dict[str, torch.Generator]) -> None:
    """Weights, Adam's state and the data-order generator in one safetensors file; scalars as metadata."""
    io.save_training_state(path, model, opt, {f"rng.{k}": g.get_state() for k, g in gens.items()}, state)


def _load_checkpoint(path: Path, model, opt, gens: dict[str, torch.Generator]) -> dict:
    tensors, state = io.load_training_state(path, model, opt, what="classifier")
    try:
        for k, g in gens.items():
            g.set_state(tensors[f"rng.{k}"])
    except (KeyError, RuntimeError) as e:
        raise VaekitError(
            f"{path}: checkpoint does not match this classifier ({str(e).splitlines()[0][:120]})"
        ) from None
    return state


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

    With `out`, writes the folder as train.fit does (weights and checkpoint after every epoch, so an
    interrupted run resumes from its last finished epoch). Returns the metrics rows.
    """
    if train_ds.y is None:
        raise VaekitError(f"{train_ds.name}: the classifier needs labelled data")
    torch.manual_seed(cfg.seed)
    gens = {"order": torch.Generator().manual_seed(cfg.seed)}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = {"epoch": 0, "metrics_lines": 0, "seconds": 0.0}
    ckpt = out / CKPT_DIR / CKPT_FILE if out is not None else None
    if resume:
        state = _load_checkpoint(ckpt, model, opt, gens)
        rows = io.read_metrics(out)[: state["metrics_lines"]]
    else:
        rows = []
    t_start = time.perf_counter() - state["seconds"]
    n = len(train_ds)
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gens["order"])
        loss_sum, t_epoch = 0.0, time.perf_counter()
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(train_ds.batch(idx)), train_ds.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
        row = {
            "epoch": epoch + 1,
            "seconds": round(time.perf_counter() - t_start, 3),
            "epoch_seconds": round(time.perf_counter() - t_epoch, 3),
            "train_loss": loss_sum / n,
        }
        if test is not None:
            row["test_accuracy"] = accuracy(model, test)
        rows.append(row)
        if not quiet:
            acc = f"  test accuracy {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
            print(
                f"classifier epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}{acc}  "
                f"({row['epoch_seconds']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
        if out is not None:
            io.save_tensors(model.state_dict(), out / io.WEIGHTS)
            io.atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            state.update(epoch=epoch + 1, metrics_lines=len(rows), seconds=time.perf_counter() - t_start)
            _save_checkpoint(ckpt, model, opt, state, gens)
    model.eval()
    return rows


def train_classifier(
    cfg: ClassifierConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False, quiet: bool = True
) -> Classifier:
    """Load the data, train, write the classifier folder `out`; returns the trained classifier.

    The test accuracy is measured on the test split of a built-in dataset (none for a user's file).
    """
    from vaekit.train import prepare_out

    out = Path(out)
    prepare_out(out, resume, overwrite)
    if resume:  # the saved config rules; only the number of epochs may grow
        cfg = replace(load_config(out), epochs=cfg.epochs)
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
