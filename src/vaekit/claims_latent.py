"""The lecture's claims about the latent space, measured (claims.py assembles them into the claims table):

    hole_map                 C1  a 2-D model's decoder on a grid over its codes: where the classifier cannot
                                 place the decoded image (the "holes" of Problem 1); fit_typicality: whether
                                 an image's classifier features look like a real digit's
    neighbourhood_agreement  C2  codes moved by r code-spreads: does the decoded digit keep its label?
    sampling_scores          C3  digits generated from N(0, I) (and, for an AE, from its fitted Gaussian)
    interpolation_compare    C4  studies.interp_study / compare_interp for any AE-VAE pair
    aggregate_codes          C8  one code per example (a draw of q(z|x); an AE's code) ...
    code_prior_kl                ... and KL(N(m, S) fitted to them || N(0, I)) in closed form

Plain numbers, arrays and dataclasses; no HTML, no files. Every function takes a model (a vaekit VAE or
Autoencoder), the reference classifier where it needs one (anything with predict_proba), and tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vaekit.classifier import generation_scores
from vaekit.evaluate import posterior_means
from vaekit.studies import Entry, ReportSettings, compare_interp, interp_study

BATCH = 5000  # codes decoded at a time


@torch.inference_mode()
def decode_means(model, z: torch.Tensor) -> torch.Tensor:
    """The decoded means of codes z (N, D), BATCH at a time: (N, *shape)."""
    return torch.cat([model.decode(z[i : i + BATCH]).mean for i in range(0, len(z), BATCH)])


# ------------------------------------------------------------------------------------------- C1


@dataclass
class Typicality:
    """Whether the classifier's features of an image look like a real digit's: the squared Mahalanobis
    distance of clf.embed(x) to the nearest class mean, under class means and one shared covariance fitted
    to real digits (Lee et al. 2018), against `threshold`, a quantile of real digits' own distances."""

    clf: object
    means: torch.Tensor  # (classes, F)
    precision: torch.Tensor  # (F, F) the inverse of the shared covariance
    threshold: float  # distances above it are atypical

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class mean, (B,) float64."""
        f = self.clf.embed(x).double().cpu()
        d = f[:, None, :] - self.means[None]  # (B, classes, F)
        return torch.einsum("bcf,fg,bcg->bc", d, self.precision, d).min(1).values

    def atypical(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) bool: features farther from every class than `threshold`."""
        return self.score(x) > self.threshold


def fit_typicality(clf, x: torch.Tensor, y: torch.Tensor, quantile: float = 0.99) -> Typicality:
    """Class means and the shared covariance (+ 1e-3 I) of clf's features of real digits x (N, *shape)
    with labels y, fitted on the second half of x; the threshold is the `quantile` of the first half's
    distances (so that share of unseen real digits counts as typical)."""
    h = len(x) // 2
    f, yf = clf.embed(x[h:]).double().cpu(), y[h:].cpu()
    means = torch.stack([f[yf == c].mean(0) if (yf == c).any() else f.mean(0) for c in range(int(y.max()) + 1)])
    centred = f - means[yf]
    cov = centred.T @ centred / len(f) + 1e-3 * torch.eye(f.shape[1], dtype=torch.float64)
    t = Typicality(clf, means, torch.linalg.inv(cov), math.inf)
    t.threshold = float(torch.quantile(t.score(x[:h]), quantile))
    return t


@dataclass
class HoleMap:
    """A 2-D model's decoder on an n x n grid (row-major, z2 decreasing down the rows, as latent.normal_grid)."""

    xs: np.ndarray  # (n,) the grid's z1 values, increasing
    ys: np.ndarray  # (n,) its z2 values, decreasing (row 0 is the top of the picture)
    z: torch.Tensor  # (n * n, 2) the grid's codes, row-major
    images: torch.Tensor  # (n * n, *shape) decoded means
    confidence: np.ndarray  # (n, n) the classifier's top class probability per grid point
    label: np.ndarray  # (n, n) its predicted class per grid point
    threshold: float  # a grid point is a hole when its confidence is below this ...
    atypical: np.ndarray  # (n, n) bool ... or its features are atypical of real digits (all False without)
    hole_fraction: float  # the share of grid points that are holes, in [0, 1]
    low_confidence: float  # the share below `threshold` alone
    empty: np.ndarray  # (n, n) bool: no code falls in the grid point's cell (the codes' gaps)
    empty_fraction: float  # the share of empty cells
    empty_holes: float  # the share of the empty cells that are holes (nan when none is empty)


