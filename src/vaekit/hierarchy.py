"""Stochastic layers x -> z1 -> ... -> zL (Burda et al. 2015, section 5: two layers, `--latent-dim 100,50`).

    q(z|x) = q(z1|x) prod_l q(z_l|z_l-1)        p(x, z) = p(zL) prod_l p(z_l|z_l+1) p(x|z1)

Every factor is a diagonal Normal given its parent (p(zL) is the configured prior: N(0, I), a VampPrior or a
mixture over the top layer). A latent code is the concatenation z = [z1, ..., zL] (..., D), D = the sum of
the sizes, bottom first, so the interface every objective and estimator uses is the one-layer model's:
model.encode(x) is a HierarchicalPosterior (rsample(k, eps=) with eps (B, D) or (k, B, D), log_prob,
log_prob_per_dim, mean, stddev), model.decode(z) reads z1 only, model.prior is a HierarchicalPrior
(log_prob, log_prob_per_dim, sample). The ELBO's KL is then the Monte Carlo one (no closed form), per
dimension too (each factor is diagonal given its parent), so free bits work with a N(0, I) top.

Networks: x <-> z1 are the model's encoder and decoder (--hidden); each upper pair q(z_l+1|z_l), p(z_l|z_l+1)
is an MLP of as many hidden layers, each half as wide per level up (`layer_hidden`: --hidden 200,200 gives
Burda et al.'s 100,100 between z1 and z2), with the model's activation, ending in (mu, logvar).

A VampPrior over the top layer: its components are q(zL | u_k) reached from the pseudo-inputs u_k through the
means of the lower layers (z1 = mu1(u_k), z2 = mu2(z1), ...), `HierarchicalPosterior.top`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaekit.distributions import Normal, Prior, StandardNormal
from vaekit.models import LOGVAR_RANGE, VAE
from vaekit.networks import mlp


def layer_hidden(hidden: tuple[int, ...], level: int) -> tuple[int, ...]:
    """The hidden widths of the networks between z_level and z_level+1 (level >= 1): --hidden's, halved
    `level` times (rounded up)."""
    return tuple(max(1, math.ceil(w / 2**level)) for w in hidden)


class Step(nn.Module):
    """A diagonal Normal given its parent: h (..., d_in) -> N(mu(h), diag exp(logvar(h))) over d_out values."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, activation: str):
        super().__init__()
        self.net = mlp([d_in, *hidden, 2 * d_out], activation)

    def forward(self, h: torch.Tensor) -> Normal:
        mu, logvar = self.net(h).chunk(2, dim=-1)
        return Normal(mu, logvar.clamp(*LOGVAR_RANGE))

    def stopped(self, h: torch.Tensor) -> Normal:
        """forward(h) with this network's weights detached: h keeps its gradient, the weights get none."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, (h,))


class HierarchicalPosterior:
    """q(z|x) = q(z1|x) prod_l q(z_l|z_l-1) over z = [z1, ..., zL] (..., D): `first` is q(z1|x) (B, d1),
    `steps` the callables z_l-1 -> q(z_l|z_l-1) (Step modules, or their `stopped` methods)."""

    event_ndim = 1

    def __init__(self, first: Normal, steps, sizes: tuple[int, ...]):
        self.first, self.steps, self.sizes = first, list(steps), tuple(sizes)
        self._drawn = None  # (z, its conditionals) of the last rsample: log_prob(z) reuses them
        self._means = None  # (ancestral means, their conditionals)

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return z.split(self.sizes, dim=-1)

    def rsample(self, k: int | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Ancestral reparameterized draws z_l = mu_l(z_l-1) + sigma_l(z_l-1) eps_l: (B, D), or (k, B, D)
        when k is given; eps (B, D) or (k, B, D) is every layer's noise, bottom first."""
        parts = self._split(eps) if eps is not None else [None] * len(self.sizes)
        zs, conds = [self.first.rsample(k, parts[0])], [self.first]
        for step, e in zip(self.steps, parts[1:]):
            conds.append(step(zs[-1]))
            zs.append(conds[-1].rsample(eps=e))
        z = torch.cat(zs, dim=-1)
        self._drawn = (z, conds)
        return z

    def sample(self, k: int | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(k)

    def conditionals(self, z: torch.Tensor) -> list[Normal]:
        """q(z1|x), q(z2|z1), ... at z's own layers (those of the last rsample when z is its draw)."""
        if self._drawn is not None and self._drawn[0] is z:
            return self._drawn[1]
        return [self.first] + [step(h) for step, h in zip(self.steps, self._split(z)[:-1])]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) = sum over layers, (..., D) -> (...), in nats."""
        return sum(c.log_prob(part) for c, part in zip(self.conditionals(z), self._split(z)))

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z_l,d | z_l-1) for each latent value, (..., D) -> (..., D); they sum to log_prob."""
        return torch.cat([c.log_prob_per_dim(p) for c, p in zip(self.conditionals(z), self._split(z))], -1)

    def stopped(self) -> HierarchicalPosterior:
        """This posterior with every parameter detached (DReG): q(z1|x)'s mu and logvar, the upper networks'
        weights; a z passed to log_prob keeps its gradient, through each layer's conditional on the one below."""
        return HierarchicalPosterior(self.first.stopped(), [s.stopped for s in self.steps], self.sizes)

    def _mean_path(self) -> tuple[torch.Tensor, list[Normal]]:
        if self._means is None:
            ms, conds = [self.first.mu], [self.first]
            for step in self.steps:
                conds.append(step(ms[-1]))
                ms.append(conds[-1].mu)
            self._means = (torch.cat(ms, dim=-1), conds)
        return self._means

    @property
    def mean(self) -> torch.Tensor:
        """The ancestral means (B, D): m1 = mu1(x), m_l = mu_l(m_l-1) (a layer's mean given its parent's)."""
        return self._mean_path()[0]

    mu = mean  # the posterior's centre, as a Normal's (evaluate draws its noise in mu's shape)

    @property
    def stddev(self) -> torch.Tensor:
        """Each layer's standard deviation given its parent's mean, (B, D)."""
        return torch.cat([c.stddev for c in self._mean_path()[1]], dim=-1)

    def top(self) -> Normal:
        """q(zL | the lower layers at their means): what a VampPrior's component is for pseudo-inputs."""
        return self._mean_path()[1][-1]


