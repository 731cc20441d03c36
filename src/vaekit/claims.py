"""The lecture's claims, measured: one function per claim's numbers, `measure_claims` for all of them on the
demo's runs, and `claims_table` (claims_table.py) turning the results into rows. No HTML, no files.

    C1 gaps (Problem 1)             claims_latent.hole_map                   2-D AE vs 2-D VAE
    C2 nearby codes, same digit     claims_latent.neighbourhood_agreement    AE vs VAE, D=2 and D=20
    C3 generating by sampling       claims_latent.sampling_scores            AE (N(0, I), fitted) vs VAE
    C4 interpolation                claims_latent.interpolation_compare      AE vs VAE, D=2 and D=20
    C5 Problem 2 (pixel distance)   shift_numbers (vae_studies.shift_study)  the VAE
    C6 the two forms of the ELBO    elbo_forms                               the VAEs
    C7 the reparameterization trick vae_studies.reparam_gradients            the VAEs
    C8 codes pulled to the prior    claims_latent.code_prior_kl              AE vs VAE, D=2 and D=20

    res = measure_claims({"ae": ae, "vae": vae, "ae2d": ae2d, "vae2d": vae2d}, clf, x_test, y_test)
    rows = claims_table(res)          # list[Claim]; [r.to_dict() for r in rows] is report.json's "claims"
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from vaekit.claims_latent import (
    HoleMap,
    Neighbourhood,
    Typicality,
    aggregate_codes,
    code_prior_kl,
    fit_typicality,
    hole_map,
    interpolation_compare,
    neighbourhood_agreement,
    real_scores,
    sampling_scores,
)
from vaekit.data import binarize
from vaekit.evaluate import posterior_means
from vaekit.vae_studies import contrast_index, read_shift, reparam_gradients, shift_study

MODELS = ("ae", "vae", "ae2d", "vae2d")  # the runs measure_claims knows: an AE and a VAE at D=20 and at D=2
PAIRS = {"D=20": ("ae", "vae"), "D=2": ("ae2d", "vae2d")}


@dataclass(frozen=True)
class ClaimSettings:
    """How much each claim's numbers cost; the defaults take seconds per claim on a 2-core CPU."""

    n_codes: int = 2000  # test digits whose codes set the hole map's box (C1) and the aggregate codes (C8)
    grid: int = 25  # C1: grid x grid decoded codes
    threshold: float = 0.5  # C1: a grid point is a hole below this confidence ...
    typical_q: float = 0.99  # C1: ... or beyond this quantile of real digits' feature distances (fit_typicality)
    n_neigh: int = 500  # C2: test digits whose neighbourhoods are decoded
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)  # C2, in code spreads
    neigh_draws: int = 4  # C2: neighbours per digit and radius
    n_gen: int = 2000  # C3: generated digits per sampler
    pairs: int = 3  # C4: interpolation pairs
    steps: int = 10  # C4: frames per path
    iw_k: int = 500  # C5: importance samples for log p(x)
    shift_draws: int = 10  # C5: binarizations averaged
    elbo_draws: int = 100  # C6: eps draws for the per-example ELBO estimates
    grad_draws: int = 30  # C6, C7: single-sample gradient estimates
    grad_batch: int = 100  # C6, C7: the batch they are measured on
    seed: int = 0


QUICK_CLAIMS = ClaimSettings(
    n_codes=500, grid=12, n_neigh=100, neigh_draws=2, n_gen=300, pairs=2, steps=8, iw_k=50, shift_draws=2,
    elbo_draws=50, grad_draws=10, grad_batch=50,
)  # fmt: skip


# ------------------------------------------------------------------------------------------- C5


def shift_numbers(model, clf, x: torch.Tensor, y: torch.Tensor | None, k: int, draws: int, seed: int) -> dict:
    """C5 (Problem 2): vae_studies.shift_study of x[0] shifted 1-3 pixels and of the nearest digit of another
    class (vae_studies.contrast_index), read by read_shift: "mse" and "logp" per image (original, shifts...,
    other), "first_worse" (the smallest shift farther in pixel MSE than the other digit, or None),
    "logp_drop" (nats), "same_label" (the classifier keeps the label through the shifts; None without one),
    "other_index" (the other digit's index in x), and for the report "images" (M, *shape) and "reading"
    (the ShiftReading)."""
    j = contrast_index(x, y, clf)
    st = shift_study(model, x[0], x[j], k, draws, seed)
    rd = read_shift(st, clf)
    return {
        "mse": st["mse"],
        "logp": st["logp"],
        "first_worse": rd.first_worse,
        "logp_drop": rd.logp_drop,
        "same_label": rd.same_label,
        "other_index": j,
        "images": st["images"],
        "reading": rd,
    }


# ------------------------------------------------------------------------------------------- C6


