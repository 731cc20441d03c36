"""Every log_prob, mean, sample and KL in vaekit.distributions against an oracle: torch.distributions
(Independent, summed over the event dims), numerical quadrature, or a Monte Carlo estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as td

from vaekit.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    MixtureNormal,
    Normal,
    NormalPrior,
    PointMass,
    Prior,
    StandardNormal,
    logsumexp_rows,
)

EXTREME_LOGITS = torch.tensor([-1e3, -50.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 20.0, 50.0, 1e3])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- Normal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_log_prob_matches_torch(dtype):
    g = _gen(1)
    mu = torch.randn(6, 5, generator=g, dtype=dtype) * 3
    logvar = torch.empty(6, 5, dtype=dtype).uniform_(-14, 8, generator=g)  # the range models.py clamps to
    z = mu + torch.randn(4, 6, 5, generator=g, dtype=dtype) * torch.exp(0.5 * logvar)  # (k, B, D) broadcasts
    ref = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)
    ours = Normal(mu, logvar).log_prob(z)
    assert ours.shape == (4, 6)
    torch.testing.assert_close(
        ours, ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-4 if dtype == torch.float32 else 1e-10
    )


def test_normal_mean_stddev_and_rsample_with_eps():
    mu, logvar = torch.randn(3, 4, generator=_gen(2)), torch.randn(3, 4, generator=_gen(3))
    q = Normal(mu, logvar)
    torch.testing.assert_close(q.stddev, torch.exp(logvar) ** 0.5)
    eps = torch.randn(7, 3, 4, generator=_gen(4))
    torch.testing.assert_close(q.rsample(7, eps=eps), mu + q.stddev * eps)
    assert q.rsample().shape == (3, 4) and q.rsample(5).shape == (5, 3, 4)
    assert not q.sample(2).requires_grad


def test_normal_rsample_moments():
    mu, logvar = torch.tensor([[0.5, -2.0, 3.0]]), torch.tensor([[0.0, -4.0, 2.0]])
    torch.manual_seed(0)
    z = Normal(mu, logvar).rsample(200_000)[:, 0]  # (k, D)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.exp(0.5 * logvar[0]), rtol=0.01, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_std_normal_matches_torch_kl_divergence(dtype):
    g = _gen(5)
    mu = torch.randn(50, 8, generator=g, dtype=dtype) * 4
    logvar = torch.empty(50, 8, dtype=dtype).uniform_(-14, 8, generator=g)
    q = Normal(mu, logvar)
    p = td.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref_per_dim = td.kl_divergence(td.Normal(mu, torch.exp(0.5 * logvar)), p)
    ref = td.kl_divergence(td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1), td.Independent(p, 1))
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(q.kl_std_normal_per_dim(), ref_per_dim, **tol)
    torch.testing.assert_close(q.kl_std_normal(), ref, **tol)
    assert (q.kl_std_normal_per_dim() >= 0).all()


def test_kl_is_zero_exactly_at_the_prior():
    q = Normal(torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.equal(q.kl_std_normal(), torch.zeros(2))


def test_analytic_kl_matches_monte_carlo():
    """KL(q || p) = E_q[log q(z) - log p(z)], estimated with 200k draws; within 5 standard errors."""
    mu = torch.tensor([[0.0, 0.0], [1.5, -0.5], [0.3, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, 0.0], [-2.0, 1.0], [-0.5, -3.0]], dtype=torch.float64)
    q, prior = Normal(mu, logvar), StandardNormal(2)
    torch.manual_seed(0)
    z = q.rsample(200_000)  # (k, B, D)
    log_ratio = q.log_prob(z) - prior.log_prob(z)  # (k, B)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    analytic = q.kl_std_normal()
    assert ((mc - analytic).abs() <= 5 * se + 1e-12).all(), (mc, analytic, se)
    assert analytic[0] == 0 and (analytic[1:] > 0.1).all()  # the check has teeth: non-trivial KLs


def test_standard_normal_sample_uses_the_generator_wherever_it_goes():
    a = StandardNormal(3).sample(5, _gen(1))
    b = StandardNormal(3).sample(5, _gen(1), device="cpu")
    assert torch.equal(a, b)
    m = StandardNormal(3).sample(5, _gen(1), device="meta")  # a CPU generator feeding another device
    assert m.device.type == "meta" and m.shape == (5, 3)


def test_prior_samples_at_a_temperature_have_their_spread_scaled():
    """T scales the draws about the prior's mean: exactly T * eps for the same generator, and the moments of
    N(mu, T^2 sigma^2) by Monte Carlo."""
    a, b = StandardNormal(3).sample(5, _gen(1)), StandardNormal(3).sample(5, _gen(1), temperature=0.3)
    torch.testing.assert_close(b, 0.3 * a, rtol=0, atol=0)
    _, prior, _, ref_p = _q_and_prior()
    s = prior.sample(200_000, _gen(13), temperature=0.5)
    torch.testing.assert_close(s.mean(0), ref_p.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(s.std(0), 0.5 * ref_p.stddev, rtol=0.01, atol=0)


def test_standard_normal_log_prob_and_sample():
    z = torch.randn(4, 7, 3, generator=_gen(6), dtype=torch.float64) * 5
    ref = td.Independent(td.Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1).log_prob(z)
    torch.testing.assert_close(StandardNormal(3).log_prob(z), ref, rtol=1e-12, atol=1e-10)
    s = StandardNormal(3).sample(100_000, _gen(7))
    assert s.shape == (100_000, 3)
    torch.testing.assert_close(s.mean(0), torch.zeros(3), atol=0.02, rtol=0)
    torch.testing.assert_close(s.std(0), torch.ones(3), atol=0.02, rtol=0)


# ------------------------------------------------------------------- priors: what they say about the KL


def _q_and_prior(dtype=torch.float64):
    """A diagonal Normal q (50, 6) and a prior N(m, diag s^2) with non-zero m and non-unit s, both as ours
    and as torch.distributions."""
    g = _gen(11)
    mu = torch.randn(50, 6, generator=g, dtype=dtype) * 3
    logvar = torch.empty(50, 6, dtype=dtype).uniform_(-14, 8, generator=g)
    p_mu = torch.tensor([1.5, -2.0, 0.0, 0.7, 3.0, -0.3], dtype=dtype)
    p_logvar = torch.tensor([0.8, -1.2, 2.0, 0.0, -0.5, 1.0], dtype=dtype)
    ref_q = td.Normal(mu, torch.exp(0.5 * logvar))
    ref_p = td.Normal(p_mu, torch.exp(0.5 * p_logvar))
    return Normal(mu, logvar), NormalPrior(p_mu, p_logvar), ref_q, ref_p


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_prior_analytic_kl_matches_torch_kl_divergence(dtype):
    q, prior, ref_q, ref_p = _q_and_prior(dtype)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    kl_d = prior.analytic_kl_per_dim(q)
    assert kl_d.shape == (50, 6)
    torch.testing.assert_close(kl_d, td.kl_divergence(ref_q, ref_p), **tol)
    torch.testing.assert_close(q.kl_per_dim(prior.normal), kl_d, rtol=0, atol=0)
    assert (kl_d >= 0).all()
    # the check has teeth: against N(0, I) the same q has a different KL
    assert (kl_d - q.kl_std_normal_per_dim()).abs().max() > 1.0
    # at the prior itself the KL vanishes
    at_p = Normal(prior.normal.mu.expand(3, 6), prior.normal.logvar.expand(3, 6))
    torch.testing.assert_close(prior.analytic_kl_per_dim(at_p), torch.zeros(3, 6, dtype=dtype), rtol=0, atol=1e-6)


def test_normal_prior_log_prob_and_sample_match_torch():
    q, prior, ref_q, ref_p = _q_and_prior()
    z = torch.randn(4, 50, 6, generator=_gen(12), dtype=torch.float64) * 4  # (k, B, D)
    torch.testing.assert_close(prior.log_prob_per_dim(z), ref_p.log_prob(z), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(prior.log_prob(z), td.Independent(ref_p, 1).log_prob(z), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(q.log_prob_per_dim(z), ref_q.log_prob(z), rtol=1e-12, atol=1e-10)
    assert prior.dim == 6
    s = prior.sample(200_000, _gen(13))
    assert s.shape == (200_000, 6) and s.dtype == torch.float64
    torch.testing.assert_close(s.mean(0), ref_p.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(s.std(0), ref_p.stddev, rtol=0.01, atol=0)
    assert torch.equal(prior.sample(5, _gen(1)), prior.sample(5, _gen(1), device="cpu"))  # seeded by the generator


def test_standard_normal_answers_with_the_same_numbers_as_before():
    """The standard normal's analytic KL is q.kl_std_normal_per_dim() itself (bit for bit: the ELBO of every
    trained model is unchanged), its per-dimension log-density sums to log_prob, and it has no closed form
    against anything but a diagonal Normal."""
    q, _, ref_q, _ = _q_and_prior()
    prior = StandardNormal(6)
    assert torch.equal(prior.analytic_kl_per_dim(q), q.kl_std_normal_per_dim())
    z = torch.randn(3, 50, 6, generator=_gen(14), dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob_per_dim(z).sum(-1), prior.log_prob(z), rtol=1e-14, atol=1e-12)
    assert prior.analytic_kl_per_dim(PointMass(z[0])) is None
    assert NormalPrior(torch.zeros(6), torch.zeros(6)).analytic_kl_per_dim(PointMass(z[0])) is None


def test_a_prior_by_default_claims_no_closed_form_and_no_factorisation():
    class Bare(Prior):
        dim = 2

    q = Normal(torch.zeros(3, 2), torch.zeros(3, 2))
    assert Bare().analytic_kl_per_dim(q) is None
    assert Bare().log_prob_per_dim(torch.zeros(3, 2)) is None
    with pytest.raises(NotImplementedError):
        Bare().log_prob(torch.zeros(3, 2))


# ------------------------------------------------------------------------------- a mixture of Normals


def _mixture_oracle(mu, logvar):
    """torch's 1/K sum_k N(mu_k, diag exp(logvar_k)), in float64."""
    mu, logvar = mu.double(), logvar.double()
    cat = td.Categorical(logits=torch.zeros(mu.shape[0], dtype=torch.float64))
    return td.MixtureSameFamily(cat, td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1))