def hole_map(
    model,
    clf,
    codes: torch.Tensor,
    grid: int = 20,
    lo_q: float = 0.01,
    hi_q: float = 0.99,
    threshold: float = 0.5,
    typical: Typicality | None = None,
) -> HoleMap:
    """C1: decode a regular grid x grid lattice over the box [lo_q, hi_q]-quantile of each axis of `codes`
    (N, 2) (the region the test codes occupy, trimmed of the 1% outliers on each side), and score every
    decoded image with the classifier. A hole is a grid point whose image the classifier cannot place:
    top class probability below `threshold` (0.5: no class is more likely than all the others together)
    or, with `typical`, features atypical of real digits. Confidence alone misses images unlike any digit:
    an MLP classifier is confident on most noise images (mean top probability about 0.7 on the demo's).
    Also where the codes leave gaps: the grid cells no code falls in, and how many of those are holes."""
    if codes.dim() != 2 or codes.shape[1] != 2:
        raise ValueError(f"hole_map: needs 2-D codes (N, 2), got {tuple(codes.shape)}")
    if grid < 2:
        raise ValueError(f"hole_map: grid must be at least 2, got {grid}")
    c = codes.detach().double().cpu()
    q = torch.tensor([lo_q, hi_q], dtype=torch.float64)
    (x0, x1), (y0, y1) = torch.quantile(c[:, 0], q).tolist(), torch.quantile(c[:, 1], q).tolist()
    xs, ys = torch.linspace(x0, x1, grid), torch.linspace(y1, y0, grid)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    z = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(next(model.parameters()).device)  # (grid^2, 2)
    images = decode_means(model, z)
    p = clf.predict_proba(images).cpu()
    conf, lab = p.max(-1)
    conf = conf.view(grid, grid).numpy()
    odd = np.zeros_like(conf, dtype=bool) if typical is None else typical.atypical(images).view(grid, grid).numpy()
    low = conf < threshold
    lab = lab.view(grid, grid).numpy()
    hole, empty = low | odd, _empty_cells(c, x0, x1, y0, y1, grid)
    in_gaps = float(hole[empty].mean()) if empty.any() else math.nan
    args = (threshold, odd, float(hole.mean()), float(low.mean()), empty, float(empty.mean()), in_gaps)
    return HoleMap(xs.numpy(), ys.numpy(), z.cpu(), images.cpu(), conf, lab, *args)


def _empty_cells(c: torch.Tensor, x0: float, x1: float, y0: float, y1: float, n: int) -> np.ndarray:
    """(n, n) bool: the grid points (row 0 at y1) whose cell (the points nearer to it than to any other
    grid point) holds none of the codes c (N, 2)."""
    ix = ((c[:, 0] - x0) / max(x1 - x0, 1e-12) * (n - 1)).round().long()
    iy = ((y1 - c[:, 1]) / max(y1 - y0, 1e-12) * (n - 1)).round().long()
    keep = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    counts = torch.zeros(n, n)
    counts.index_put_((iy[keep], ix[keep]), torch.ones(int(keep.sum())), accumulate=True)
    return (counts == 0).numpy()


# ------------------------------------------------------------------------------------------- C2


@dataclass
class Neighbourhood:
    radii: list[float]  # r, in units of the codes' per-dimension spread s
    agreement: list[float]  # per radius: share of decoded neighbours classified as the example's label y
    consistency: list[float]  # per radius: share classified as the decoded code itself (r = 0) is
    confidence: list[float]  # per radius: mean top class probability of the decoded neighbours
    n: int  # examples
    draws: int  # neighbours per example and radius

    def mean_agreement(self) -> float:
        """The agreement averaged over the radii above 0: one number for "nearby codes keep the digit"."""
        vals = [a for r, a in zip(self.radii, self.agreement) if r > 0]
        return float(np.mean(vals)) if vals else float("nan")


@torch.inference_mode()
def neighbourhood_agreement(model, clf, x: torch.Tensor, y: torch.Tensor, radii, draws: int = 4, seed: int = 0):
    """C2: for each example of x (N, *shape) with label y (N,), its code z (the posterior mean), and `draws`
    neighbours z + r * s * eps per radius r (eps ~ N(0, I), s (D,) the per-dimension standard deviation of
    the N codes, so r is in the codes' own units whatever their scale): the share of decoded neighbours the
    classifier labels y, the share it labels as the decoded code itself, and its mean confidence.
    Works for any latent size, AE or VAE. Returns a Neighbourhood."""
    z = posterior_means(model, x)  # (N, D)
    s = z.std(0) if len(z) > 1 else torch.zeros_like(z[0])
    g = torch.Generator().manual_seed(seed)
    y = y.to(z.device)
    own = clf.predict_proba(decode_means(model, z)).argmax(-1).to(z.device)  # (N,)
    agree, consistent, conf = [], [], []
    for r in radii:
        eps = torch.randn(draws, *z.shape, generator=g).to(z.device)  # (draws, N, D)
        zz = (z + float(r) * s * eps).reshape(-1, z.shape[1])
        p = clf.predict_proba(decode_means(model, zz)).to(z.device).view(draws, len(z), -1)
        lab = p.argmax(-1)  # (draws, N)
        agree.append(float((lab == y).float().mean()))
        consistent.append(float((lab == own).float().mean()))
        conf.append(float(p.max(-1).values.mean()))
    return Neighbourhood([float(r) for r in radii], agree, consistent, conf, len(z), draws)