class HierarchicalPrior(nn.Module, Prior):
    """p(z) = p(zL) prod_l p(z_l|z_l+1) over z = [z1, ..., zL] (..., D): `top` is p(zL) (any Prior, a module
    when it has parameters), `down[l]` the Step z_l+2 -> p(z_l+1|z_l+2) (0-based: down[0] gives p(z1|z2))."""

    def __init__(self, top: Prior, sizes: tuple[int, ...], hidden: tuple[int, ...], activation: str):
        super().__init__()
        self.top, self.sizes, self.dim = top, tuple(sizes), sum(sizes)
        self.down = nn.ModuleList(
            Step(sizes[i + 1], layer_hidden(hidden, i + 1), sizes[i], activation) for i in range(len(sizes) - 1)
        )

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return z.split(self.sizes, dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(zL) + sum_l log p(z_l|z_l+1), (..., D) -> (...), in nats."""
        parts = self._split(z)
        out = self.top.log_prob(parts[-1])
        for step, low, high in zip(self.down, parts[:-1], parts[1:]):
            out = out + step(high).log_prob(low)
        return out

    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor | None:
        """(..., D) -> (..., D) when the top prior factorises over its dimensions, else None."""
        parts = self._split(z)
        top = self.top.log_prob_per_dim(parts[-1])
        if top is None:
            return None
        return torch.cat(
            [step(high).log_prob_per_dim(low) for step, low, high in zip(self.down, parts, parts[1:])] + [top], -1
        )

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, device=None, temperature: float = 1.0):
        """(n, D) ancestral draws: zL from the top prior at temperature t (its own rule), then each layer below
        z_l = mu_l + t * sigma_l * eps (every layer's spread times t: t = 0 is the chain of means from zL's)."""
        z = self.top.sample(n, generator, device=device, temperature=temperature)
        zs = [z]
        for step, d in zip(reversed(self.down), reversed(self.sizes[:-1])):
            p = step(zs[0])
            eps = StandardNormal(d).sample(n, generator, device=p.mu.device, temperature=temperature)
            zs.insert(0, p.rsample(eps=eps))
        return torch.cat(zs, dim=-1)

    def complete(self, z_top: torch.Tensor) -> torch.Tensor:
        """A top-layer point (..., dL) with the layers below at their means under p: (..., D)."""
        zs = [z_top]
        for step in reversed(self.down):
            zs.insert(0, step(zs[0]).mu)
        return torch.cat(zs, dim=-1)

    def __repr__(self) -> str:
        return f"HierarchicalPrior(sizes={list(self.sizes)}, top={self.top!r})"


class HierarchicalVAE(VAE):
    """A VAE with stochastic layers z1..zL (config.latent_dim a list, bottom to top): the encoder gives q(z1|x),
    `up[l]` q(z_l+2|z_l+1), the prior (HierarchicalPrior) p(zL) and p(z_l|z_l+1), the decoder p(x|z1)."""

    def __init__(self, config, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module):
        super().__init__(config, encoder, decoder, likelihood)  # make_prior builds the HierarchicalPrior
        sizes, hidden = config.latent_sizes, tuple(config.hidden)
        self.up = nn.ModuleList(
            Step(sizes[i], layer_hidden(hidden, i + 1), sizes[i + 1], config.activation) for i in range(len(sizes) - 1)
        )

    def _posterior(self, out: torch.Tensor) -> HierarchicalPosterior:
        return HierarchicalPosterior(super()._posterior(out), self.up, self.latent_sizes)

    def _decode(self, z: torch.Tensor, c: torch.Tensor | None):
        """p(x|z1) for z (..., D): the bottom layer's values only."""
        return super()._decode(z[..., : self.latent_sizes[0]], c)

    def _top_q(self, x: torch.Tensor, c: torch.Tensor | None) -> Normal:
        """q(zL | x through the lower layers' means), (B, dL): a VampPrior's component for pseudo-inputs x."""
        return self._q(x, c).top()

    def top(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., -self.latent_sizes[-1] :]

    def complete(self, z_top: torch.Tensor) -> torch.Tensor:
        return self.prior.complete(z_top)