def _mixture_params(k=7, d=5, scale=3.0, lv=(-14.0, 8.0), seed=60):
    g = _gen(seed)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * scale
    return mu, torch.empty(k, d, dtype=torch.float64).uniform_(*lv, generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e3], ids=["unit", "huge-means"])
def test_mixture_normal_log_prob_matches_torch(dtype, scale):
    """Against MixtureSameFamily of Independent Normals (float64), at draws of the mixture itself (near one
    component: where the expansion into matrix products cancels most), of a wider Gaussian, and far away;
    logvar over the whole clamped range [-14, 8], means up to 1e3."""
    mu, logvar = _mixture_params(scale=scale)
    oracle = _mixture_oracle(mu, logvar)
    g = _gen(61)
    z = torch.cat(
        [oracle.sample((40,)), mu.mean(0) + 10 * scale * torch.randn(20, 5, generator=g, dtype=torch.float64)]
    ).view(4, 15, 5)  # (k, B, D): any leading shape
    ours = MixtureNormal(mu.to(dtype), logvar.to(dtype)).log_prob(z.to(dtype))
    assert ours.shape == (4, 15) and ours.dtype == dtype
    ref = _mixture_oracle(mu.to(dtype), logvar.to(dtype)).log_prob(z.to(dtype).double())  # the same inputs
    # float64 expansion error ~1e-16 (|z - c|^2 + |mu_k - c|^2) / sigma^2: 1e-3 nats for codes 3e3 from the
    # centre at sigma 9e-4 (the docstring's bound), far below the float32 output's own rounding otherwise
    atol = 1e-3 if dtype == torch.float32 or scale > 1 else 1e-8
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=atol)


