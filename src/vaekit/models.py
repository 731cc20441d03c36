"""Autoencoder and VAE, each composed of an encoder, a decoder, a likelihood and a prior.

    model.encode(x)  -> q(z|x): Normal for a VAE, PointMass for an AE (.mean, .stddev)
    model.decode(z)  -> p(x|z): Bernoulli / Gaussian / ContinuousBernoulli (.mean, .log_prob(x))
    model.sample(n)  -> (n, *shape) decoded means of prior draws

Objectives live in objectives.py; the models only compute distributions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.distributions import Bernoulli, ContinuousBernoulli, Gaussian, Normal, PointMass, Prior, StandardNormal
from vaekit.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vaekit.objectives import training_loss

LOGVAR_RANGE = (-14.0, 8.0)  # sigma in [9e-4, 55]: exp() never overflows, KL stays finite


class BernoulliLikelihood(nn.Module):
    def __init__(self, event_ndim: int):
        super().__init__()
        self.event_ndim = event_ndim

    def forward(self, out: torch.Tensor) -> Bernoulli:
        return Bernoulli(out, self.event_ndim)


class ContinuousBernoulliLikelihood(BernoulliLikelihood):
    def forward(self, out: torch.Tensor) -> ContinuousBernoulli:
        return ContinuousBernoulli(out, self.event_ndim)


class GaussianLikelihood(nn.Module):
    """N(x; decoder output, sigma^2): sigma fixed, or learned globally or per pixel, never below min_sigma."""

    def __init__(self, shape: tuple[int, ...], sigma: float, learn: str, min_sigma: float):
        super().__init__()
        self.event_ndim, self.min_sigma = len(shape), min_sigma
        d = sigma - min_sigma  # softplus^-1(d) = d + log(1 - e^-d), stable for any d > 0 (log(expm1(d)) overflows)
        raw = torch.full(
            () if learn in ("none", "global") else shape, d + math.log(-math.expm1(-d)) if d > 0 else -10.0
        )
        # sigma = min_sigma + softplus(raw): smooth, and bounded away from zero.
        if learn == "none":
            self.register_buffer("raw_sigma", raw)
        else:
            self.raw_sigma = nn.Parameter(raw)

    def log_sigma(self) -> torch.Tensor:
        return torch.log(self.min_sigma + nn.functional.softplus(self.raw_sigma))

    def forward(self, out: torch.Tensor) -> Gaussian:
        return Gaussian(out, self.log_sigma(), self.event_ndim)


def make_likelihood(cfg: ModelConfig) -> nn.Module:
    n = len(cfg.input_shape)
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood(n)
    if cfg.likelihood == "cbernoulli":
        return ContinuousBernoulliLikelihood(n)
    return GaussianLikelihood(tuple(cfg.input_shape), cfg.sigma, cfg.learn_sigma, cfg.min_sigma)


class _LatentModel(nn.Module):
    """What AE and VAE share: the decoder side, p(x|z)."""

    def __init__(
        self,
        config: ModelConfig,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        prior: Prior | None = None,
    ):
        super().__init__()
        self.config = config
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        # p(z): the objectives ask it for log_prob, samples and (when it has one) an analytic KL; N(0, I) by default
        self.prior = prior if prior is not None else StandardNormal(config.latent_dim)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config.input_shape)

    def decode(self, z: torch.Tensor):
        """p(x|z) for z (..., D); the distribution's parameters have shape (..., *shape)."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        return self.likelihood(out.view(*lead, *self.shape))

    def forward(self, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0, iw_k: int = 1):
        """The training objective: (per-example loss (B,), Terms). forward() so that DDP can wrap it."""
        return training_loss(self, x, beta=beta, free_bits=free_bits, iw_k=iw_k)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded mean at the posterior mean, (B, *shape)."""
        return self.decode(self.encode(x).mean).mean

    def _repr_html_(self) -> str:
        """What Jupyter shows for a model: architecture, latent size, prior, likelihood (vaekit.display)."""
        from vaekit.display import model_html

        return model_html(self)


class VAE(_LatentModel):
    is_vae = True

    def encode(self, x: torch.Tensor) -> Normal:
        """q(z|x) = N(mu(x), diag sigma(x)^2), x (B, *shape) in [0, 1]."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return Normal(mu, logvar.clamp(*LOGVAR_RANGE))

    def latent_sampler(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the prior p(z), (n, D)."""
        return self.prior.sample(n, generator, device=next(self.parameters()).device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoded means of n prior draws, (n, *shape)."""
        return self.decode(self.latent_sampler(n, generator)).mean


class Autoencoder(_LatentModel):
    """A deterministic autoencoder. It has no prior of its own; to generate, `sample` draws from a Gaussian
    fitted to the training codes (`fit_code_gaussian`), the usual fair stand-in."""

    is_vae = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.config.latent_dim
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_chol", torch.eye(d))

    def encode(self, x: torch.Tensor) -> PointMass:
        return PointMass(self.encoder(x))

    @torch.no_grad()
    def fit_code_gaussian(self, z: torch.Tensor) -> None:
        """Fit N(m, S) to codes z (N, D); jitter keeps S positive definite."""
        m = z.mean(0)
        cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1]) + 1e-5 * torch.eye(z.shape[1], device=z.device)
        self.code_mean.copy_(m)
        self.code_chol.copy_(torch.linalg.cholesky(cov))

    def latent_sampler(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n, self.latent_dim, generator=generator).to(self.code_mean.device)
        return self.code_mean + eps @ self.code_chol.T

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.latent_sampler(n, generator)).mean


def build_model(cfg: ModelConfig) -> VAE | Autoencoder:
    """A freshly initialised model from its config."""
    cfg.validate()
    shape, d = tuple(cfg.input_shape), cfg.latent_dim
    out = 2 * d if cfg.model == "vae" else d
    if cfg.arch == "mlp":
        enc = MLPEncoder(shape, cfg.hidden, out, cfg.activation)
        dec = MLPDecoder(shape, cfg.hidden, d, cfg.activation)
    else:
        enc = ConvEncoder(shape, cfg.channels, cfg.hidden, out, cfg.activation)
        dec = ConvDecoder(shape, cfg.channels, cfg.hidden, d, cfg.activation)
    cls = VAE if cfg.model == "vae" else Autoencoder
    return cls(cfg, enc, dec, make_likelihood(cfg))
