"""Training objectives as pure functions returning per-example values in nats; the caller reduces.

elbo(model, x)          E_q[log p(x|z)] - KL(q(z|x) || p(z)), one reparameterized sample; the KL is analytic
                        when model.prior has a closed form against q, else Monte Carlo (kl_divergence)
iwae_bound(model, x, k) log (1/k) sum_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x)   (Burda et al. 2015, eq. 8);
                        estimator="dreg": the same value, the encoder's gradient doubly reparameterized
ae_loss(model, x)       -log p(x | z = enc(x)), the autoencoder's reconstruction loss
training_loss(...)      what train.py minimises: -ELBO with beta, warm-up and free bits, or -IWAE
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaekit.config import ESTIMATORS
from vaekit.errors import VaekitError


@dataclass
class Terms:
    """Per-example terms, each (B,), in nats. For an AE, kl is zero and elbo = recon."""

    elbo: torch.Tensor
    recon: torch.Tensor  # E_q[log p(x|z)] (a log-likelihood: higher is better)
    kl: torch.Tensor  # KL(q(z|x) || p(z)): analytic, or one-sample Monte Carlo (see kl_divergence)
    kl_per_dim: torch.Tensor | None = None  # (B, D); None when the KL does not split over latent dimensions


def elbo(model, x: torch.Tensor, eps: torch.Tensor | None = None, analytic_kl: bool = True) -> Terms:
    """The evidence lower bound per example (Kingma & Welling 2013, eq. 10), x (B, *shape).

    The KL is analytic when model.prior has a closed form against q; with analytic_kl=False, or a prior
    without one, it is the one-sample Monte Carlo estimate log q(z|x) - log p(z) at the same z, which makes
    elbo equal to iwae_bound(k=1) for the same eps.
    """
    q = model.encode(x)
    if not model.is_vae:
        recon = model.decode(q.mean).log_prob(x)
        zero = torch.zeros_like(recon)
        return Terms(recon, recon, zero)
    z = q.rsample(eps=eps)
    recon = model.decode(z).log_prob(x)
    kl, kl_d = kl_divergence(model.prior, q, z, analytic=analytic_kl)
    return Terms(recon - kl, recon, kl, kl_d)


def kl_divergence(prior, q, z: torch.Tensor | None = None, analytic: bool = True):
    """KL(q(z|x) || p(z)) per example (B,) and per latent dimension (B, D) or None, in nats.

    In closed form when `analytic` and the prior has one against q (N(0, I): Kingma & Welling 2013,
    Appendix B). Otherwise the one-sample Monte Carlo estimate log q(z|x) - log p(z) at the reparameterized
    z (B, D) (drawn from q when None), unbiased in value and gradient; per dimension it is
    log q(z_d|x) - log p(z_d) when the prior factorises over the dimensions, else None.
    """
    kl_d = prior.analytic_kl_per_dim(q) if analytic else None
    if kl_d is not None:
        return kl_d.sum(-1), kl_d
    z = q.rsample() if z is None else z
    log_p_d = prior.log_prob_per_dim(z)  # (B, D) or None
    kl_d = None if log_p_d is None else q.log_prob_per_dim(z) - log_p_d
    return q.log_prob(z) - prior.log_prob(z), kl_d


def log_weights(model, x: torch.Tensor, k: int, eps: torch.Tensor | None = None, q=None) -> torch.Tensor:
    """Importance log-weights log p(x, z_i) - log q(z_i|x) for k posterior draws, (k, B).
    `q` is model.encode(x) when the caller already has it."""
    q = model.encode(x) if q is None else q
    z = q.rsample(k, eps=eps)  # (k, B, D)
    return model.decode(z).log_prob(x) + model.prior.log_prob(z) - q.log_prob(z)


def iwae_bound(
    model, x: torch.Tensor, k: int, eps: torch.Tensor | None = None, q=None, estimator: str = "standard"
) -> torch.Tensor:
    """The importance-weighted bound with k samples, (B,); k=1 is the (Monte Carlo KL) ELBO.

    estimator "standard": the bound's own gradient. "dreg": the same value (bit for bit), with the doubly
    reparameterized gradient for the encoder (Tucker et al. 2019, eq. 5), see dreg_log_weights."""
    if estimator not in ESTIMATORS:
        raise VaekitError(f"estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
    if estimator == "dreg":
        log_w = dreg_log_weights(model, x, k, eps, q)
    else:
        log_w = log_weights(model, x, k, eps, q)  # (k, B)
    return torch.logsumexp(log_w, 0) - math.log(k)


def dreg_log_weights(model, x: torch.Tensor, k: int, eps: torch.Tensor | None = None, q=None) -> torch.Tensor:
    """log_weights' values (k, B), built so that the gradient of logsumexp over them is DReG's.

    log q(z_i|x) is computed with q's parameters detached (q.stopped(): a Normal's mean and log-variance; a
    hierarchy's conditionals q(z_l|z_l-1) at z's own slices, their networks' weights detached), so the encoder's
    parameters get a gradient only through z_i (the score-function path is gone), and a hook on z (k, B, D)
    multiplies its gradient by the normalised weight w~_i = softmax(log w)_i: logsumexp gives z_i the gradient
    w~_i d log w_i / dz_i, the hook makes it w~_i^2 d log w_i / dz_i, the encoder's DReG gradient
    sum_i w~_i^2 d log w_i / dz_i dz_i/dphi.
    Whatever depends on parameters directly -- the decoder p(x|z_i), a learned prior's log p(z_i) -- keeps the
    usual IWAE gradient sum_i w~_i d log w_i / dtheta. One forward pass: the cost of the standard estimator."""
    q = model.encode(x) if q is None else q
    z = q.rsample(k, eps=eps)  # (k, B, D)
    q_stopped = q.stopped()  # a Normal's mu, logvar detached; a hierarchy's networks too (hierarchy.py)
    log_w = model.decode(z).log_prob(x) + model.prior.log_prob(z) - q_stopped.log_prob(z)
    if z.requires_grad:
        w = torch.softmax(log_w.detach(), 0).unsqueeze(-1)  # (k, B, 1), no gradient
        z.register_hook(lambda g: g * w.to(g.dtype))
    return log_w


def ae_loss(model, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z = enc(x)) per example, (B,): BCE for Bernoulli, scaled squared error for Gaussian."""
    return -model.decode(model.encode(x).mean).log_prob(x)