def test_mixture_normal_of_identical_components_is_that_normal_and_chunks_agree(monkeypatch):
    """K copies of one Normal is that Normal (log K cancels); the (N, K) table computed a few rows at a time
    gives the same numbers as in one piece."""
    mu, logvar = _mixture_params(k=1, d=4, lv=(-3.0, 2.0))
    z = torch.randn(50, 4, generator=_gen(62), dtype=torch.float64) * 2
    mix = MixtureNormal(mu.expand(9, 4), logvar.expand(9, 4))
    torch.testing.assert_close(mix.log_prob(z), Normal(mu[0], logvar[0]).log_prob(z), rtol=1e-12, atol=1e-10)
    mix = MixtureNormal(*_mixture_params(k=9, d=4))
    whole = mix.log_prob(z)
    monkeypatch.setattr(MixtureNormal, "CHUNK", 9 * 7)  # 7 rows at a time
    monkeypatch.setattr(MixtureNormal, "CACHE_CHUNK", 9 * 7)
    torch.testing.assert_close(mix.log_prob(z), whole, rtol=1e-13, atol=1e-12)
    assert mix.log_prob(z[:0]).shape == (0,)


def test_mixture_normal_gradients_match_torch():
    """d log p(z) / d(z, mu, logvar) against torch's mixture (autograd through both)."""
    mu, logvar = _mixture_params(k=4, d=3, lv=(-2.0, 1.0))
    z = torch.randn(6, 3, generator=_gen(63), dtype=torch.float64)
    grads = []
    for f in (lambda m, lv, z: MixtureNormal(m, lv).log_prob(z), lambda m, lv, z: _mixture_oracle(m, lv).log_prob(z)):
        args = [t.clone().requires_grad_() for t in (mu, logvar, z)]
        f(*args).sum().backward()
        grads.append([a.grad for a in args])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    value_and_grads = torch.func.grad_and_value(lambda m, lv, z: MixtureNormal(m, lv).log_prob(z).sum(), (0, 1, 2))
    for ours, ref in zip(value_and_grads(mu, logvar, z)[0], grads[1]):  # torch.func (the fused step) too
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)


