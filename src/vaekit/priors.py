"""Learned priors p(z), as modules of the model (their parameters live in model.safetensors):

    VampPrior   p(z) = 1/K sum_k q(z | u_k), K pseudo-inputs u_k learned in data space
                (Tomczak & Welling 2018, eq. 9): q is the model's own encoder, so the prior moves with it
    MoGPrior    p(z) = 1/K sum_k N(z; m_k, diag s_k^2), K learned means and diagonal variances, equal weights

Each builds a distributions.MixtureNormal from its parameters on every call (the encoder changes as it
trains) and answers the Prior interface through it: log_prob, sample, and None for the analytic KL and the
per-dimension log-density (the ELBO then uses the Monte Carlo KL; free bits are refused).

Pseudo-inputs are u = sigmoid(logits), so they stay in the data's range [0, 1] and every pixel keeps a
gradient (the paper's hardtanh(0, 1) has none outside the range: a pixel pushed past 0 or 1 sticks there).
`build_model` starts them from mid-grey plus noise; `init_pseudo_inputs` (what `vaekit train` calls on a
fresh run) from K distinct random training examples plus a little noise, so the prior starts as the mixture
of K real examples' posteriors, each component distinct (the paper's data-mean start makes them near copies
that separate slowly).
"""

from __future__ import annotations

import torch
from torch import nn

from vaekit.distributions import MixtureNormal, Prior, StandardNormal
from vaekit.errors import VaekitError

INIT_NOISE = 0.05  # data-space std of the noise added to the training examples the pseudo-inputs start from
INIT_RANGE = (0.01, 0.99)  # where they start: sigmoid's gradient is not yet negligible (logit within +-4.6)


class _Mixture(nn.Module, Prior):
    """A Prior whose density is the MixtureNormal that `mixture()` builds from the module's parameters."""

    def mixture(self) -> MixtureNormal:
        raise NotImplementedError

    @property
    def components(self) -> int:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...), in nats."""
        return self.mixture().log_prob(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None, temperature: float = 1.0):
        """(n, D) draws: a component uniformly, then its Gaussian with its spread times t (MixtureNormal)."""
        return self.mixture().sample(n, generator, device, temperature)


class VampPrior(_Mixture):
    """p(z) = 1/K sum_k q(z | u_k) with pseudo-inputs u_k = sigmoid(logits_k) (K, *shape) in [0, 1].

    `posterior(u, c)` is the model's q(z|u) for inputs u (K, *shape) and one-hot labels c (K, C) or None: a
    bound method of the model, not a submodule, so the encoder's weights are saved once. A conditional model's
    pseudo-inputs carry labels too (p(z) = 1/K sum_k q(z | u_k, y_k), still one prior for every y)."""

    def __init__(self, posterior, shape: tuple[int, ...], dim: int, k: int, num_classes: int = 0):
        super().__init__()
        self.posterior, self.dim, self.num_classes = posterior, dim, num_classes
        u = (0.5 + 0.1 * torch.randn(k, *shape)).clamp(*INIT_RANGE)  # mid-grey plus noise (see the module doc)
        self.logits = nn.Parameter(torch.logit(u))
        self.register_buffer("labels", torch.arange(k) % max(num_classes, 1))  # (K,) int64

    @property
    def components(self) -> int:
        return self.logits.shape[0]

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """u (K, *shape) in [0, 1]."""
        return torch.sigmoid(self.logits)

    def mixture(self) -> MixtureNormal:
        c = nn.functional.one_hot(self.labels, self.num_classes).float() if self.num_classes else None
        q = self.posterior(self.pseudo_inputs, c)  # Normal with mu, logvar (K, D)
        return MixtureNormal(q.mu, q.logvar)

    def __repr__(self) -> str:
        return f"VampPrior(K={self.components} pseudo-inputs of shape {tuple(self.logits.shape[1:])})"


class MoGPrior(_Mixture):
    """p(z) = 1/K sum_k N(z; m_k, diag exp(logvar_k)), means (K, D) drawn from N(0, I), unit variances at
    the start; the log-variances are clamped to the encoder's range when used."""

    def __init__(self, dim: int, k: int, logvar_range: tuple[float, float]):
        super().__init__()
        self.dim, self.logvar_range = dim, logvar_range
        self.means = nn.Parameter(torch.randn(k, dim))
        self.logvars = nn.Parameter(torch.zeros(k, dim))

    @property
    def components(self) -> int:
        return self.means.shape[0]

    def mixture(self) -> MixtureNormal:
        return MixtureNormal(self.means, self.logvars.clamp(*self.logvar_range))

    def __repr__(self) -> str:
        return f"MoGPrior(K={self.components} Gaussians in {self.dim} dimensions)"