# ------------------------------------------------------------------------------------------- C3


@torch.inference_mode()
def sampling_scores(model, clf, x_real: torch.Tensor, n: int, seed: int = 0) -> dict[str, dict]:
    """C3: n digits generated by decoding codes drawn from the VAE's prior ("prior": model.latent_sampler,
    N(0, I) unless it has another; for an AE, N(0, I), what "sample the latent space" means without one) and,
    for an AE, from its fitted Gaussian
    model.latent_sampler ("fitted"); each scored by classifier.generation_scores (Frechet distance on the
    classifier's features, confidence, coverage) against the first min(n, N/2) real images of x_real."""
    n_ref = min(n, len(x_real) // 2)
    x_ref = x_real[:n_ref]
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    z = model.latent_sampler(n, g) if model.is_vae else torch.randn(n, model.latent_dim, generator=g).to(device)
    draws = {"prior": z}  # N(0, I)'s draws are the same numbers either way
    if not model.is_vae:
        draws["fitted"] = model.latent_sampler(n, g)
    return {k: generation_scores(clf, decode_means(model, z), x_ref) for k, z in draws.items()}


def real_scores(clf, x_real: torch.Tensor, n: int) -> dict:
    """The floor of sampling_scores at the same n: real images x_real[n_ref:2 n_ref] scored against the
    first n_ref (a Frechet distance this small is what two samples of the real data differ by)."""
    n_ref = min(n, len(x_real) // 2)
    return generation_scores(clf, x_real[n_ref : 2 * n_ref], x_real[:n_ref])


# ------------------------------------------------------------------------------------------- C4


def interpolation_compare(ae, vae, clf, x: torch.Tensor, y: torch.Tensor | None, pairs: int = 3, steps: int = 10):
    """C4: studies.interp_study on an AE and a VAE (any latent size; the pairs of test examples that
    studies.pair_indices picks from x, y) and studies.compare_interp of the two: its dict (modes, wins, n)
    with the study's summary per (run, mode) under "summary"."""
    main = [Entry("ae", Path("ae"), ae, []), Entry("vae", Path("vae"), vae, [])]
    study = interp_study(main, clf, x, y, replace(ReportSettings(), pairs=pairs, steps=steps))
    return {**compare_interp(study.summary, "ae", "vae"), "summary": study.summary}


# ------------------------------------------------------------------------------------------- C8


@torch.inference_mode()
def aggregate_codes(model, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One code per example of x (N, *shape): a draw z ~ q(z|x) for a VAE (together, draws of the aggregate
    posterior q(z) = E_x q(z|x), what the prior should match), the code itself for an AE. (N, D)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), BATCH):
        q = model.encode(x[i : i + BATCH].to(next(model.parameters()).device))
        eps = torch.randn(q.mean.shape, generator=g).to(q.mean.device)
        out.append(q.mean + q.stddev * eps if model.is_vae else q.mean)
    return torch.cat(out)


def gaussian_kl_to_standard(mean: torch.Tensor, cov: torch.Tensor) -> dict[str, float]:
    """KL( N(mean, cov) || N(0, I) ) in closed form, nats, with its two parts:

    kl = 1/2 (tr S + m.m - D - log det S) = mean_part (1/2 m.m) + cov_part (1/2 (tr S - D - log det S))
    """
    m, s = mean.detach().double().cpu(), cov.detach().double().cpu()
    d = m.shape[0]
    logdet = 2 * torch.log(torch.diagonal(torch.linalg.cholesky(s))).sum()
    mean_part = 0.5 * float(m @ m)
    cov_part = 0.5 * float(torch.trace(s) - d - logdet)
    return {"kl": mean_part + cov_part, "mean_part": mean_part, "cov_part": cov_part}


def code_prior_kl(codes: torch.Tensor) -> dict[str, float]:
    """C8: fit N(m, S) to codes (N, D) (sample mean and covariance, S + 1e-6 I so log det is finite) and
    return gaussian_kl_to_standard of it, and "floor": the KL expected from fitting N samples of N(0, I)
    itself, (D + D(D+1)/2) / (2N) (2N KL is asymptotically chi-square with that many degrees of freedom):
    differences below it are sampling noise."""
    z = codes.detach().double().cpu()
    n, d = z.shape
    cov = torch.cov(z.T).reshape(d, d) + 1e-6 * torch.eye(d, dtype=torch.float64)
    return {**gaussian_kl_to_standard(z.mean(0), cov), "floor": (d + d * (d + 1) / 2) / (2 * n)}