def test_mixture_normal_without_autograd_matches_the_autograd_path_on_realistic_codes():
    """A VampPrior-like mixture (K=50 in D=20, sigma 0.1-1) at draws of itself: the evaluation path (no
    autograd) and the training path (autograd) agree with the float64 oracle to float32's rounding."""
    mu, logvar = _mixture_params(k=50, d=20, scale=1.0, lv=(-4.6, 0.0), seed=70)
    oracle = _mixture_oracle(mu, logvar)
    z = oracle.sample((400,)).float()
    ref = oracle.log_prob(z.double())
    mix = MixtureNormal(mu.float(), logvar.float())
    with torch.no_grad():
        fast = mix.log_prob(z)
    slow = MixtureNormal(mu.float().requires_grad_(), logvar.float()).log_prob(z)  # grad enabled: autograd path
    for v in (fast, slow.detach()):
        torch.testing.assert_close(v.double(), ref, rtol=2e-7, atol=1e-5)


def test_logsumexp_rows_is_torchs_with_no_subnormal_terms():
    """Against torch.logsumexp: rows spanning 1e4 nats (most terms e^-100 and less), one large term, all
    -inf, an inf, a NaN; float32 and float64."""
    t = torch.randn(6, 300, generator=_gen(71), dtype=torch.float64) * 3e3
    t[1, 7] = 5e3
    t[2], t[3, 4], t[4, 9] = -math.inf, math.inf, math.nan
    for dtype in (torch.float32, torch.float64):
        ref = torch.logsumexp(t.to(dtype), -1)
        torch.testing.assert_close(logsumexp_rows(t.to(dtype)), ref, rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_mixture_normal_samples_have_the_mixtures_moments(t):
    """Mean and covariance of 200k draws against the mixture's, mean_k mu_k and mean_k (t^2 diag s_k^2 +
    mu_k mu_k^T) - m m^T, within 4.5 standard errors (each entry's own, from the draws)."""
    mu, logvar = _mixture_params(k=4, d=3, scale=2.0, lv=(-1.5, 0.5))
    n = 200_000
    z = MixtureNormal(mu, logvar).sample(n, _gen(64), temperature=t)
    m = mu.mean(0)
    cov = torch.diag((t**2 * logvar.exp()).mean(0)) + mu.T @ mu / len(mu) - torch.outer(m, m)
    assert ((z.mean(0) - m).abs() < 4.5 * z.std(0) / math.sqrt(n)).all()
    c = z - m  # centred on the true mean: E[c_i c_j] is the covariance
    prods = c[:, :, None] * c[:, None, :]  # (n, D, D)
    assert ((prods.mean(0) - cov).abs() < 4.5 * prods.std(0) / math.sqrt(n)).all(), (prods.mean(0), cov)


def test_mixture_normal_at_temperature_zero_draws_the_means_uniformly_and_follows_the_generator():
    mu, logvar = _mixture_params(k=5, d=3)
    mix = MixtureNormal(mu, logvar)
    z = mix.sample(5000, _gen(65), temperature=0.0)
    hits = (z[:, None, :] == mu[None]).all(-1)  # (n, K)
    assert (hits.sum(1) == 1).all()
    counts = hits.sum(0).double()
    assert ((counts - 1000).abs() < 4.5 * math.sqrt(5000 * 0.2 * 0.8)).all(), counts
    torch.testing.assert_close(mix.sample(7, _gen(66)), mix.sample(7, _gen(66)), rtol=0, atol=0)
    assert mix.analytic_kl_per_dim(Normal(mu, logvar)) is None and mix.log_prob_per_dim(mu) is None


# ---------------------------------------------------------------------------------------- Bernoulli


@pytest.mark.parametrize("event_ndim", [1, 3])
def test_bernoulli_log_prob_matches_torch_including_extreme_logits(event_ndim):
    g = _gen(8)
    shape = (5, 11) if event_ndim == 1 else (5, 1, 11, 3)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 10
    flat = logits.view(5, -1)
    flat[:, :11] = EXTREME_LOGITS.double()  # +-1e3, +-50, ... in every row
    x = torch.bernoulli(torch.full(shape, 0.5, dtype=torch.float64), generator=g)
    ref = td.Independent(td.Bernoulli(logits=logits), event_ndim).log_prob(x)
    ours = Bernoulli(logits, event_ndim).log_prob(x)
    assert ours.shape == (5,) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-9)