def kl_weight(beta: float, warmup_epochs: float, epoch_progress: float) -> float:
    """beta, ramped linearly from 0 over the first `warmup_epochs` (epoch_progress counts epochs, fractional)."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch_progress / warmup_epochs)


def free_bits_kl(kl_per_dim: torch.Tensor, nats: float) -> torch.Tensor:
    """Free bits (Kingma et al. 2016, eq. 15), per example (B,): a latent dimension whose batch-mean KL is
    below `nats` contributes the constant `nats` (no gradient pushes it further down); others their KL."""
    if nats <= 0:
        return kl_per_dim.sum(-1)
    below = kl_per_dim.detach().mean(0) < nats  # (D,)
    return torch.where(below, torch.full_like(kl_per_dim, nats), kl_per_dim).sum(-1)


def training_loss(
    model,
    x: torch.Tensor,
    *,
    beta: float = 1.0,
    free_bits: float = 0.0,
    iw_k: int = 1,
    eps=None,
    estimator: str = "standard",
) -> tuple[torch.Tensor, Terms]:
    """The per-example loss to minimise (B,) and the terms to report.

    eps: the reparameterization noise, (B, D) or (iw_k, B, D) for iw_k > 1; None draws it from torch's global
    generator (what a DDP rank passes instead: its rows of the global batch's noise, distributed.shard_noise).
    estimator: the IWAE bound's gradient, "standard" or "dreg" (iwae_bound); "dreg" needs iw_k > 1.

    Free bits need the KL per latent dimension: analytic, or Monte Carlo when the prior factorises over the
    dimensions (the per-dimension estimates sum to the KL's). A prior that does neither has no per-dimension
    KL to hold at `free_bits` nats, so free_bits > 0 with it is refused (VaekitError) rather than approximated.
    """
    if not model.is_vae:
        t = elbo(model, x)
        return -t.recon, t
    if estimator != "standard" and iw_k == 1:
        raise VaekitError(f"--estimator {estimator} estimates the IWAE bound's gradient: it needs --iw-k > 1")
    if iw_k > 1:
        q = model.encode(x)
        bound = iwae_bound(model, x, iw_k, eps, q=q, estimator=estimator)
        kl = kl_divergence(model.prior, q)[0].detach()  # reported only; the bound has no separate KL term
        return -bound, Terms(bound, bound + kl, kl)  # reported recon is the bound plus the KL
    t = elbo(model, x, eps)
    if free_bits <= 0:
        return -(t.recon - beta * t.kl), t
    if t.kl_per_dim is None:
        raise VaekitError(
            f"free bits need a KL per latent dimension, and the prior {type(model.prior).__name__} neither has an "
            "analytic one nor factorises over the dimensions: train with free bits 0"
        )
    return -(t.recon - beta * free_bits_kl(t.kl_per_dim, free_bits)), t
