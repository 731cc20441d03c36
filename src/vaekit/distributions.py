"""Distributions as small objects: log_prob summed over the event dimensions, rsample, analytic KL.

Written by hand rather than taken from torch.distributions because (1) we sum
over a configurable number of event dims, (2) the hot training path wants the
fused `binary_cross_entropy_with_logits` and closed forms without validation
overhead, and (3) the continuous Bernoulli needs a Taylor branch near 0.5 for
stability. Every log_prob and KL here is tested against torch.distributions.
All log-densities are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def _sum_event(t: torch.Tensor, event_ndim: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-event_ndim, 0))) if event_ndim else t


class Normal:
    """Diagonal Gaussian N(mu, diag exp(logvar)); the event is the last dimension (the latent)."""

    event_ndim = 1

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu, self.logvar = mu, logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def stddev(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, k: int | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """The reparameterization trick, z = mu + sigma * eps (Kingma & Welling 2013, eq. 10).

        Returns (B, D), or (k, B, D) when k is given; `eps` may be passed for exact reproducibility.
        """
        if eps is None:
            shape = self.mu.shape if k is None else (k, *self.mu.shape)
            eps = torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.stddev * eps

    def sample(self, k: int | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(k)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu, sigma^2) summed over the latent dimension: (..., D) -> (...)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar)).sum(-1)

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z_d; mu_d, sigma_d^2) for each latent dimension: (..., D) -> (..., D)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar))

    def stopped(self) -> Normal:
        """This Normal with its parameters detached: log q(z) whose gradient reaches only z (DReG)."""
        return Normal(self.mu.detach(), self.logvar.detach())

    def kl_per_dim(self, p: Normal) -> torch.Tensor:
        """KL(self || p) per latent dimension for another diagonal Normal p (broadcasting), (B, D), in nats:
        (log sigma_p^2 - log sigma^2 + (sigma^2 + (mu - mu_p)^2) / sigma_p^2 - 1) / 2."""
        return 0.5 * (
            p.logvar - self.logvar + (torch.exp(self.logvar) + (self.mu - p.mu) ** 2) * torch.exp(-p.logvar) - 1
        )

    def kl_std_normal_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension, (B, D) (Kingma & Welling 2013, Appendix B)."""
        return -0.5 * (1 + self.logvar - self.mu**2 - torch.exp(self.logvar))

    def kl_std_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, (B,), in nats."""
        return self.kl_std_normal_per_dim().sum(-1)


class PointMass:
    """The 'posterior' of a deterministic autoencoder: all mass at z; stddev 0."""

    event_ndim = 1

    def __init__(self, z: torch.Tensor):
        self.z = z

    @property
    def mean(self) -> torch.Tensor:
        return self.z

    @property
    def stddev(self) -> torch.Tensor:
        return torch.zeros_like(self.z)

    def rsample(self, k: int | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        return self.z if k is None else self.z.expand(k, *self.z.shape)


class Prior:
    """A prior p(z) over a D-dimensional latent. Besides log_prob and sample, a prior says what it knows
    about KL(q || p), so that the objective asks instead of assuming N(0, I):

        analytic_kl_per_dim(q)  KL(q || p) in closed form per latent dimension, (B, D); None: no closed form
        log_prob_per_dim(z)     log p(z_d) per latent dimension, (..., D); None: p does not factorise over d

    The defaults answer None to both (a mixture, say); a prior overrides what it can answer.
    """

    dim: int

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...), in nats."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, temperature: float = 1.0):
        """(n, D) draws on `device`; `temperature` t < 1 draws closer to the mode (a Gaussian's spread times t,
        the usual reduced-temperature sampling: less variety, fewer draws from where q puts little mass)."""
        raise NotImplementedError

    def analytic_kl_per_dim(self, q) -> torch.Tensor | None:
        return None

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor | None:
        return None


class StandardNormal(Prior):
    """The prior p(z) = N(0, I) over a D-dimensional latent."""

    def __init__(self, dim: int):
        self.dim = dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...), in nats."""
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D), in nats."""
        return -0.5 * (LOG_2PI + z**2)

    def analytic_kl_per_dim(self, q) -> torch.Tensor | None:
        """KL(q || N(0, I)) per dimension, (B, D), for a diagonal Normal q; None for any other q."""
        return q.kl_std_normal_per_dim() if isinstance(q, Normal) else None

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, temperature: float = 1.0):
        """(n, D) draws of N(0, t^2 I) on `device`; drawn where `generator` lives (a CPU generator can feed a
        CUDA model)."""
        z = torch.randn(n, self.dim, generator=generator, device=generator.device if generator is not None else device)
        z = z if temperature == 1.0 else z * temperature
        return z.to(device) if device is not None else z


class NormalPrior(Prior):
    """p(z) = N(mu, diag exp(logvar)) with fixed mu, logvar (D,) on the model's device: the standard
    normal shifted and rescaled, with a closed-form KL against a diagonal Normal q."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.normal, self.dim = Normal(mu, logvar), mu.shape[-1]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...), in nats."""
        return self.normal.log_prob(z)

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D), in nats."""
        return self.normal.log_prob_per_dim(z)

    def analytic_kl_per_dim(self, q) -> torch.Tensor | None:
        """KL(q || p) per dimension, (B, D), for a diagonal Normal q; None for any other q."""
        return q.kl_per_dim(self.normal) if isinstance(q, Normal) else None

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, temperature: float = 1.0):
        """(n, D) draws on `device`: mu + sigma * eps with eps drawn as StandardNormal draws it (t * eps)."""
        eps = StandardNormal(self.dim).sample(n, generator, device=self.normal.mu.device, temperature=temperature)
        z = self.normal.rsample(eps=eps)
        return z.to(device) if device is not None else z


EXP_FLOOR = -80.0  # logsumexp's exponents below the row's maximum are floored here: e^-80 never subnormal


def logsumexp_rows(t: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp(t, -1) for a table (n, K), without autograd, with every exponent t - max floored at
    EXP_FLOOR: that moves the sum (>= 1) by at most K e^-80 relative (1e-32 nats for K = 1e3) and keeps exp
    from returning subnormal numbers, which cost ~5x a normal one on x86 (most of a mixture's table, for a
    code far from most components, lies 100s of nats below the row's maximum). Rows that are all -inf give
    -inf, inf gives inf and NaN NaN, as torch's."""
    top = t.amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    out = torch.log(torch.exp((t - shift).clamp_(min=EXP_FLOOR)).sum(-1)) + shift.squeeze(-1)
    return torch.where(top.squeeze(-1) == -math.inf, top.squeeze(-1), out)