def make_prior(model) -> Prior:
    """The prior model.config.prior names, for `model` (a VAE being built: the VampPrior uses its encoder).
    With stochastic layers it is the top layer's p(zL), inside a hierarchy.HierarchicalPrior."""
    cfg = model.config
    sizes = cfg.latent_sizes
    if cfg.prior == "vamp":
        q = model._top_q if len(sizes) > 1 else model._q
        top = VampPrior(q, tuple(cfg.input_shape), sizes[-1], cfg.prior_components, cfg.num_classes)
    elif cfg.prior == "mog":
        from vaekit.models import LOGVAR_RANGE

        top = MoGPrior(sizes[-1], cfg.prior_components, LOGVAR_RANGE)
    else:
        top = StandardNormal(sizes[-1])
    if len(sizes) == 1:
        return top
    from vaekit.hierarchy import HierarchicalPrior

    return HierarchicalPrior(top, sizes, tuple(cfg.hidden), cfg.activation)


def top_prior(prior):
    """p(zL), the top layer's prior, of a hierarchy's prior; any other prior itself."""
    return getattr(prior, "top", prior) if hasattr(prior, "down") else prior


def describe(prior) -> str:
    """The prior in words, for the report, the explorer and the notebook: "N(0, I)", "a VampPrior (K=500
    pseudo-inputs)", "a mixture of K=10 Gaussians"; with stochastic layers, the top layer's and p(z_l|z_l+1)."""
    if top_prior(prior) is not prior:
        n = len(prior.sizes)
        below = "p(z1|z2)" if n == 2 else f"p(z_l|z_l+1) for l = 1..{n - 1}"
        return f"{describe(prior.top)} on the top layer z{n}, then {below}"
    if isinstance(prior, VampPrior):
        return f"a VampPrior (K={prior.components} pseudo-inputs)"
    if isinstance(prior, MoGPrior):
        return f"a mixture of K={prior.components} Gaussians"
    return "N(0, I)" if isinstance(prior, StandardNormal) else type(prior).__name__


def check_components(model, n: int, where: str) -> None:
    """A one-line VaekitError when a VampPrior wants more pseudo-inputs than the n training examples."""
    prior = top_prior(getattr(model, "prior", None))
    if isinstance(prior, VampPrior) and prior.components > n:
        raise VaekitError(
            f"--prior-components {prior.components} is more pseudo-inputs than the {n} training examples of "
            f"{where}: use at most {n}",
            option="prior_components",
        )


@torch.no_grad()
def init_pseudo_inputs(model, ds, seed: int) -> None:
    """Start a VampPrior's pseudo-inputs from K distinct random training examples of `ds` (a Dataset, pixels
    in [0, 1]) plus N(0, INIT_NOISE^2) noise, clipped to INIT_RANGE, with their labels for a conditional
    model. Drawn with their own generator seeded by `seed`; any other prior: nothing happens."""
    prior = top_prior(getattr(model, "prior", None))
    if not isinstance(prior, VampPrior):
        return
    check_components(model, len(ds), ds.name)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: prior.components].sort().values
    x = ds.batch(idx)
    u = (x + INIT_NOISE * torch.randn(x.shape, generator=g)).clamp(*INIT_RANGE)
    prior.logits.copy_(torch.logit(u).to(prior.logits.device))
    if prior.num_classes and ds.y is not None:
        prior.labels.copy_(ds.y[idx].to(prior.labels.device))
