"""Autoencoder and VAE, each composed of an encoder, a decoder, a likelihood and a prior.

    model.encode(x)  -> q(z|x): Normal for a VAE, PointMass for an AE (.mean, .stddev)
    model.decode(z)  -> p(x|z): Bernoulli / Gaussian / ContinuousBernoulli (.mean, .log_prob(x))
    model.sample(n)  -> (n, *shape) decoded means of prior draws

`--latent-dim 100,50` builds a HierarchicalVAE (hierarchy.py): stochastic layers, the same interface over the
concatenated code z = [z1, z2] (..., D).

A conditional model (config.num_classes > 0; Sohn et al. 2015: q(z|x, y), p(x|z, y), prior p(z)) takes
integer labels y in [0, num_classes) as well: encode(x, y), decode(z, y), sample(n, y=y), reconstruct(x, y),
model(x, y). `model.given(y)` is a view bound to labels y (no parameters of its own) with the unconditional
interface (encode(x), decode(z), prior, ...), so every objective and estimator written for p(x) computes the
conditional one on it: log_likelihood(model.given(y), x, k) is log p(x|y). The label enters both networks
as a one-hot vector (networks.py).

Objectives live in objectives.py; the models only compute distributions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.distributions import Bernoulli, ContinuousBernoulli, Gaussian, Normal, PointMass, Prior
from vaekit.errors import VaekitError
from vaekit.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vaekit.objectives import training_loss
from vaekit.priors import make_prior

NOT_CONDITIONAL = "this model is not conditional: it takes no labels (train with --conditional)"
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


def _labels(y) -> torch.Tensor:
    """y as an int64 tensor (an int, a list, an integer array or tensor); a one-line error for anything else."""
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise VaekitError(f"labels must be integers, got {type(y).__name__}") from None
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise VaekitError(f"labels must be integers, got {y.dtype}")
    return y.long()


class _LatentModel(nn.Module):
    """What AE and VAE share: the decoder side, p(x|z), and the labels of a conditional model."""

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
        # p(z): the objectives ask it for log_prob, samples and (when it has one) an analytic KL; config.prior
        # names it (N(0, I) by default); a learned one is a submodule (priors.py)
        self.prior = prior if prior is not None else make_prior(self)

    @property
    def latent_dim(self) -> int:
        """D, the size of a code z: the sum of the stochastic layers' sizes (hierarchy.py)."""
        return sum(self.config.latent_sizes)

    @property
    def latent_sizes(self) -> tuple[int, ...]:
        """The stochastic layers' sizes, bottom to top: (D,) for the one-layer model."""
        return self.config.latent_sizes

    def top(self, z: torch.Tensor) -> torch.Tensor:
        """The top layer's values of codes z (..., D): z itself for the one-layer model (hierarchy.py)."""
        return z

    def complete(self, z_top: torch.Tensor) -> torch.Tensor:
        """A full code (..., D) for a top-layer point (the layers below at their means under p): the point itself
        for the one-layer model. What the explorer decodes from its sliders and map (hierarchy.py)."""
        return z_top

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config.input_shape)

    @property
    def num_classes(self) -> int:
        """The number of label classes of a conditional model; 0 for an unconditional one."""
        return self.config.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def one_hot(self, y) -> torch.Tensor | None:
        """The one-hot codes (*y.shape, num_classes) of labels y (checked: integers in [0, num_classes)), on
        the model's device; None for an unconditional model without labels. One-line VaekitErrors: labels
        missing for a conditional model, given to an unconditional one, or outside the classes."""
        k = self.num_classes
        if y is None:
            if k:
                raise VaekitError(f"this model is conditional ({k} classes): give the labels y of the examples")
            return None
        if not k:
            raise VaekitError(NOT_CONDITIONAL)
        y = _labels(y)
        if y.numel():
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= k:
                bad = lo if lo < 0 else hi
                raise VaekitError(f"label {bad} is outside this model's classes 0..{k - 1}")
        device = next(self.parameters()).device
        return nn.functional.one_hot(y.to(device), k).float()

    def _encode(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """The encoder's output for x (B, *shape) and one-hot labels c broadcast to (B, K) (or None)."""
        if c is None:  # an unconditional network takes x alone
            return self.encoder(x)
        return self.encoder(x, _broadcast(c, x.shape[:1], "examples", x.shape))

    def _decode(self, z: torch.Tensor, c: torch.Tensor | None):
        """p(x|z, c) for z (..., D) and one-hot labels c broadcast to (..., K) (or None)."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        if c is None:
            out = self.decoder(flat)
        else:
            out = self.decoder(flat, _broadcast(c, lead, "codes", z.shape).reshape(-1, c.shape[-1]))
        return self.likelihood(out.view(*lead, *self.shape))

    def _q(self, x: torch.Tensor, c: torch.Tensor | None):
        """q(z|x, c) for x (B, *shape) and one-hot labels c (B, K) or None: what a VampPrior encodes."""
        return self._posterior(self._encode(x, c))

    def decode(self, z: torch.Tensor, y=None):
        """p(x|z) (p(x|z, y) for a conditional model) for z (..., D): the distribution's parameters have shape
        (..., *shape). y: labels broadcastable to z's leading dims: (B,) for z (B, D) or (k, B, D), or one label."""
        return self._decode(z, self.one_hot(y))

    def encode(self, x: torch.Tensor, y=None):
        """q(z|x) (q(z|x, y) for a conditional model), x (B, *shape) in [0, 1], y (B,) or one label."""
        return self._posterior(self._encode(x, self.one_hot(y)))

    def given(self, y) -> Given:
        """This conditional model bound to labels y (B,) (or one label for every example): a light view whose
        encode(x), decode(z), sample(n), forward(x) are q(z|x, y), p(x|z, y), ... (see Given)."""
        if not self.conditional:
            raise VaekitError(NOT_CONDITIONAL)
        return Given(self, self.one_hot(y))

    def _bound(self, y):
        """self.given(y), or self for an unconditional model without labels (the checks of one_hot)."""
        return self if y is None and not self.conditional else Given(self, self.one_hot(y))

    def forward(self, x: torch.Tensor, y=None, beta=1.0, free_bits=0.0, iw_k=1, eps=None, estimator="standard"):
        """The training objective: (per-example loss (B,), Terms). forward() so that DDP can wrap it.
        y (B,): the labels of a conditional model; eps, estimator: as in objectives.training_loss."""
        return training_loss(self._bound(y), x, beta=beta, free_bits=free_bits, iw_k=iw_k, eps=eps, estimator=estimator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y=None) -> torch.Tensor:
        """The decoded mean at the posterior mean, (B, *shape)."""
        m = self._bound(y)
        return m.decode(m.encode(x).mean).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y=None, temperature: float = 1.0):
        """Decoded means of n draws from the prior (an AE: its code Gaussian), (n, *shape); a conditional
        model decodes them with labels y: (n,) or one label for all. `temperature` t scales the draws' spread
        about the prior's centre (Prior.sample); 1 = the prior itself."""
        return self.decode(self.latent_sampler(n, generator, temperature), y).mean

    def _repr_html_(self) -> str:
        """What Jupyter shows for a model: architecture, latent size, prior, likelihood (vaekit.display)."""
        from vaekit.display import model_html

        return model_html(self)