@dataclass
class ElboForms:
    """The ELBO two ways on one batch, with the same eps for both (nats per example):
    analytic  E_q[log p(x|z)] - KL(q(z|x) || p(z)), the KL in closed form     (the lecture's intuition 1)
    mc        E_q[log p(x|z) + log p(z) - log q(z|x)], all by Monte Carlo      (intuition 3)"""

    analytic: torch.Tensor  # (B,) per-example mean over draws
    analytic_se: torch.Tensor  # (B,) its standard error
    mc: torch.Tensor  # (B,)
    mc_se: torch.Tensor  # (B,)
    diff: float  # batch mean of mc - analytic (0 in expectation)
    diff_se: float  # its standard error over draws (the same eps for both: a paired difference)
    value_var_ratio: float  # Var(one-draw mc) / Var(one-draw analytic), each averaged over the examples
    grad_var_analytic: float  # variance of the one-draw encoder gradient of the batch mean, summed over params
    grad_var_mc: float
    grad_var_ratio: float  # grad_var_mc / grad_var_analytic
    grad_mean_analytic: torch.Tensor = field(repr=False)  # (P,) the mean encoder gradient over grad draws
    grad_mean_mc: torch.Tensor = field(repr=False)
    draws: int = 0
    grad_draws: int = 0