def test_bernoulli_extreme_logits_float32_are_exact_where_they_should_be():
    logits = EXTREME_LOGITS.view(1, -1)
    ours_1 = Bernoulli(logits, 1).log_prob(torch.ones_like(logits))
    ref_1 = td.Bernoulli(logits=logits.double()).log_prob(torch.ones_like(logits.double())).sum(-1)
    torch.testing.assert_close(ours_1.double(), ref_1, rtol=1e-6, atol=1e-3)
    # the right answer for a confident correct pixel is ~0, and for a confident wrong one ~ -|logit|
    one = Bernoulli(torch.tensor([[1e3]]), 1)
    assert one.log_prob(torch.ones(1, 1)).item() == 0.0
    assert one.log_prob(torch.zeros(1, 1)).item() == pytest.approx(-1e3)


def test_bernoulli_broadcasts_x_against_k_samples_of_logits():
    logits = torch.randn(3, 2, 4, generator=_gen(9))  # (k, B, D)
    x = torch.bernoulli(torch.full((2, 4), 0.5), generator=_gen(10))  # (B, D)
    ours = Bernoulli(logits, 1).log_prob(x)
    ref = td.Independent(td.Bernoulli(logits=logits), 1).log_prob(x.expand(3, 2, 4))
    torch.testing.assert_close(ours, ref)


def test_bernoulli_mean_and_sample():
    logits = torch.tensor([[-3.0, 0.0, 2.0]])
    b = Bernoulli(logits, 1)
    torch.testing.assert_close(b.mean, torch.sigmoid(logits))
    s = torch.stack([b.sample(_gen(i)) for i in range(1)])
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    many = Bernoulli(logits.expand(100_000, 3), 1).sample(_gen(11))
    torch.testing.assert_close(many.mean(0), torch.sigmoid(logits[0]), atol=0.01, rtol=0)


