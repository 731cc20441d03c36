"""objectives against known answers: IWAE(k=1) = ELBO, the IWAE bound on a linear-Gaussian VAE whose log p(x)
is exact, gradients through the reparameterized sample, non-standard priors (analytic or Monte Carlo KL),
free bits, warm-up, AE loss. Its toy VAEs serve test_evaluate and test_models too."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as td

from vaekit.config import ModelConfig
from vaekit.distributions import Normal, NormalPrior, Prior
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.objectives import (
    ae_loss,
    elbo,
    free_bits_kl,
    iwae_bound,
    kl_divergence,
    kl_weight,
    log_weights,
    training_loss,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp_vae(likelihood="bernoulli", shape=(1, 6, 5), latent=4, hidden=(16,), model="vae", seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(model=model, input_shape=shape, latent_dim=latent, hidden=hidden, likelihood=likelihood, **kw)
    ).double()


def _binary(shape, seed=1):
    return torch.bernoulli(torch.full(shape, 0.4, dtype=torch.float64), generator=_gen(seed))


# ------------------------------------------------------------------ a VAE whose log p(x) is known exactly

D_X, D_Z, SIGMA = 6, 3, 0.5


def _linear_gaussian(exact_posterior: bool, seed: int = 0):
    """The library's own VAE with no hidden layers and a Gaussian likelihood: decoder x = W z + b, so
    p(x) = N(b, W W^T + sigma^2 I). W has orthogonal columns, so the true posterior is a diagonal Gaussian
    N(S W^T (x - b) / sigma^2, S), S = (I + W^T W / sigma^2)^-1, which a linear encoder represents exactly."""
    model = _mlp_vae("gaussian", shape=(D_X,), latent=D_Z, hidden=(), sigma=SIGMA, seed=seed)
    g = _gen(seed + 100)
    q_mat, _ = torch.linalg.qr(torch.randn(D_X, D_X, generator=g, dtype=torch.float64))
    w = q_mat[:, :D_Z] * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)  # (D_X, D_Z)
    b = torch.randn(D_X, generator=g, dtype=torch.float64) * 0.3
    sigma = model.likelihood.log_sigma().exp().item()  # what the likelihood really uses
    assert sigma == pytest.approx(SIGMA, rel=1e-6)
    dec = model.decoder.net[0]
    enc = model.encoder.net[0]
    assert isinstance(dec, torch.nn.Linear) and len(model.decoder.net) == 1 and len(model.encoder.net) == 1
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        if exact_posterior:
            s = 1.0 / (1.0 + (w * w).sum(0) / sigma**2)  # (D_Z,) diagonal of S
            a = s[:, None] * w.T / sigma**2  # (D_Z, D_X)
            enc.weight.copy_(torch.cat([a, torch.zeros(D_Z, D_X, dtype=torch.float64)]))
            enc.bias.copy_(torch.cat([-a @ b, torch.log(s)]))
        else:  # a poor but sane encoder: right direction, wrong scale, too-wide posterior
            s = 1.0 / (1.0 + (w * w).sum(0) / sigma**2)
            a = 0.8 * s[:, None] * w.T / sigma**2
            enc.weight.copy_(torch.cat([a, torch.zeros(D_Z, D_X, dtype=torch.float64)]))
            enc.bias.copy_(torch.cat([-a @ b + 0.1, torch.log(s) + 0.7]))
    p_x = td.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(D_X, dtype=torch.float64))
    return model.eval(), p_x


def _lg_data(p_x, n=8, seed=3):
    torch.manual_seed(seed)
    return p_x.sample((n,))


def test_iwae_bound_non_decreasing_in_k_and_below_log_px():
    model, p_x = _linear_gaussian(exact_posterior=False)
    x = _lg_data(p_x, n=4)
    exact = p_x.log_prob(x).mean().item()
    reps = 400
    x_rep = x.repeat(reps, 1)
    torch.manual_seed(0)
    means, ses = [], []
    for k in (1, 2, 5, 20, 100):
        b = iwae_bound(model, x_rep, k).view(reps, -1).mean(1)  # (reps,) mean over the 4 points
        means.append(b.mean().item())
        ses.append(b.std().item() / math.sqrt(reps))
    for (m0, s0), (m1, s1) in zip(zip(means, ses), zip(means[1:], ses[1:])):
        assert m1 >= m0 - 3 * math.hypot(s0, s1), means
    assert means[-1] - means[0] > 0.2  # it does tighten
    assert all(m <= exact + 3 * s for m, s in zip(means, ses)), (means, exact)
    assert exact - means[-1] < 0.05


def test_iwae_k1_equals_elbo_exactly_with_the_same_eps():
    model = _mlp_vae()
    x = _binary((5, 1, 6, 5))
    eps = torch.randn(5, 4, generator=_gen(2), dtype=torch.float64)
    t = elbo(model, x, eps=eps, analytic_kl=False)
    bound = iwae_bound(model, x, 1, eps=eps[None])
    torch.testing.assert_close(t.elbo, bound, rtol=1e-12, atol=1e-10)
    # the Monte Carlo KL at that z is log q(z|x) - log p(z)
    q = model.encode(x)
    z = q.rsample(eps=eps)
    torch.testing.assert_close(t.kl, q.log_prob(z) - model.prior.log_prob(z))
    assert log_weights(model, x, 3, eps=eps.expand(3, 5, 4)).shape == (3, 5)


def test_analytic_elbo_equals_iwae_k1_in_expectation():
    model = _mlp_vae(seed=4)
    with torch.no_grad():  # a wider posterior so the MC KL is noisy and the check means something
        model.encoder.net[-1].bias[4:] += 1.0
    x = _binary((3, 1, 6, 5), seed=5)
    reps = 4000
    x_rep = x.repeat(reps, 1, 1, 1)
    torch.manual_seed(1)
    analytic = elbo(model, x_rep).elbo.view(reps, 3)
    mc = iwae_bound(model, x_rep, 1).view(reps, 3)
    se = torch.sqrt(analytic.var(0) / reps + mc.var(0) / reps)
    assert ((analytic.mean(0) - mc.mean(0)).abs() < 4 * se).all(), (analytic.mean(0), mc.mean(0), se)
    assert (mc.var(0) > analytic.var(0)).all()  # same mean, but the analytic KL has less variance


# ----------------------------------------------------------------------------------------------- gradients


def _encoder_grad_norm(model) -> float:
    grads = [p.grad for p in model.encoder.parameters()]
    return math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None))


def test_reconstruction_gradient_reaches_encoder_only_through_rsample():
    model = _mlp_vae(seed=6)
    x = _binary((8, 1, 6, 5), seed=7)
    eps = torch.randn(8, 4, generator=_gen(8), dtype=torch.float64)

    q = model.encode(x)
    (-model.decode(q.rsample(eps=eps)).log_prob(x).sum()).backward()
    through_rsample = _encoder_grad_norm(model)
    model.zero_grad(set_to_none=True)

    q = model.encode(x)
    (-model.decode(q.rsample(eps=eps).detach()).log_prob(x).sum()).backward()
    detached = _encoder_grad_norm(model)
    dec_grad = sum(float((p.grad**2).sum()) for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)

    q = model.encode(x)
    (-model.decode(q.sample()).log_prob(x).sum()).backward()
    sampled = _encoder_grad_norm(model)
    model.zero_grad(set_to_none=True)

    assert through_rsample > 1e-3
    assert detached == 0.0 and sampled == 0.0
    assert dec_grad > 0  # the decoder still learns; only the path to the encoder is cut


def test_elbo_gradient_includes_the_reparameterized_path():
    """The full ELBO's encoder gradient = KL gradient + reconstruction gradient through z; cutting z
    leaves only the KL's part, which is measurably different."""
    model = _mlp_vae(seed=8)
    x = _binary((8, 1, 6, 5), seed=9)
    eps = torch.randn(8, 4, generator=_gen(10), dtype=torch.float64)
    (-elbo(model, x, eps=eps).elbo.sum()).backward()
    full = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad(set_to_none=True)
    q = model.encode(x)
    (-(model.decode(q.rsample(eps=eps).detach()).log_prob(x) - q.kl_std_normal()).sum()).backward()
    kl_only = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad(set_to_none=True)
    diff = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(full, kl_only)))
    norm = math.sqrt(sum(float((a**2).sum()) for a in full))
    assert diff > 0.05 * norm > 0
    # and the IWAE bound too sends gradient to the encoder
    (-iwae_bound(model, x, 5).sum()).backward()
    assert _encoder_grad_norm(model) > 1e-3