def _forms(model, q, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both one-draw ELBO estimates at z = mu + sigma * eps, eps (..., B, D): each (..., B)."""
    z = q.rsample(eps=eps)
    rec = model.decode(z).log_prob(x)
    return rec - model.prior.analytic_kl_per_dim(q).sum(-1), rec + model.prior.log_prob(z) - q.log_prob(z)


def elbo_forms(model, x: torch.Tensor, draws: int = 200, grad_draws: int = 50, seed: int = 0) -> ElboForms:
    """C6: per-example means and standard errors of both ELBO forms over `draws` eps (the same eps for
    both), and the variance of the encoder's gradient of the batch mean under each over `grad_draws` eps
    (again shared). x (B, *shape) as the model sees it (binarized for a Bernoulli model trained so). The
    model's prior must have a closed-form KL against q (N(0, I) does)."""
    g = torch.Generator().manual_seed(seed)
    b, d = len(x), model.latent_dim
    with torch.no_grad():
        q = model.encode(x)
        chunks = [_forms(model, q, x, torch.randn(k, b, d, generator=g)) for k in _chunks(draws, 20)]
    a, m = torch.cat([c[0] for c in chunks]).double(), torch.cat([c[1] for c in chunks]).double()  # (draws, B)
    diff = (m - a).mean(1)  # (draws,) batch-mean paired difference per draw
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    sums = {k: [0.0, 0.0] for k in ("a", "m")}  # running sum and sum of squares of the flat gradients
    with torch.enable_grad():
        for _ in range(grad_draws):
            q = model.encode(x)
            fa, fm = _forms(model, q, x, torch.randn(b, d, generator=g))
            for key, f, keep in (("a", fa, True), ("m", fm, False)):
                gr = torch.autograd.grad(f.mean(), params, retain_graph=keep, allow_unused=True)
                v = torch.cat([(t if t is not None else torch.zeros_like(p)).flatten() for t, p in zip(gr, params)])
                sums[key][0] += v.double()
                sums[key][1] += v.double() ** 2
    mean = {k: s / grad_draws for k, (s, _) in sums.items()}
    var = {k: float((sq / grad_draws - mean[k] ** 2).clamp_min(0).sum()) for k, (_, sq) in sums.items()}
    return ElboForms(
        analytic=a.mean(0),
        analytic_se=a.std(0) / draws**0.5 if draws > 1 else torch.zeros(b),
        mc=m.mean(0),
        mc_se=m.std(0) / draws**0.5 if draws > 1 else torch.zeros(b),
        diff=float(diff.mean()),
        diff_se=float(diff.std() / draws**0.5) if draws > 1 else float("nan"),
        value_var_ratio=_ratio(float(m.var(0).mean()), float(a.var(0).mean())),
        grad_var_analytic=var["a"],
        grad_var_mc=var["m"],
        grad_var_ratio=_ratio(var["m"], var["a"]),
        grad_mean_analytic=mean["a"],
        grad_mean_mc=mean["m"],
        draws=draws,
        grad_draws=grad_draws,
    )


def _ratio(a: float, b: float) -> float:
    """a / b for variances: inf when only b is 0, nan when both are."""
    return a / b if b > 0 else (math.inf if a > 0 else math.nan)


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


# ------------------------------------------------------------------------------------------- all of them


@dataclass
class ClaimResults:
    """What measure_claims measured, by claim and run name (absent: not measured)."""

    runs: dict[str, dict]  # run name -> {"latent_dim", "is_vae"} of the runs given
    settings: ClaimSettings
    has_classifier: bool
    holes: dict[str, HoleMap] = field(default_factory=dict)  # C1, 2-D runs
    codes: dict[str, torch.Tensor] = field(default_factory=dict)  # C1: the n_codes test codes (N, 2) it spans
    typicality: Typicality | None = None  # C1: what a real digit's features look like (needs labels)
    neighbourhoods: dict[str, Neighbourhood] = field(default_factory=dict)  # C2
    sampling: dict[str, dict] = field(default_factory=dict)  # C3, run -> sampler -> generation_scores
    real: dict | None = None  # C3's floor, real_scores
    interp: dict[str, dict] = field(default_factory=dict)  # C4, setting ("D=20", "D=2") -> interpolation_compare
    shift: dict | None = None  # C5, shift_numbers
    elbo: dict[str, ElboForms] = field(default_factory=dict)  # C6, VAE runs
    grads: dict[str, dict] = field(default_factory=dict)  # C7, VAE runs -> reparam_gradients
    prior_kl: dict[str, dict] = field(default_factory=dict)  # C8, run -> code_prior_kl
    seconds: dict[str, float] = field(default_factory=dict)  # claim id -> seconds spent measuring it


def measure_claims(models: dict, clf, x: torch.Tensor, y: torch.Tensor | None, s: ClaimSettings = ClaimSettings()):
    """Every claim's numbers on the runs in `models` (keys among MODELS: "ae", "vae" at D=20, "ae2d",
    "vae2d" at D=2; a missing or None one is skipped), with the classifier `clf` (None: the claims that need
    it are skipped) on greyscale test images x (N, *shape) with labels y (N,) or None: C3 compares n_gen
    generated digits with the first min(n_gen, N/2) of them (and those with the next as its floor), the other
    claims use the first n_codes, n_neigh or grad_batch. Returns ClaimResults, with the seconds each claim took."""
    m = {k: v for k, v in models.items() if k in MODELS and v is not None}
    res = ClaimResults({k: {"latent_dim": v.latent_dim, "is_vae": v.is_vae} for k, v in m.items()}, s, clf is not None)
    clock = _clock(res.seconds)
    xc, yc = x[: s.n_codes], None if y is None else y[: s.n_codes]
    if clf is not None:
        with clock("C1"):
            res.typicality = None if y is None else fit_typicality(clf, x, y, s.typical_q)
            for k in (k for k in ("ae2d", "vae2d") if k in m and m[k].latent_dim == 2):
                z = res.codes[k] = posterior_means(m[k], xc)
                res.holes[k] = hole_map(m[k], clf, z, s.grid, threshold=s.threshold, typical=res.typicality)
        with clock("C2"):
            for k, v in m.items() if y is not None else ():
                xn, yn = x[: s.n_neigh], y[: s.n_neigh]
                res.neighbourhoods[k] = neighbourhood_agreement(v, clf, xn, yn, s.radii, s.neigh_draws, s.seed)
        with clock("C3"):
            res.sampling = {k: sampling_scores(v, clf, x, s.n_gen, s.seed) for k, v in m.items()}
            res.real = real_scores(clf, x, s.n_gen)
    with clock("C4"):
        for setting, (a, v) in PAIRS.items():
            if a in m and v in m:
                res.interp[setting] = interpolation_compare(m[a], m[v], clf, xc, yc, s.pairs, s.steps)
    with clock("C5"):
        if "vae" in m:
            res.shift = shift_numbers(m["vae"], clf, xc, yc, s.iw_k, s.shift_draws, s.seed)
    x_bin = binarize(x[: s.grad_batch], torch.Generator().manual_seed(s.seed))  # one draw, for every VAE
    for k, v in m.items():
        if v.is_vae:
            xb = x_bin if _binary(v) else x[: s.grad_batch]
            with clock("C6"), torch.no_grad():  # both forms need the prior's closed-form KL (N(0, I) has one)
                closed = v.prior.analytic_kl_per_dim(v.encode(xb[:1])) is not None
            if closed:
                with clock("C6"):
                    res.elbo[k] = elbo_forms(v, xb, s.elbo_draws, s.grad_draws, s.seed)
            with clock("C7"):
                res.grads[k] = reparam_gradients(v, xb, s.grad_draws, s.seed)
    with clock("C8"):
        res.prior_kl = {k: code_prior_kl(aggregate_codes(v, xc, s.seed)) for k, v in m.items()}
    return res


def _clock(seconds: dict[str, float]):
    """A context manager factory adding the seconds spent inside `with clock(id):` to seconds[id]."""

    @contextmanager
    def clock(cid: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            seconds[cid] = seconds.get(cid, 0.0) + time.perf_counter() - t

    return clock


def _binary(model) -> bool:
    rc = getattr(model, "run_config", None)
    return rc is not None and rc.train.binarize != "none"