# ----------------------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("log_sigma_kind", ["global", "pixel"])
def test_gaussian_log_prob_matches_torch_including_tiny_sigmas(log_sigma_kind):
    g = _gen(12)
    mean = torch.rand(4, 1, 6, 5, generator=g, dtype=torch.float64)
    if log_sigma_kind == "global":
        sigmas = [1e-6, 1e-3, 0.1, 1.0, 30.0]
        cases = [torch.tensor(math.log(s), dtype=torch.float64) for s in sigmas]
    else:
        cases = [torch.empty(1, 6, 5, dtype=torch.float64).uniform_(math.log(1e-6), math.log(10.0), generator=g)]
    for log_sigma in cases:
        sigma = torch.exp(log_sigma)
        x = (mean + sigma * torch.randn(mean.shape, generator=g, dtype=torch.float64)).clamp(-1, 2)
        ref = td.Independent(td.Normal(mean, sigma.expand_as(mean)), 3).log_prob(x)
        ours = Gaussian(mean, log_sigma, 3).log_prob(x)
        assert ours.shape == (4,)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-6)


def test_gaussian_tiny_sigma_float32_is_finite_and_right():
    mean = torch.full((2, 10), 0.5)
    log_sigma = torch.tensor(math.log(1e-4))
    x = mean + 1e-4  # one sigma away in every pixel: log p = 10 * (-0.5 log 2pi - log sigma - 0.5)
    expected = 10 * (-0.5 * math.log(2 * math.pi) - math.log(1e-4) - 0.5)
    torch.testing.assert_close(
        Gaussian(mean, log_sigma, 1).log_prob(x), torch.full((2,), expected), rtol=1e-3, atol=1e-3
    )


def test_gaussian_mean_stddev_sample():
    mean = torch.rand(100_000, 3, generator=_gen(13))
    gauss = Gaussian(mean, torch.log(torch.tensor([0.1, 0.5, 2.0])), 1)
    assert gauss.stddev.shape == mean.shape
    s = gauss.sample(_gen(14))
    torch.testing.assert_close((s - mean).std(0), torch.tensor([0.1, 0.5, 2.0]), rtol=0.02, atol=0)
    torch.testing.assert_close((s - mean).mean(0), torch.zeros(3), atol=0.02, rtol=0)


# ------------------------------------------------------------------------------- continuous Bernoulli


def _cb_log_norm_quadrature(a: float) -> float:
    """log C(l) by numerical integration (independent of any closed form):
    C = 1 / int_0^1 exp(x log l + (1 - x) log(1 - l)) dx, l = sigmoid(a), via logsumexp + Simpson."""
    x = np.linspace(0.0, 1.0, 400_001)
    log_l, log_1ml = -np.logaddexp(0, -a), -np.logaddexp(0, a)
    f = x * log_l + (1 - x) * log_1ml  # log of the integrand
    w = np.ones_like(x)
    w[1:-1:2], w[2:-1:2] = 4, 2  # Simpson weights
    h = x[1] - x[0]
    m = f.max()
    log_integral = m + np.log(np.sum(w * np.exp(f - m)) * h / 3)
    return -log_integral


def _cb_mean_quadrature(a: float) -> float:
    x = np.linspace(0.0, 1.0, 400_001)
    f = x * a  # the density is proportional to exp(a x)
    p = np.exp(f - f.max())
    return float(np.trapezoid(x * p, x) / np.trapezoid(p, x))


CB_LOGITS = [
    -1e3,
    -200.0,
    -50.0,
    -10.0,
    -2.0,
    -0.5,
    -0.05,
    -0.04,
    -0.039,
    -0.01,
    -1e-4,
    0.0,
    1e-7,
    1e-3,
    0.02,
    0.0399,
    0.0401,
    0.1,
    1.0,
    7.0,
    50.0,
    1e3,
]


def test_continuous_bernoulli_log_norm_against_quadrature_everywhere():
    """Including |logits| up to 1e3 (where torch's own implementation clamps and is off by nats)."""
    a = torch.tensor(CB_LOGITS, dtype=torch.float64)
    ours = ContinuousBernoulli(a, 0)._log_norm()
    ref = torch.tensor([_cb_log_norm_quadrature(v) for v in CB_LOGITS], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-8)
    ours32 = ContinuousBernoulli(a.float(), 0)._log_norm()
    torch.testing.assert_close(ours32.double(), ref, rtol=1e-6, atol=1e-6)


