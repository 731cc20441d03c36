"""Anomaly scores that work in both directions, and a threshold a user can act on.

    det = vaekit.anomaly.Detector(model)
    det.fit(x_inliers, fpr=0.05)       # calibration + threshold: at most 5% of these inliers score above it
    det.score(x)                       # (N,) -log tail p, higher = less like the training data
    det.predict(x)                     # (N,) bool, True = outlier
    det.score(x, y=labels)             # a conditional model: scores given the labels (N,)

A VAE's likelihood alone points the wrong way on simple inputs: a model of Fashion-MNIST gives MNIST
digits a *higher* ELBO than its own test images, because likelihood is dominated by how much there is to
encode in an image (Nalisnick et al. 2019). The recommended score combines two statistics, each in nats:

    likelihood(x)  = -ELBO(x) - L(x)     L = the length of a lossless code of x, the input's complexity
                                          (Serra et al. 2020, "Input complexity and OOD detection", eq. 2)
    orientation(x) = -log [ p(x) / sum_T p(T x) ],  T over {identity, flip rows, flip columns, rotate 180},
                     p(.) = exp(ELBO at the posterior mean): how much less the model likes x than the
                     orbit of x under the flips (Golan & El-Yaniv 2018 use such transformations for OOD)

Each is turned into an upper-tail p-value against a calibration set of held-out inliers (p = (1 + #{cal >=
s}) / (n + 1)), and the score is -log of the smaller one (in nats of surprise, from 0 to log(n + 1)): the
image is as unusual as its more unusual statistic. A Detector's calibration set is the data given to `fit`;
`vaekit score` uses the run's validation split (or --calibrate-on), and the sorted calibration statistics
are kept in threshold.json with the threshold.

L for a binarized image is the Krichevsky-Trofimov code length of an adaptive context model over JBIG's
10-pixel template (ITU-T T.82): each pixel coded given its 10 causal neighbours, counts learnt within the
image; its length is a closed form of the final counts. For grey images (no binarization) it is the shorter
of two zlib (DEFLATE) codes of the bytes, row by row and column by column. Both were chosen by measurement
(benchmarks/RESULTS.md): zlib, PNG, bz2 and lzma over-count the speckle that binarizing grey regions makes
(noise costs zlib 888 nats, above its 543 as raw bits), which let speckled images pass as simple.
For an autoencoder, -ELBO is its reconstruction loss -log p(x | z = enc(x)).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch

from vaekit.anomaly_threshold import (  # noqa: F401  (re-exported: vaekit.anomaly is the one place to import)
    COMPLEXITY,
    COMPLEXITY_GREY,
    COMPONENTS,
    LIKELIHOOD,
    ORIENTATION,
    SCORE,
    THRESHOLD_FILE,
    Threshold,
    calibrate,
    check_fpr,
    load_threshold,
    model_sha256,
    save_threshold,
)
from vaekit.errors import VaekitError

NATS_PER_BYTE = 8 * math.log(2)
TEMPLATE = ((0, -1), (0, -2), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (-2, -1), (-2, 0), (-2, 1))  # (dr, dc)


def complexity(x: torch.Tensor) -> torch.Tensor:
    """L(x) per example, (B,) float64 in nats: the compressed length of each image of x (B, *shape) in [0, 1],
    quantized to bytes, the shorter of its row-major and column-major scans (a code that picks the better
    of two scans needs one bit more, which we add). The complexity of grey images."""
    u8 = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if u8.ndim == 4:  # (B, C, H, W) -> (B, H, W, C): a pixel's channels stay together
        u8 = u8.transpose(0, 2, 3, 1)
    lengths = []
    for im in u8:  # (H, W), (H, W, C) or (D,)
        rows = _deflate(np.ascontiguousarray(im).tobytes())
        cols = _deflate(np.ascontiguousarray(im.swapaxes(0, 1)).tobytes()) if im.ndim >= 2 else rows
        lengths.append(min(rows, cols) * NATS_PER_BYTE + math.log(2))
    return torch.tensor(lengths, dtype=torch.float64)


def _deflate(data: bytes) -> int:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_FILTERED)  # raw DEFLATE: no header to count
    return len(c.compress(data) + c.flush())


def context_complexity(x: torch.Tensor) -> torch.Tensor:
    """L(x) per example, (B,) float64 in nats, of binary images x (B, *shape) (pixels > 0.5 are 1): each
    channel scanned row by row, each pixel predicted from its 10 causal neighbours (TEMPLATE; 0 outside the
    image) with the Krichevsky-Trofimov estimator p(1 | c) = (n1(c) + 1/2) / (n(c) + 1) on the counts of its
    context c so far in the image. The sequential code length is order-free: for each context seen,
    log pi + log n! - log Gamma(n0 + 1/2) - log Gamma(n1 + 1/2). A vector (D,) is one row of D pixels."""
    b = (x.detach().cpu() > 0.5).long()
    n = b.shape[0]
    b = b.reshape(n, 1, 1, -1) if b.ndim == 2 else b.reshape(n, -1, *b.shape[-2:]) if b.ndim >= 4 else b[:, None]
    _, c, h, w = b.shape
    pad = torch.nn.functional.pad(b, (2, 2, 2, 0))  # 2 columns each side, 2 rows on top
    ctx = torch.zeros_like(b)
    for j, (dr, dc) in enumerate(TEMPLATE):
        ctx |= pad[:, :, 2 + dr : 2 + dr + h, 2 + dc : 2 + dc + w] << j
    k = 1 << len(TEMPLATE)
    plane = torch.arange(n * c).reshape(n, c, 1, 1)  # each channel of each image has its own counts
    idx = ((plane * k + ctx) * 2 + b).flatten()
    counts = torch.bincount(idx, minlength=n * c * k * 2).reshape(n, c * k, 2).double()
    n0, n1 = counts[..., 0], counts[..., 1]
    per_ctx = math.log(math.pi) + torch.lgamma(n0 + n1 + 1) - torch.lgamma(n0 + 0.5) - torch.lgamma(n1 + 0.5)
    return per_ctx.sum(-1)  # an unseen context adds log pi + 0 - 2 log Gamma(1/2) = 0


def flips(x: torch.Tensor) -> list[torch.Tensor]:
    """x (B, *shape) under {identity, flip rows, flip columns, rotate 180} over its last two dimensions (a
    vector (D,) has no orientation: x alone)."""
    if x.ndim < 3:
        return [x]
    return [x, x.flip(-2), x.flip(-1), x.flip(-2, -1)]


def neg_elbo_at_mean(model, x: torch.Tensor) -> torch.Tensor:
    """-ELBO of x (B, *shape) with z at the posterior mean, (B,) nats: -log p(x | z = mu) + KL(q || p) (the KL
    in closed form when the prior has one, else at z = mu); an autoencoder's reconstruction loss."""
    from vaekit.objectives import kl_divergence

    q = model.encode(x)
    out = -model.decode(q.mean).log_prob(x)
    if model.is_vae:
        out = out + kl_divergence(model.prior, q, z=q.mean)[0]
    return out