def test_gradient_matches_finite_differences_through_the_sample():
    """d ELBO / d(encoder bias) with eps fixed, against central differences (float64)."""
    _check_elbo_gradient(_mlp_vae(seed=11), seed=12, units=(0, 5))  # one mu unit, one logvar unit


def _check_elbo_gradient(model, seed: int, units: tuple[int, ...]) -> None:
    """d ELBO / d(encoder bias) with eps fixed, by autograd and by central differences (float64)."""
    x = _binary((4, 1, 6, 5), seed=seed)
    eps = torch.randn(4, 4, generator=_gen(seed + 1), dtype=torch.float64)
    bias = model.encoder.net[-1].bias
    (elbo(model, x, eps=eps).elbo.sum()).backward()
    grad = bias.grad.clone()
    h = 1e-6
    for j in units:
        with torch.no_grad():
            bias[j] += h
            up = elbo(model, x, eps=eps).elbo.sum().item()
            bias[j] -= 2 * h
            down = elbo(model, x, eps=eps).elbo.sum().item()
            bias[j] += h
        assert grad[j].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-7)


# ------------------------------------------------------------------------- non-standard priors

P_MU = torch.tensor([1.5, -2.0, 0.5, 0.8], dtype=torch.float64)
P_LOGVAR = torch.tensor([0.8, -1.2, 1.5, -0.4], dtype=torch.float64)