def conditioned(model, y):
    """model.given(y) for a conditional model, else the model itself (its data's labels, if any, ignored):
    what evaluation calls on each batch (x, y), so one loop serves both kinds of model."""
    return model.given(y) if getattr(model, "conditional", False) else model


def _broadcast(c: torch.Tensor, lead: tuple[int, ...], what: str, shape) -> torch.Tensor:
    """One-hot labels c (..., K) broadcast to (*lead, K); a one-line error when they do not fit."""
    try:
        return c.expand(*lead, c.shape[-1])
    except RuntimeError:
        raise VaekitError(
            f"labels of shape {tuple(c.shape[:-1])} do not match {what} of shape {tuple(shape)}"
        ) from None


class Given:
    """A model bound to labels: what `model.given(y)` returns. Not a module and no copy: it holds the model
    and the labels' one-hot codes c (B, K) (or (K,): one label for all), and answers the interface every
    objective and estimator uses -- encode(x) = q(z|x, y), decode(z) = p(x|z, y) with z (..., B, D), prior,
    is_vae, latent_dim, shape, config, latent_sampler -- so elbo(view, x), iwae_bound(view, x, k) and
    log_likelihood(view, x, k) are the conditional ones. Anything else is the model's (parameters(), ...)."""

    def __init__(self, model: _LatentModel, c: torch.Tensor):
        self.model, self.c = model, c

    def __getattr__(self, name):  # prior, is_vae, latent_dim, shape, config, parameters, latent_sampler, ...
        if name == "model":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def encode(self, x: torch.Tensor):
        return self.model._posterior(self.model._encode(x, self.c))

    def decode(self, z: torch.Tensor):
        return self.model._decode(z, self.c)

    def __call__(self, x: torch.Tensor, beta=1.0, free_bits=0.0, iw_k=1, eps=None, estimator="standard"):
        return training_loss(self, x, beta=beta, free_bits=free_bits, iw_k=iw_k, eps=eps, estimator=estimator)

    forward = __call__

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).mean).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        return self.decode(self.model.latent_sampler(n, generator, temperature)).mean