class MixtureNormal(Prior):
    """p(z) = 1/K sum_k N(z; mu_k, diag exp(logvar_k)), mu and logvar (K, D): the VampPrior's and a learned
    mixture's density (priors.py builds one per call from its parameters). No closed-form KL against q, and it
    does not factorise over the dimensions: the ELBO uses the Monte Carlo KL and free bits are refused."""

    CHUNK = 1 << 22  # (rows x K) values of the (N, K) log-density table computed at once, with autograd
    CACHE_CHUNK = 1 << 17  # without: a table that stays in cache through its passes (2.5x faster than 1 << 22)

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu, self.logvar, self.dim = mu, logvar, mu.shape[-1]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...), in nats: log (1/K) sum_k N(z; mu_k, sigma_k^2), a logsumexp over K.

        The squared distances come from matrix products, (z - mu_k)^2 / s^2 = z^2 / s^2 - 2 z mu_k / s^2 +
        mu_k^2 / s^2 summed over d, so only an (N, K) table exists, never (N, K, D). The expansion cancels large
        terms, so it runs in float64 about the components' centre c: the error is about 1e-16 (|z - c|^2 +
        |mu_k - c|^2) / sigma^2 nats, 1e-3 for codes 3e3 from c at the encoder's floor sigma 9e-4, below 1e-10
        for a trained model's codes. The logsumexp then runs in z's precision (at least float32). Without
        autograd and outside torch.compile (an uncompiled evaluation), cache-sized chunks and a logsumexp
        without subnormal exps (logsumexp_rows): 2.2x faster, the same values (benchmarks/RESULTS.md)."""
        lead, k = z.shape[:-1], self.mu.shape[0]
        c = self.mu.detach().double().mean(0)  # (D,) any shift gives the same value; this one keeps terms small
        mu, logvar = self.mu.double() - c, self.logvar.double()
        prec = torch.exp(-logvar)  # (K, D)
        const = -0.5 * (self.dim * LOG_2PI + logvar.sum(-1) + (mu**2 * prec).sum(-1))  # (K,)
        coef = torch.cat([prec, -2 * mu * prec], -1)  # (K, 2D): [z^2, z] @ coef.T is the z-dependent part
        flat = z.reshape(-1, self.dim).double() - c  # (N, D)
        # not requires_grad: torch.func's traced grad transforms do not set it, is_grad_enabled says it
        fast = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        rows = max(1, (self.CACHE_CHUNK if fast else self.CHUNK) // k)
        out, dtype = [], torch.promote_types(z.dtype, torch.float32)
        for zc in flat.split(rows) if flat.shape[0] else [flat]:
            log_pk = torch.addmm(const, torch.cat([zc**2, zc], -1), coef.T, alpha=-0.5)  # (n, K) log N(z; mu_k, s_k)
            out.append(logsumexp_rows(log_pk.to(dtype)) if fast else torch.logsumexp(log_pk.to(dtype), -1))  # (n,)
        return (torch.cat(out) - math.log(k)).reshape(lead)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, temperature: float = 1.0):
        """(n, D) draws on `device`: a component k uniformly, then mu_k + t * sigma_k * eps. The temperature t
        narrows each component about its mean and keeps the mixture's weights (t = 0: the K means only)."""
        where = generator.device if generator is not None else self.mu.device
        k = torch.randint(self.mu.shape[0], (n,), generator=generator, device=where).to(self.mu.device)
        eps = StandardNormal(self.dim).sample(n, generator, device=self.mu.device, temperature=temperature)
        z = self.mu[k] + torch.exp(0.5 * self.logvar[k]) * eps
        return z.to(device) if device is not None else z