class _WithheldKL(NormalPrior):
    """The same N(m, diag s^2) prior with its closed-form KL withheld: the objective must fall back to Monte
    Carlo (per dimension too, since it still factorises), and the oracle still knows the exact KL."""

    def analytic_kl_per_dim(self, q):
        return None


class _Mixture(Prior):
    """A mixture of K diagonal Gaussians: no closed-form KL against q, no factorisation over dimensions."""

    def __init__(self, logits, mu, logvar):  # (K,), (K, D), (K, D)
        self.log_w, self.comp, self.dim = torch.log_softmax(logits, 0), Normal(mu, logvar), mu.shape[-1]

    def log_prob(self, z):  # (..., D) -> (...)
        return torch.logsumexp(self.log_w + self.comp.log_prob(z[..., None, :]), -1)

    def sample(self, n, generator=None, device=None):
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.comp.mu.dtype)
        return self.comp.mu[k] + self.comp.stddev[k] * eps

    def oracle(self):
        """The same mixture as torch.distributions, the independent implementation the tests check against."""
        comp = td.Independent(td.Normal(self.comp.mu, self.comp.stddev), 1)
        return td.MixtureSameFamily(td.Categorical(logits=self.log_w), comp)


def _mixture():
    logits = torch.tensor([0.0, 0.7, -0.5], dtype=torch.float64)
    mu = torch.tensor([[2.0, 0.0, -1.0, 1.0], [-2.0, 1.0, 0.5, -1.0], [0.0, -2.0, 2.0, 0.0]], dtype=torch.float64)
    return _Mixture(logits, mu, torch.full((3, 4), -0.7, dtype=torch.float64))


def _vae_with(prior, seed=30):
    model = _mlp_vae(seed=seed)
    model.prior = prior
    return model