class VAE(_LatentModel):
    is_vae = True

    def _posterior(self, out: torch.Tensor) -> Normal:
        """q(z|x) = N(mu(x), diag sigma(x)^2) from the encoder's output (B, 2D)."""
        mu, logvar = out.chunk(2, dim=-1)
        return Normal(mu, logvar.clamp(*LOGVAR_RANGE))

    def latent_sampler(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0):
        """n draws from the prior p(z), (n, D) (at a temperature: Prior.sample)."""
        return self.prior.sample(n, generator, device=next(self.parameters()).device, temperature=temperature)


class Autoencoder(_LatentModel):
    """A deterministic autoencoder. It has no prior of its own; to generate, `sample` draws from a Gaussian
    fitted to the training codes (`fit_code_gaussian`), the usual fair stand-in (one Gaussian over the codes
    of every class, for a conditional AE)."""

    is_vae = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.latent_dim
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_chol", torch.eye(d))

    def _posterior(self, out: torch.Tensor) -> PointMass:
        return PointMass(out)

    @torch.no_grad()
    def fit_code_gaussian(self, z: torch.Tensor) -> None:
        """Fit N(m, S) to codes z (N, D); jitter keeps S positive definite."""
        m = z.mean(0)
        cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1]) + 1e-5 * torch.eye(z.shape[1], device=z.device)
        self.code_mean.copy_(m)
        self.code_chol.copy_(torch.linalg.cholesky(cov))

    def latent_sampler(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0):
        """n draws from the code Gaussian N(m, t^2 S), (n, D)."""
        eps = torch.randn(n, self.latent_dim, generator=generator).to(self.code_mean.device)
        return self.code_mean + (eps if temperature == 1.0 else eps * temperature) @ self.code_chol.T


def build_model(cfg: ModelConfig) -> VAE | Autoencoder:
    """A freshly initialised model from its config."""
    cfg.validate()
    shape, d = tuple(cfg.input_shape), cfg.latent_sizes[0]  # the networks between x and z1
    out = 2 * d if cfg.model == "vae" else d
    k = cfg.num_classes  # a conditional model: the one-hot label joins each network's first dense layer
    if cfg.arch == "mlp":
        enc = MLPEncoder(shape, cfg.hidden, out, cfg.activation, k)
        dec = MLPDecoder(shape, cfg.hidden, d, cfg.activation, k)
    else:
        enc = ConvEncoder(shape, cfg.channels, cfg.hidden, out, cfg.activation, k)
        dec = ConvDecoder(shape, cfg.channels, cfg.hidden, d, cfg.activation, k)
    if len(cfg.latent_sizes) > 1:
        from vaekit.hierarchy import HierarchicalVAE

        return HierarchicalVAE(cfg, enc, dec, make_likelihood(cfg))
    cls = VAE if cfg.model == "vae" else Autoencoder
    return cls(cfg, enc, dec, make_likelihood(cfg))