def test_continuous_bernoulli_taylor_branch_is_continuous_at_its_edge():
    """The Taylor branch and the closed form agree where they meet (|logit| = 4 * band), in float64 and float32."""
    edge = 4 * ContinuousBernoulli._TAYLOR_BAND
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        a = torch.tensor([edge * (1 - 1e-6), edge * (1 + 1e-6), -edge * (1 - 1e-6), -edge * (1 + 1e-6)], dtype=dtype)
        v = ContinuousBernoulli(a, 0)._log_norm()
        assert abs(v[0] - v[1]) < tol + 1e-7 and abs(v[2] - v[3]) < tol + 1e-7
    grid = torch.linspace(-3, 3, 20_001, dtype=torch.float64)
    err = (ContinuousBernoulli(grid.float(), 0)._log_norm().double() - ContinuousBernoulli(grid, 0)._log_norm()).abs()
    assert err.max() < 1e-6, (err.max(), grid[err.argmax()])
    # near 0: log C(l) = log 2 + a^2/12 + O(a^4)
    a = torch.tensor([0.0, 1e-8, -1e-4, 1e-3], dtype=torch.float64)
    torch.testing.assert_close(ContinuousBernoulli(a, 0)._log_norm(), math.log(2) + a**2 / 12, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_log_prob_matches_torch(dtype):
    """torch.distributions.ContinuousBernoulli as the oracle where it is accurate (|logits| <= 15 in float64,
    its Taylor band included); random logits, random x in [0, 1] and the end points."""
    g = _gen(15)
    logits = torch.randn(6, 2, 7, 7, generator=g, dtype=torch.float64) * 4
    flat = logits.view(6, -1)
    flat[:, :12] = torch.tensor([-15.0, -0.05, -0.04, -0.039, -0.004, -1e-5, 0.0, 1e-5, 0.003, 0.039, 0.041, 15.0])
    x = torch.rand(logits.shape, generator=g, dtype=torch.float64)
    x.view(6, -1)[:, 12:14] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ref = td.Independent(td.ContinuousBernoulli(logits=logits), 3).log_prob(x)
    ours = ContinuousBernoulli(logits.to(dtype), 3).log_prob(x.to(dtype))
    assert ours.shape == (6,)
    tol = dict(rtol=1e-5, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(ours.double(), ref, **tol)


def test_continuous_bernoulli_extreme_logits_log_prob_normalises():
    """At logits +-1e3 the density is still normalised: log p(x) = a x + log C - log(1 + e^a) with the exact C."""
    a = torch.tensor([[-1e3, 1e3, -50.0, 50.0]], dtype=torch.float64)
    x = torch.tensor([[0.001, 0.999, 0.3, 0.7]], dtype=torch.float64)
    ref = torch.tensor([[_cb_log_norm_quadrature(v) for v in a[0].tolist()]], dtype=torch.float64)
    log_l, log_1ml = torch.nn.functional.logsigmoid(a), torch.nn.functional.logsigmoid(-a)
    expected = x * log_l + (1 - x) * log_1ml + ref
    ours = torch.stack([ContinuousBernoulli(a[:, i : i + 1], 1).log_prob(x[:, i : i + 1]) for i in range(4)], 1)
    torch.testing.assert_close(ours, expected, rtol=1e-7, atol=1e-6)
    assert torch.isfinite(ContinuousBernoulli(a.float(), 1).log_prob(x.float())).all()


def test_continuous_bernoulli_mean_against_torch_and_quadrature():
    a = torch.tensor(CB_LOGITS, dtype=torch.float64)
    ours = ContinuousBernoulli(a, 0).mean
    quad = torch.tensor([_cb_mean_quadrature(v) for v in CB_LOGITS], dtype=torch.float64)
    torch.testing.assert_close(ours, quad, rtol=0, atol=1e-6)
    moderate = a.abs() <= 15
    ref = td.ContinuousBernoulli(logits=a[moderate]).mean
    torch.testing.assert_close(ours[moderate], ref, rtol=0, atol=1e-7)
    ours32 = ContinuousBernoulli(a.float(), 0).mean
    torch.testing.assert_close(ours32.double(), quad, rtol=0, atol=2e-6)
    assert ((ours32 >= 0) & (ours32 <= 1)).all()
    # float32 on a dense grid around 0.5, where the closed form cancels two ~1/|a| terms
    grid = torch.linspace(-3, 3, 20_001, dtype=torch.float64)
    err = (ContinuousBernoulli(grid.float(), 0).mean.double() - ContinuousBernoulli(grid, 0).mean).abs()
    assert err.max() < 2e-6, (err.max(), grid[err.argmax()])


def _cb_cdf(x: np.ndarray, a: float) -> np.ndarray:
    """F(x) = (e^{a x} - 1) / (e^a - 1), written to be stable for either sign of a."""
    if a == 0:
        return x
    if a < 0:
        return np.expm1(a * x) / np.expm1(a)
    return np.exp(a * (x - 1)) * (-np.expm1(-a * x)) / (-np.expm1(-a))


@pytest.mark.parametrize("a", [-1e3, -30.0, -3.0, -0.3, -0.02, 0.0, 0.01, 0.5, 4.0, 30.0, 1e3])
def test_continuous_bernoulli_sample_ks_and_moments(a):
    from scipy import stats

    n = 20_000
    logits = torch.full((n,), a, dtype=torch.float64)
    s = ContinuousBernoulli(logits, 0).sample(_gen(16)).numpy()
    assert ((s >= 0) & (s <= 1)).all()
    ks = stats.kstest(s, lambda v: _cb_cdf(np.asarray(v), a))
    assert ks.pvalue > 1e-4, ks
    ref_mean = _cb_mean_quadrature(a)
    assert abs(s.mean() - ref_mean) < 5 * s.std() / math.sqrt(n) + 1e-9
    if abs(a) <= 15:  # moments against torch's own sampler
        t = td.ContinuousBernoulli(logits=torch.tensor(a, dtype=torch.float64)).sample((n,)).numpy()
        assert abs(s.var() - t.var()) < 0.1 * t.var() + 1e-6


@pytest.mark.parametrize("a", [-0.03, -1e-3, 1e-6, 0.03])
def test_continuous_bernoulli_sample_is_not_uniform_near_half(a):
    """Near l = 0.5 the density is e^{a x} C(a), not uniform: the sample mean is 0.5 + a/12 - a^3/720.
    With 2M draws the standard error is 2e-4, so a = +-0.03 (a shift of 0.0025) is resolved."""
    n = 2_000_000
    s = ContinuousBernoulli(torch.full((n,), a, dtype=torch.float64), 0).sample(_gen(18))
    se = s.std().item() / math.sqrt(n)
    assert abs(s.mean().item() - (0.5 + a / 12 - a**3 / 720)) < 4 * se


def test_continuous_bernoulli_sample_float32_is_in_range_and_not_nan():
    logits = EXTREME_LOGITS.repeat(1000)
    s = ContinuousBernoulli(logits, 0).sample(_gen(17))
    assert torch.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
    assert (s[logits == 1e3] > 0.99).all() and (s[logits == -1e3] < 0.01).all()


def test_continuous_bernoulli_is_not_bce():
    """The normaliser is what makes it a density: it differs from -BCE by log C > 0 per pixel."""
    logits = torch.tensor([[0.0, 2.0]])
    x = torch.tensor([[0.5, 0.5]])
    cb = ContinuousBernoulli(logits, 1).log_prob(x)
    bern = Bernoulli(logits, 1).log_prob(x)
    assert (cb - bern).item() == pytest.approx(math.log(2) + math.log(2.0 / math.tanh(1.0)), rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_bernoulli_log_prob_broadcast_over_samples_matches_torch(scale):
    """x (B, ...) shared by k importance samples of logits (k, B, ...), as in the IS estimator: equals the oracle."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 3, 1, 4, 4, generator=g, dtype=torch.float64) * scale
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64), generator=g)
    ours = Bernoulli(logits, event_ndim=3).log_prob(x)
    oracle = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1))
    assert ours.shape == (5, 3)
    torch.testing.assert_close(ours, oracle, rtol=1e-9, atol=1e-9)