def test_elbo_uses_the_analytic_kl_of_a_non_standard_prior():
    """N(m, diag s^2), m != 0, s != 1: the ELBO's KL is that prior's, checked against torch's kl_divergence."""
    prior = NormalPrior(P_MU, P_LOGVAR)
    model = _vae_with(prior)
    x = _binary((6, 1, 6, 5), seed=31)
    eps = torch.randn(6, 4, generator=_gen(32), dtype=torch.float64)
    t = elbo(model, x, eps=eps)
    q = model.encode(x)
    ref_q = td.Normal(q.mu, q.stddev)
    ref_p = td.Normal(P_MU, torch.exp(0.5 * P_LOGVAR))
    torch.testing.assert_close(t.kl_per_dim, td.kl_divergence(ref_q, ref_p), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(t.kl, td.kl_divergence(td.Independent(ref_q, 1), td.Independent(ref_p, 1)))
    torch.testing.assert_close(t.elbo, model.decode(q.rsample(eps=eps)).log_prob(x) - t.kl, rtol=1e-12, atol=1e-10)
    assert (t.kl - q.kl_std_normal()).abs().min() > 0.5  # not the standard normal's KL
    # the Monte Carlo KL at the same z makes it the IWAE bound with k=1, for this prior too
    t_mc = elbo(model, x, eps=eps, analytic_kl=False)
    torch.testing.assert_close(t_mc.elbo, iwae_bound(model, x, 1, eps=eps[None]), rtol=1e-12, atol=1e-10)
    # the IWAE training branch reports this prior's KL, not the standard normal's
    _, terms = training_loss(model, x, iw_k=5)
    torch.testing.assert_close(terms.kl, t.kl, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("prior", [_WithheldKL(P_MU, P_LOGVAR), _mixture()], ids=["withheld", "mixture"])
def test_a_prior_without_analytic_kl_gets_the_monte_carlo_kl(prior):
    """No closed form: the ELBO's KL is log q(z|x) - log p(z) at its own z, so elbo = iwae_bound(k=1) for the
    same eps; per dimension it exists exactly when the prior factorises."""
    model = _vae_with(prior)
    x = _binary((5, 1, 6, 5), seed=33)
    eps = torch.randn(5, 4, generator=_gen(34), dtype=torch.float64)
    t = elbo(model, x, eps=eps)
    torch.testing.assert_close(t.elbo, iwae_bound(model, x, 1, eps=eps[None]), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(elbo(model, x, eps=eps, analytic_kl=False).elbo, t.elbo, rtol=0, atol=0)
    q = model.encode(x)
    z = q.rsample(eps=eps)
    ref_q = td.Independent(td.Normal(q.mu, q.stddev), 1)
    ref_p = prior.oracle() if isinstance(prior, _Mixture) else td.Independent(td.Normal(P_MU, P_LOGVAR.exp().sqrt()), 1)
    torch.testing.assert_close(t.kl, ref_q.log_prob(z) - ref_p.log_prob(z), rtol=1e-12, atol=1e-10)
    if isinstance(prior, _Mixture):
        assert t.kl_per_dim is None
    else:
        torch.testing.assert_close(t.kl_per_dim.sum(-1), t.kl, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(
            t.kl_per_dim, td.Normal(q.mu, q.stddev).log_prob(z) - td.Normal(P_MU, P_LOGVAR.exp().sqrt()).log_prob(z)
        )


@pytest.mark.parametrize("prior", [_WithheldKL(P_MU, P_LOGVAR), _mixture()], ids=["withheld", "mixture"])
def test_monte_carlo_elbo_is_unbiased_against_an_oracle(prior):
    """E_eps[elbo] = E_q[log p(x|z)] - KL(q || p): the ELBO averaged over 4000 draws per example against an
    oracle from torch.distributions (the exact KL for the Normal prior, a 50k-draw Monte Carlo KL for the
    mixture) and 10k independent draws of the reconstruction term; within 4 standard errors."""
    model = _vae_with(prior, seed=35)
    x = _binary((3, 1, 6, 5), seed=36)
    reps = 4000
    torch.manual_seed(37)
    with torch.no_grad():
        ours = elbo(model, x.repeat(reps, 1, 1, 1)).elbo.view(reps, 3)
        q = model.encode(x)
        ref_q = td.Independent(td.Normal(q.mu, q.stddev), 1)
        z = ref_q.sample((10_000,))  # (n, B, D)
        recon = model.decode(z).log_prob(x)  # (n, B)
        if isinstance(prior, _Mixture):
            zk = ref_q.sample((50_000,))
            log_ratio = ref_q.log_prob(zk) - prior.oracle().log_prob(zk)
            kl, kl_se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(zk))
        else:
            kl = td.kl_divergence(ref_q, td.Independent(td.Normal(P_MU, P_LOGVAR.exp().sqrt()), 1))
            kl_se = torch.zeros(3, dtype=torch.float64)
    oracle = recon.mean(0) - kl
    se = torch.sqrt(ours.var(0) / reps + recon.var(0) / len(recon) + kl_se**2)
    assert ((ours.mean(0) - oracle).abs() < 4 * se).all(), (ours.mean(0), oracle, se)
    # the check has teeth: with the standard normal's KL the answer is far off
    assert ((recon.mean(0) - q.kl_std_normal() - oracle).abs() > 20 * se).all()


def test_monte_carlo_kl_gradient_matches_finite_differences():
    """With a mixture prior the ELBO's gradient flows through z and log q(z|x): d ELBO / d(encoder bias) with
    eps fixed, against central differences (float64)."""
    _check_elbo_gradient(_vae_with(_mixture(), seed=38), seed=39, units=(1, 6))  # one mu unit, one logvar unit


def test_free_bits_with_priors_that_have_no_analytic_kl():
    """A factorising prior gets free bits on its per-dimension Monte Carlo KL; a mixture, which has no
    per-dimension KL, is refused with a VaekitError when free bits are asked for and trains without them."""
    x = _binary((6, 1, 6, 5), seed=41)
    model = _vae_with(_WithheldKL(P_MU, P_LOGVAR))
    torch.manual_seed(5)
    t = elbo(model, x)
    torch.manual_seed(5)
    loss, terms = training_loss(model, x, beta=0.5, free_bits=0.4)
    torch.testing.assert_close(loss, -(t.recon - 0.5 * free_bits_kl(t.kl_per_dim, 0.4)))
    torch.testing.assert_close(terms.elbo, t.elbo)

    model = _vae_with(_mixture())
    with pytest.raises(VaekitError, match="free bits"):
        training_loss(model, x, free_bits=0.4)
    torch.manual_seed(6)
    t = elbo(model, x)
    torch.manual_seed(6)
    loss, _ = training_loss(model, x, beta=0.5)
    torch.testing.assert_close(loss, -(t.recon - 0.5 * t.kl))
    _, terms = training_loss(model, x, iw_k=4)  # the IWAE branch reports a Monte Carlo KL for it
    assert terms.kl.shape == (6,) and torch.isfinite(terms.kl).all()


def test_kl_divergence_draws_its_own_sample_only_without_a_closed_form():
    q = Normal(torch.randn(5, 4, generator=_gen(42), dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    kl, kl_d = kl_divergence(NormalPrior(P_MU, P_LOGVAR), q)
    assert torch.equal(torch.get_rng_state(), state)  # analytic: no draw, the training RNG stream is untouched
    torch.testing.assert_close(kl, kl_d.sum(-1), rtol=0, atol=0)
    kl_mc, _ = kl_divergence(_WithheldKL(P_MU, P_LOGVAR), q)
    assert not torch.equal(torch.get_rng_state(), state)
    assert (kl_mc - kl).abs().max() > 1e-3  # one draw: an estimate, not the closed form


# ------------------------------------------------------------------------- warm-up, free bits, AE loss


def test_kl_weight_linear_warmup():
    assert kl_weight(2.0, 0.0, 0.0) == 2.0
    assert kl_weight(2.0, 0.0, 5.0) == 2.0
    assert kl_weight(2.0, 4.0, 0.0) == 0.0
    assert kl_weight(2.0, 4.0, 1.0) == pytest.approx(0.5)
    assert kl_weight(2.0, 4.0, 2.0) == pytest.approx(1.0)
    assert kl_weight(2.0, 4.0, 4.0) == pytest.approx(2.0)
    assert kl_weight(2.0, 4.0, 40.0) == pytest.approx(2.0)
    assert kl_weight(1.0, 0.5, 0.25) == pytest.approx(0.5)


def test_free_bits_kl_semantics():
    # dims: batch-mean KL 0.1 (below), 0.5 (below), 2.0 (above), 0.7 (above, but some examples below)
    kl = torch.tensor([[0.1, 0.4, 1.0, 0.2], [0.1, 0.6, 3.0, 1.2]], requires_grad=True)
    out = free_bits_kl(kl, 0.6)
    torch.testing.assert_close(out, torch.tensor([0.6 + 0.6 + 1.0 + 0.2, 0.6 + 0.6 + 3.0 + 1.2]))
    out.sum().backward()
    torch.testing.assert_close(kl.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]))
    # the batch objective equals sum_j max(lambda, mean_x KL_j) (Kingma et al. 2016, eq. 15)
    torch.testing.assert_close(out.mean(), torch.clamp(kl.detach().mean(0), min=0.6).sum())
    torch.testing.assert_close(free_bits_kl(kl.detach(), 0.0), kl.detach().sum(-1))


def test_training_loss_beta_free_bits_and_iwae():
    model = _mlp_vae(seed=14)
    x = _binary((6, 1, 6, 5), seed=15)
    torch.manual_seed(3)
    t = elbo(model, x)
    for beta, fb in ((1.0, 0.0), (0.25, 0.0), (4.0, 0.0), (1.0, 0.5)):
        torch.manual_seed(3)
        loss, terms = training_loss(model, x, beta=beta, free_bits=fb)
        expected = -(t.recon - beta * free_bits_kl(t.kl_per_dim, fb))
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(terms.elbo, t.elbo)  # reported terms are the plain ELBO
    torch.manual_seed(4)
    loss, terms = training_loss(model, x, iw_k=5)
    torch.manual_seed(4)
    torch.testing.assert_close(loss, -iwae_bound(model, x, 5))
    assert loss.shape == (6,)


def test_ae_loss_is_the_reconstruction_negative_log_likelihood():
    ae = _mlp_vae(model="ae", seed=16)
    x = _binary((5, 1, 6, 5), seed=17)
    logits = ae.decoder(ae.encoder(x))
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(ae_loss(ae, x), bce)
    loss, t = training_loss(ae, x)
    torch.testing.assert_close(loss, bce)
    assert torch.equal(t.kl, torch.zeros(5)) and torch.equal(t.elbo, t.recon)
    # deterministic: no sampling anywhere
    torch.testing.assert_close(ae_loss(ae, x), ae_loss(ae, x), rtol=0, atol=0)

    gae = _mlp_vae("gaussian", model="ae", seed=18, sigma=0.2)
    xg = torch.rand(5, 1, 6, 5, generator=_gen(19), dtype=torch.float64)
    m = gae.decoder(gae.encoder(xg))
    n = 30
    expected = 0.5 * ((xg - m) ** 2).sum((1, 2, 3)) / 0.2**2 + n * (math.log(0.2) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(ae_loss(gae, xg), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- conditional models, through given(y)

K_CLASSES = 3


def _linear_gaussian_conditional(exact_posterior: bool = True, seed: int = 0):
    """A conditional linear-Gaussian VAE: decoder x = W z + b_y (the one-hot label's columns of the decoder's
    only layer are the per-class offsets b_y), so p(x|y) = N(b_y, W W^T + sigma^2 I). The encoder's label
    columns subtract A b_y, which makes q(z|x, y) the exact posterior N(S W^T (x - b_y) / sigma^2, S) (or,
    with exact_posterior False, a poor one: wrong scale, shifted, too wide)."""
    model = _mlp_vae("gaussian", shape=(D_X,), latent=D_Z, hidden=(), sigma=SIGMA, seed=seed, num_classes=K_CLASSES)
    g = _gen(seed + 200)
    q_mat, _ = torch.linalg.qr(torch.randn(D_X, D_X, generator=g, dtype=torch.float64))
    w = q_mat[:, :D_Z] * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)  # (D_X, D_Z)
    offsets = torch.randn(D_X, K_CLASSES, generator=g, dtype=torch.float64) * 1.5  # column c: b_c
    sigma = model.likelihood.log_sigma().exp().item()
    s = 1.0 / (1.0 + (w * w).sum(0) / sigma**2)  # (D_Z,) the posterior variances
    a = (1.0 if exact_posterior else 0.8) * s[:, None] * w.T / sigma**2  # (D_Z, D_X)
    dec, enc = model.decoder.net[0], model.encoder.net[0]
    assert dec.weight.shape == (D_X, D_Z + K_CLASSES) and enc.weight.shape == (2 * D_Z, D_X + K_CLASSES)
    with torch.no_grad():
        dec.weight.copy_(torch.cat([w, offsets], 1))
        dec.bias.zero_()
        enc.weight.zero_()
        enc.weight[:D_Z, :D_X] = a
        enc.weight[:D_Z, D_X:] = -a @ offsets + (0.0 if exact_posterior else 0.1)
        enc.bias.copy_(
            torch.cat([torch.zeros(D_Z, dtype=torch.float64), torch.log(s) + (0 if exact_posterior else 0.7)])
        )
    cov = w @ w.T + sigma**2 * torch.eye(D_X, dtype=torch.float64)
    p_x_given = [td.MultivariateNormal(offsets[:, c], cov) for c in range(K_CLASSES)]
    return model.eval(), p_x_given


def _lg_conditional_data(p_x_given, n=9, seed=5):
    torch.manual_seed(seed)
    y = torch.arange(n) % len(p_x_given)
    x = torch.stack([p_x_given[int(c)].sample() for c in y])
    exact = torch.stack([p_x_given[int(c)].log_prob(xi) for xi, c in zip(x, y)])
    return x, y, exact


def test_conditional_elbo_terms_against_torch_distributions():
    model = _mlp_vae(seed=9, num_classes=4)
    x, y = _binary((6, 1, 6, 5)), torch.tensor([0, 3, 1, 2, 3, 0])
    eps = torch.randn(6, 4, generator=_gen(3), dtype=torch.float64)
    t = elbo(model.given(y), x, eps=eps)
    onehot = F.one_hot(y, 4).double()
    h = model.encoder.net(torch.cat([x.flatten(1), onehot], 1))
    mu, logvar = h.chunk(2, -1)
    q = td.Normal(mu, torch.exp(0.5 * logvar))
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decoder.net(torch.cat([z, onehot], 1))
    recon = td.Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(1)
    kl = td.kl_divergence(q, td.Normal(torch.zeros(4, dtype=torch.float64), 1.0)).sum(1)
    torch.testing.assert_close(t.recon, recon)
    torch.testing.assert_close(t.kl, kl)
    torch.testing.assert_close(t.elbo, recon - kl)
    # and model(x, y) trains on the view's ELBO
    torch.manual_seed(0)
    loss = model(x, y)[0]
    torch.manual_seed(0)
    torch.testing.assert_close(loss, -elbo(model.given(y), x).elbo)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "cbernoulli"])
def test_conditional_iwae_k1_equals_the_monte_carlo_elbo_with_the_same_eps(likelihood):
    model = _mlp_vae(likelihood, seed=11, num_classes=3)
    x, y = _binary((5, 1, 6, 5)), torch.tensor([2, 0, 1, 1, 2])
    v = model.given(y)
    eps = torch.randn(5, 4, generator=_gen(4), dtype=torch.float64)
    t = elbo(v, x, eps=eps, analytic_kl=False)
    torch.testing.assert_close(t.elbo, iwae_bound(v, x, 1, eps=eps[None]), rtol=1e-12, atol=1e-10)
    other = elbo(model.given(torch.tensor([0, 1, 2, 0, 1])), x, eps=eps, analytic_kl=False)
    assert (other.elbo - t.elbo).abs().max() > 1e-6  # the labels matter


def test_conditional_linear_gaussian_posterior_is_exact():
    """With q(z|x, y) = p(z|x, y) the ELBO equals log p(x|y) exactly: the oracle for the estimators."""
    model, p_x_given = _linear_gaussian_conditional(exact_posterior=True)
    x, y, exact = _lg_conditional_data(p_x_given)
    torch.testing.assert_close(elbo(model.given(y), x, analytic_kl=False).elbo, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(iwae_bound(model.given(y), x, 5), exact, rtol=0, atol=1e-9)
    wrong = iwae_bound(model.given((y + 1) % K_CLASSES), x, 5)
    assert (wrong < exact - 0.5).all()  # under another label the same x is far less likely


# ---------------------------------------------------------------------- DReG (Tucker et al. 2019)


class _PseudoInputPrior(Prior):
    """A VampPrior-like learned prior, p(z) = (1/K) sum_j q(z | u_j), over the model's own encoder: its
    log-density depends on the encoder's parameters directly (not through z) and on the pseudo-inputs u."""

    def __init__(self, model, u: torch.Tensor):
        self.model, self.u, self.dim = model, u, model.latent_dim

    def log_prob(self, z):
        q = self.model.encode(self.u)  # (K, D)
        log_q = Normal(q.mu, q.logvar).log_prob(z.unsqueeze(-2))  # (..., K)
        return torch.logsumexp(log_q, -1) - math.log(len(self.u))


def _dreg_setup(prior: str):
    """A tiny VAE (6 -> 8 -> 2 -> 8 -> 6), 3 fixed inputs and the prior's learnable tensors."""
    torch.set_num_threads(1)  # ~100 small backward passes: one thread is the fastest
    m = _mlp_vae(shape=(6,), latent=2, hidden=(8,))
    x = _binary((3, 6))
    extra = []
    if prior == "learned normal":
        mu, logvar = torch.full((2,), 0.3, dtype=torch.float64), torch.full((2,), -0.2, dtype=torch.float64)
        m.prior = NormalPrior(mu.requires_grad_(), logvar.requires_grad_())
        extra = [mu, logvar]
    elif prior == "pseudo-inputs":
        u = torch.rand(4, 6, generator=_gen(7), dtype=torch.float64).requires_grad_()
        m.prior = _PseudoInputPrior(m, u)
        extra = [u]
    return m, x, extra


def _grad_draws(m, x, extra, k: int, estimator: str, groups: int, copies: int, seed: int):
    """(groups, P) gradients of the IWAE bound's mean over `copies` independent draws per example (all
    parameters and the prior's tensors, flattened), and the number of encoder coordinates, which come first."""
    params = [*m.encoder.parameters(), *m.decoder.parameters(), *extra]
    g, xr, rows = _gen(seed), x.repeat(copies, 1), []
    for _ in range(groups):
        eps = torch.randn(k, len(xr), m.latent_dim, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(iwae_bound(m, xr, k, eps=eps, estimator=estimator).mean(), params)
        rows.append(torch.cat([t.flatten() for t in grads]))
    return torch.stack(rows), sum(p.numel() for p in m.encoder.parameters())


@pytest.mark.parametrize("prior", ["standard normal", "learned normal", "pseudo-inputs"])
def test_dreg_gradient_is_unbiased_for_the_iwae_bound_with_any_prior(prior, monkeypatch):
    """The DReG gradient's mean over many draws equals the standard IWAE gradient's, coordinate by coordinate
    (encoder, decoder, the prior's own tensors), within 5 standard errors of the difference; the same test
    tells apart the biased variant that weights z's gradient by w~ instead of w~^2 (the IWAE-STL gradient)."""
    m, x, extra = _dreg_setup(prior)
    std, _ = _grad_draws(m, x, extra, 8, "standard", 100, 20, seed=1)
    dreg, _ = _grad_draws(m, x, extra, 8, "dreg", 100, 20, seed=2)

    def max_z(a, b):
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        live = se > 0  # a dead ReLU unit's weights: exactly zero in every draw of both
        assert torch.equal(a.mean(0)[~live], b.mean(0)[~live])
        return ((a.mean(0) - b.mean(0))[live] / se[live]).abs().max().item()

    assert max_z(std, dreg) < 5.0
    monkeypatch.setattr(torch.Tensor, "register_hook", lambda self, fn: None)  # w~ instead of w~^2: biased
    stl, _ = _grad_draws(m, x, extra, 8, "dreg", 100, 20, seed=3)
    assert max_z(std, stl) > 10.0


@pytest.mark.parametrize("k", [8, 16])
def test_dreg_encoder_gradient_has_lower_variance(k):
    """On a fixed batch, the encoder's gradient varies far less from draw to draw under DReG (the trace of its
    covariance); the decoder's gradient is the same estimator, so its variance is about the same."""
    m, x, extra = _dreg_setup("standard normal")
    std, n_enc = _grad_draws(m, x, extra, k, "standard", 60, 1, seed=1)
    dreg, _ = _grad_draws(m, x, extra, k, "dreg", 60, 1, seed=2)
    assert dreg[:, :n_enc].var(0).sum() < 0.2 * std[:, :n_enc].var(0).sum()
    ratio = dreg[:, n_enc:].var(0).sum() / std[:, n_enc:].var(0).sum()
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("prior", ["learned normal", "pseudo-inputs"])
def test_dreg_keeps_the_iwae_value_and_the_decoder_and_prior_gradients(prior):
    """With the same noise: the loss is the IWAE bound bit for bit; the decoder's gradient and a learned
    prior's are the standard estimator's (they do not depend on z's path), the encoder's differs."""
    m, x, extra = _dreg_setup(prior)
    eps = torch.randn(8, 3, 2, generator=_gen(5), dtype=torch.float64)
    dec = [*m.decoder.parameters()] + (extra if prior == "learned normal" else [])
    out = {}
    for est in ("standard", "dreg"):
        torch.manual_seed(6)  # the reported KL of a prior without a closed form is drawn
        loss, terms = training_loss(m, x, iw_k=8, eps=eps, estimator=est)
        grads = torch.autograd.grad(loss.mean(), [*m.encoder.parameters(), *dec])
        out[est] = loss, terms, grads
    (ls, ts, gs), (ld, td_, gd) = out["standard"], out["dreg"]
    assert torch.equal(ls, ld) and torch.equal(-ld, iwae_bound(m, x, 8, eps=eps))
    assert torch.equal(ts.elbo, td_.elbo) and torch.equal(ts.kl, td_.kl)
    n_enc = len([*m.encoder.parameters()])
    for a, b in zip(gs[n_enc:], gd[n_enc:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(gs[:n_enc], gd[:n_enc], strict=True))


def test_dreg_needs_importance_samples_and_a_known_estimator():
    m, x, _ = _dreg_setup("standard normal")
    with pytest.raises(VaekitError, match="needs --iw-k > 1"):
        training_loss(m, x, estimator="dreg")
    with pytest.raises(VaekitError, match="not one of standard, dreg"):
        iwae_bound(m, x, 4, estimator="reinforce")
    with torch.no_grad():  # no graph, no hook: evaluation through the dreg path is just the bound
        assert torch.equal(
            iwae_bound(m, x, 4, eps=torch.zeros(4, 3, 2, dtype=torch.float64), estimator="dreg"),
            iwae_bound(m, x, 4, eps=torch.zeros(4, 3, 2, dtype=torch.float64)),
        )