def orientation(model, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 nats >= 0: -log [p(x) / sum_T p(T x)] over T in `flips`, p = exp(-neg_elbo_at_mean): 0 when
    the model much prefers x to its flips (log 4 when it cannot tell them apart, more when it prefers a
    flip). `model` is a conditional model's view bound to the batch's labels."""
    e = torch.stack([neg_elbo_at_mean(model, t.contiguous()) for t in flips(x)]).double()  # (T, B)
    return (e[0] + torch.logsumexp(-e, 0)).clamp_min(0)  # >= 0 exactly; rounding may give -1e-13


def score_table(
    model,
    ds,
    *,
    iw_samples: int = 0,
    binarize: str | None = None,
    batch_size: int = 100,
    seed: int = 0,
    calibration: dict[str, torch.Tensor] | None = None,
):
    """Per-example statistics of `ds` (a Dataset) as columns of N float64 values, higher = less like the data
    the model was trained on: "neg_elbo" (nats), "complexity" (L, nats), "orientation" (nats), with
    iw_samples > 0 (a VAE only) "nll" (-log p(x), importance-sampled with k = iw_samples), and, given a
    `calibration` (`calibrate_components`' sorted statistics of held-out inliers), "score", the recommended
    one (`combined_score`). For a conditional model all of them are given the labels of `ds` (-log p(x|y),
    ...), which it must have.

    Binarized as `evaluate` does (`binarize`, default the run's --binarize, with `seed`); L and the orientation
    are measured on those same binarized images (L by `context_complexity`, or `complexity` for data that is
    not binarized). Raises VaekitError naming the first example whose statistic is not finite, and for
    iw_samples > 0 on an autoencoder (it defines no density)."""
    from vaekit.evaluate import eval_batches, evaluate
    from vaekit.models import conditioned

    if iw_samples > 0 and not model.is_vae:
        raise VaekitError("--iw-samples: an autoencoder defines no density, so it has no -log p(x); use 0")
    if len(ds) == 0:
        raise VaekitError(f"{ds.name}: no examples to score")
    binarize = binarize or default_binarize(model)
    device = next(model.parameters()).device
    res = evaluate(
        model,
        ds,
        binarize=binarize,
        iw_samples=iw_samples,
        batch_size=batch_size,
        seed=seed,
        device=device,
        per_example=True,
    )
    pe = res["per_example"]
    comp, orient = [], []
    length = complexity if binarize == "none" else context_complexity
    with torch.inference_mode():
        for x, y in eval_batches(ds, batch_size, binarize, seed, device, labels=True):
            comp.append(length(x))
            orient.append(orientation(conditioned(model, y), x).cpu())
    cols = {"neg_elbo": (-pe["elbo"]).double(), "complexity": torch.cat(comp), "orientation": torch.cat(orient)}
    if "nll" in pe:
        cols["nll"] = pe["nll"].double()
    for name, v in cols.items():
        bad = (~torch.isfinite(v)).nonzero()
        if len(bad):
            raise VaekitError(
                f"{ds.name}: example {int(bad[0])} has a non-finite {name} ({v[bad[0]].item()}); "
                f"check that example's values"
            )
    if calibration is not None:
        cols["score"] = combined_score(calibration, components(cols))
    return {k: cols[k] for k in ("score", "neg_elbo", "nll", "complexity", "orientation") if k in cols}


def components(cols: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The statistics the score combines, {name in COMPONENTS: (N,) float64 nats}, from score_table's columns."""
    return {LIKELIHOOD: cols["neg_elbo"] - cols["complexity"], ORIENTATION: cols["orientation"]}


def calibrate_components(cols: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The calibration a score needs: each component of held-out inliers' score_table columns, sorted (n,)."""
    return {k: torch.sort(v.double()).values for k, v in components(cols).items()}


def tail_p(sorted_cal: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(N,) float64: the upper-tail p-value of each s against the n sorted calibration values,
    (1 + #{cal >= s}) / (n + 1), in [1 / (n + 1), 1]; exactly uniform over its n + 1 values when s is one
    more draw from the calibration's distribution (continuous, no ties)."""
    n = len(sorted_cal)
    above = n - torch.searchsorted(sorted_cal, s.double().contiguous(), side="left")
    return (1 + above).double() / (n + 1)


def combined_score(calibration: dict[str, torch.Tensor], comps: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) float64: -log of the smallest tail p of the components, in [0, log(n + 1)]; higher = less like
    the calibration set."""
    p = torch.stack([tail_p(calibration[k], comps[k]) for k in COMPONENTS])
    return -torch.log(p.min(0).values)


def default_binarize(model) -> str:
    """How the model's data was binarized: its run's --binarize, else (a model built in Python) dynamic for a
    Bernoulli likelihood and none otherwise, as training's `auto` does."""
    run = getattr(model, "run_config", None)
    if run is not None:
        return run.train.binarize
    return "dynamic" if model.config.likelihood == "bernoulli" else "none"


def as_dataset(x, name: str = "data"):
    """A Dataset from a Dataset or an array/tensor (N, *shape) of pixels in [0, 1] (or uint8)."""
    from vaekit.steps import as_dataset as _as

    if isinstance(x, (str, Path)):
        raise VaekitError(f"{name}: give a Dataset or an array here (load files with vaekit.data.load)")
    return _as(x, name)


def with_labels(ds, y):
    """`ds` with labels `y` (N,) integers, if given; a one-line error when they do not fit its examples."""
    from vaekit.data import Dataset

    if y is None:
        return ds
    y = torch.as_tensor(y)
    if y.shape != (len(ds),) or y.is_floating_point() or y.dtype == torch.bool:
        raise VaekitError(f"{ds.name}: labels must be {len(ds)} integers (N,), got {y.dtype} of shape {tuple(y.shape)}")
    return Dataset(ds.x, y.long(), ds.name)


# -------------------------------------------------------------------------------------------- detector


class Detector:
    """Outlier detection with a trained model, in the style of PyOD / alibi-detect: fit on inliers at a
    false-positive rate, then score and predict. Scores are per example (see `score_table`): -log of the
    smaller tail p-value of the two components against the calibration set."""

    def __init__(self, model, *, binarize: str | None = None, batch_size: int = 100, seed: int = 0):
        self.model = model.eval()
        self.binarize = binarize or default_binarize(model)
        self.batch_size, self.seed = batch_size, seed
        self.threshold: Threshold | None = None
        self.calibration: dict[str, torch.Tensor] | None = None  # {component: sorted (n,) float64}
        self.calibrated_on: str | None = None

    def _dataset(self, x, y=None):
        from vaekit.data import expect_shape

        ds = with_labels(as_dataset(x), y)
        expect_shape(ds, self.model.config.input_shape, ds.name)
        return ds

    def _table(self, ds, iw_samples: int = 0, calibration=None) -> dict[str, torch.Tensor]:
        kw = dict(binarize=self.binarize, batch_size=self.batch_size, seed=self.seed, calibration=calibration)
        return score_table(self.model, ds, iw_samples=iw_samples, **kw)

    def table(self, x, iw_samples: int = 0, y=None) -> dict[str, torch.Tensor]:
        """score_table of `x` (a Dataset, or an array (N, *shape)) with this detector's calibration; `y` (N,):
        its labels, which a conditional model's scores are conditional on (a Dataset's own when not given).
        Without a calibration (no fit, no threshold.json loaded), a model loaded from a run folder is
        calibrated on the run's validation split first (see `calibrate`)."""
        ds = self._dataset(x, y)
        if self.calibration is None:
            self.calibrate()
        return self._table(ds, iw_samples, self.calibration)

    def score(self, x, y=None) -> torch.Tensor:
        """(N,) float64: -log of the smaller tail p of (-ELBO - complexity, orientation) against the calibration
        set, in [0, log(n + 1)]; higher = less like the training data. `y`: labels (N,), for a conditional model."""
        return self.table(x, y=y)["score"]

    def calibrate(self, x_inliers=None, source: str = "inliers given to fit", y=None) -> torch.Tensor:
        """Keep the sorted components of `x_inliers` (held-out in-distribution data, with labels `y` for a
        conditional model) as the calibration; without x_inliers, the validation split of the run the model
        was loaded from (a one-line error for a model built in Python, or a run without one). Returns the
        inliers' scores (n,) against themselves."""
        if x_inliers is None:
            if getattr(self.model, "run_config", None) is None:
                raise VaekitError("no calibration: call fit(x_inliers, fpr=...) first (or load a run's threshold.json)")
            from vaekit.operations import calibration_data

            x_inliers, source = calibration_data(self.model, "the model's run")
        from vaekit.data import Dataset

        ds = self._dataset(x_inliers, y)
        cols = self._table(Dataset(ds.x, ds.y, f"calibration set {ds.name}"))  # errors name the set
        self.calibration, self.calibrated_on = calibrate_components(cols), source
        return combined_score(self.calibration, components(cols))

    def fit(self, x_inliers, fpr: float = 0.05, source: str = "inliers given to fit", y=None) -> Detector:
        """Calibrate on `x_inliers` (see `calibrate`) and set the threshold so that at most `fpr` of them are
        flagged."""
        fpr = check_fpr(fpr)
        s = self.calibrate(x_inliers, source, y)
        cal = {k: v.tolist() for k, v in self.calibration.items()}
        comp = COMPLEXITY_GREY if self.binarize == "none" else COMPLEXITY
        self.threshold = Threshold(
            calibrate(s, fpr), fpr, source, len(s), model_sha256(self.model), SCORE, comp, self.binarize, self.seed, cal
        )
        return self

    def predict(self, x, y=None) -> torch.Tensor:
        """(N,) bool: True where the score exceeds the threshold (an outlier)."""
        if self.threshold is None:
            self.flag(torch.zeros(0))  # the error, before any scoring
        return self.flag(self.score(x, y))

    def flag(self, scores: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise VaekitError("no threshold: call fit(x_inliers, fpr=...) first (or load a run's threshold.json)")
        return scores > self.threshold.value

    def save(self, folder: str | Path) -> Path:
        if self.threshold is None:
            raise VaekitError("no threshold to save: call fit first")
        return save_threshold(folder, self.threshold)

    def load(self, folder: str | Path) -> Detector:
        """Use the threshold and calibration stored in the run folder `folder` (if any)."""
        self.threshold = load_threshold(folder, self.model)
        if self.threshold is not None:
            self.binarize, self.seed = self.threshold.binarize, self.threshold.seed
            self.calibration, self.calibrated_on = self.threshold.tensors(), self.threshold.calibrated_on
        return self