class Bernoulli:
    """p(x|z) for binary pixels, parameterized by logits; event = the last `event_ndim` dims."""

    def __init__(self, logits: torch.Tensor, event_ndim: int):
        self.logits, self.event_ndim = logits, event_ndim

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(self.mean, generator=generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum_j x_j log p_j + (1 - x_j) log(1 - p_j), i.e. -BCE, per example. x broadcasts against logits."""
        x = x.expand_as(self.logits)
        return -_sum_event(F.binary_cross_entropy_with_logits(self.logits, x, reduction="none"), self.event_ndim)


class Gaussian:
    """p(x|z) = N(x; mean, sigma^2) per pixel, sigma fixed or learned (a tensor broadcasting to mean)."""

    def __init__(self, mean: torch.Tensor, log_sigma: torch.Tensor, event_ndim: int):
        self._mean, self.log_sigma, self.event_ndim = mean, log_sigma, event_ndim

    @property
    def mean(self) -> torch.Tensor:
        return self._mean

    @property
    def stddev(self) -> torch.Tensor:
        return torch.exp(self.log_sigma).expand_as(self._mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self._mean.shape, generator=generator, device=self._mean.device)
        return self._mean + self.stddev * noise

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z2 = ((x - self._mean) * torch.exp(-self.log_sigma)) ** 2
        return -_sum_event(0.5 * (LOG_2PI + z2) + self.log_sigma, self.event_ndim)


class ContinuousBernoulli:
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): the normalised density on [0, 1]
    behind a BCE-like loss, log p(x) = x log l + (1 - x) log(1 - l) + log C(l), l = sigmoid(logits)."""

    _TAYLOR_BAND = 1e-2  # |l - 0.5| below this: Taylor expansion of log C, the closed form is 0/0

    def __init__(self, logits: torch.Tensor, event_ndim: int):
        self.logits, self.event_ndim = logits, event_ndim

    def _log_norm(self) -> torch.Tensor:
        """log C(l), C(l) = 2 artanh(1 - 2l) / (1 - 2l) (eq. 7), computed in logit space for stability."""
        # 1 - 2l = -tanh(logits / 2) and 2 artanh(1 - 2l) = -logits, so C = logits / tanh(logits / 2).
        a = self.logits
        near = a.abs() < 4 * self._TAYLOR_BAND  # l within ~0.01 of 0.5
        safe = torch.where(near, torch.ones_like(a), a)
        # log(a / tanh(a/2)) for large |a| ~ log|a|; tanh saturates to 1 without loss.
        exact = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
        # Taylor: a / tanh(a/2) = 2 + a^2/6 - a^4/360 + ...; log of it.
        a2 = a * a
        taylor = math.log(2.0) + torch.log1p(a2 / 12 - a2 * a2 / 720)
        return torch.where(near, taylor, exact)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = l / (2l - 1) + 1 / (2 artanh(1 - 2l)) = 1 / (1 - e^-a) - 1 / a.

        The closed form cancels two terms of size ~1/|a|, so for |a| < 0.5 the series
        0.5 + a/12 - a^3/720 + a^5/30240 is used instead (error < 1e-8 there).
        """
        a = self.logits
        near = a.abs() < 0.5
        safe = torch.where(near, torch.ones_like(a), a)
        lam = torch.sigmoid(safe)
        exact = lam / (2 * lam - 1) - 1 / safe
        a2 = a * a
        taylor = 0.5 + a * (1 / 12 - a2 * (1 / 720 - a2 / 30240))
        return torch.where(near, taylor, exact)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Inverse-CDF sample: x = log(1 + u (e^a - 1)) / a, u ~ U(0, 1); x = u at a = 0 exactly."""
        a = self.logits
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        safe = torch.where(a == 0, torch.ones_like(a), a)
        # log1p/expm1 keep this accurate down to tiny |a| (no band needed); e^a overflows only for large a > 0,
        # where it is rewritten as 1 + log(u + (1 - u) e^-a) / a.
        small = torch.log1p(u * torch.expm1(safe.clamp(max=1.0))) / safe.clamp(max=1.0)
        large = 1 + torch.log(u + (1 - u) * torch.exp(-safe.abs())) / safe.abs()
        return torch.where(a == 0, u, torch.where(safe < 1, small, large)).clamp(0, 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand_as(self.logits)
        bce = F.binary_cross_entropy_with_logits(self.logits, x, reduction="none")
        return _sum_event(self._log_norm() - bce, self.event_ndim)
