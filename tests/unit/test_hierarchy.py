"""Stochastic layers (hierarchy.py) against oracles: the ELBO and the IWAE bound of two- and three-layer models
against a Monte Carlo computation written out with torch.distributions; the importance-sampled log p(x) of a
two-layer linear-Gaussian model against its closed-form Gaussian marginal; DReG's gradient in expectation
against the standard IWAE gradient; the per-dimension KL, sampling, the config's list."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import distributions as td

from vaekit.config import ModelConfig, RunConfig
from vaekit.errors import VaekitError
from vaekit.evaluate import log_likelihood
from vaekit.hierarchy import HierarchicalPosterior, HierarchicalPrior, HierarchicalVAE, layer_hidden
from vaekit.models import build_model
from vaekit.objectives import elbo, iwae_bound, kl_divergence, log_weights, training_loss
from vaekit.priors import VampPrior, describe


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(sizes=(4, 3), hidden=(16,), shape=(1, 6, 5), seed=0, **kw) -> HierarchicalVAE:
    torch.manual_seed(seed)
    return build_model(ModelConfig(input_shape=shape, latent_dim=sizes, hidden=hidden, **kw)).double()


def _binary(shape, seed=1):
    return torch.bernoulli(torch.full(shape, 0.4, dtype=torch.float64), generator=_gen(seed))


def _normal(out: torch.Tensor) -> td.Normal:
    """A network's (mu, logvar) output as torch's Normal (logvar clamped as the model clamps it)."""
    mu, logvar = out.chunk(2, -1)
    return td.Normal(mu, torch.exp(0.5 * logvar.clamp(-14.0, 8.0)))


def _hand_log_weights(m, x, eps):
    """log p(x, z) - log q(z|x) for z drawn ancestrally with noise eps (..., B, D), by hand: (..., B)."""
    sizes = m.latent_sizes
    e = eps.split(sizes, -1)
    q = _normal(m.encoder.net(x.flatten(1)))
    zs, log_q = [q.loc + q.scale * e[0]], 0
    log_q = q.log_prob(zs[0]).sum(-1)
    for net, el in zip(m.up, e[1:]):
        q = _normal(net.net(zs[-1]))
        zs.append(q.loc + q.scale * el)
        log_q = log_q + q.log_prob(zs[-1]).sum(-1)
    log_p = td.Normal(0.0, 1.0).log_prob(zs[-1]).sum(-1)
    for i, net in enumerate(m.prior.down):
        log_p = log_p + _normal(net.net(zs[i + 1])).log_prob(zs[i]).sum(-1)
    logits = m.decoder.net(zs[0]).view(*zs[0].shape[:-1], *m.shape)
    log_px = td.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(-3).sum(-1)
    return log_px + log_p - log_q, log_px


@pytest.mark.parametrize("sizes", [(4, 3), (4, 3, 2)])
def test_elbo_and_iwae_bound_against_a_hand_written_monte_carlo(sizes):
    m, x = _model(sizes), _binary((5, 1, 6, 5))
    d = sum(sizes)
    eps = torch.randn(5, d, generator=_gen(2), dtype=torch.float64)
    log_w, log_px = _hand_log_weights(m, x, eps)
    t = elbo(m, x, eps=eps)
    torch.testing.assert_close(t.elbo, log_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t.recon, log_px, rtol=1e-10, atol=1e-10)
    assert t.kl_per_dim.shape == (5, d)
    torch.testing.assert_close(t.kl_per_dim.sum(-1), t.kl, rtol=1e-10, atol=1e-10)
    eps_k = torch.randn(7, 5, d, generator=_gen(3), dtype=torch.float64)
    want = torch.logsumexp(_hand_log_weights(m, x, eps_k)[0], 0) - math.log(7)
    torch.testing.assert_close(iwae_bound(m, x, 7, eps=eps_k), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(iwae_bound(m, x, 1, eps=eps[None]), t.elbo, rtol=1e-12, atol=1e-12)


def test_log_prob_without_the_cached_draw_is_the_same():
    """log q(z|x) of a z that is not the last draw recomputes each layer's conditional from z's own slices."""
    m, x = _model((4, 3, 2)), _binary((5, 1, 6, 5))
    q = m.encode(x)
    z = q.rsample(3)
    cached, per_dim = q.log_prob(z), q.log_prob_per_dim(z)
    fresh = m.encode(x)
    torch.testing.assert_close(fresh.log_prob(z.clone()), cached, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_dim.sum(-1), cached, rtol=1e-12, atol=1e-12)
    assert torch.equal(q.stopped().log_prob(z), cached)


# -------------------------------------------------------- a two-layer model whose log p(x) is known exactly

D_X, D1, D2, S1, SIGMA = 6, 3, 2, 0.7, 0.5


def _linear_gaussian(exact_posterior: bool):
    """The library's two-layer VAE with no hidden layers and a Gaussian likelihood: p(z2) = N(0, I),
    p(z1|z2) = N(A z2 + a, S1^2 I), p(x|z1) = N(W z1 + b, SIGMA^2 I), so p(x) = N(W a + b, W (A A^T + S1^2 I)
    W^T + SIGMA^2 I). A's and W's columns are orthogonal and A's rows too, so the true posterior
    p(z1|x) p(z2|z1) is a product of diagonal Gaussians with linear means, which the linear networks hold."""
    m = build_model(
        ModelConfig(input_shape=(D_X,), latent_dim=(D1, D2), hidden=(), likelihood="gaussian", sigma=SIGMA)
    ).double()
    g, f64 = _gen(100), torch.float64
    w = torch.linalg.qr(torch.randn(D_X, D_X, generator=g, dtype=f64))[0][:, :D1] * torch.tensor([2.0, 1.0, 0.5])
    b, a = 0.3 * torch.randn(D_X, generator=g, dtype=f64), 0.5 * torch.randn(D1, generator=g, dtype=f64)
    big_a = torch.tensor([[1.5, 0.0], [0.0, 0.8], [0.0, 0.0]], dtype=f64)
    sigma = m.likelihood.log_sigma().exp().item()
    c1 = big_a @ big_a.T + S1**2 * torch.eye(D1, dtype=f64)  # Cov z1, diagonal
    post1 = 1 / (1 / c1.diagonal() + (w * w).sum(0) / sigma**2)  # the posterior variance of z1 given x
    post2 = 1 / (1 + (big_a * big_a).sum(0) / S1**2)  # of z2 given z1
    k1 = post1[:, None] * w.T / sigma**2  # mean of z1 | x = k1 (x - b) + post1 a / c1
    k2 = post2[:, None] * big_a.T / S1**2  # mean of z2 | z1 = k2 (z1 - a)
    bad = 0.0 if exact_posterior else 0.5  # a poor but sane posterior: shifted, too wide
    with torch.no_grad():
        for layer, weight, bias in (
            (m.decoder.net[0], w, b),
            (
                m.prior.down[0].net[0],
                torch.cat([big_a, torch.zeros(D1, D2, dtype=f64)]),
                torch.cat([a, torch.full((D1,), 2 * math.log(S1))]),
            ),
            (
                m.encoder.net[0],
                torch.cat([k1, torch.zeros(D1, D_X)]),
                torch.cat([-k1 @ b + post1 * a / c1.diagonal() + 0.2 * bad, post1.log() + 0.6 * bad]),
            ),
            (
                m.up[0].net[0],
                torch.cat([k2, torch.zeros(D2, D1)]),
                torch.cat([-k2 @ a - 0.1 * bad, post2.log() + 0.5 * bad]),
            ),
        ):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    p_x = td.MultivariateNormal(w @ a + b, w @ c1 @ w.T + sigma**2 * torch.eye(D_X, dtype=f64))
    return m.eval(), p_x


def test_log_likelihood_of_a_linear_gaussian_hierarchy_is_exact_with_the_true_posterior():
    """Every importance weight is p(x) itself when q is the true posterior: any k, any noise."""
    m, p_x = _linear_gaussian(exact_posterior=True)
    x = p_x.sample((6,))
    want = p_x.log_prob(x)
    torch.testing.assert_close(log_likelihood(m, x, 3, generator=_gen(1)), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(elbo(m, x).elbo, want, rtol=0, atol=1e-6)


def test_log_likelihood_of_a_linear_gaussian_hierarchy_converges_with_a_poor_posterior():
    """A wrong q: the ELBO (its mean over 4000 draws) is far below log p(x); the IWAE estimate with k = 10000
    is within 4 of its Monte Carlo standard errors (delta method, sd(w) / (mean(w) sqrt(k)), each below 0.01)."""
    m, p_x = _linear_gaussian(exact_posterior=False)
    x = p_x.sample((6,))
    want = p_x.log_prob(x)
    k = 10000
    est = log_likelihood(m, x, k, generator=_gen(1))
    with torch.no_grad():
        mean_elbo = elbo(m, x.repeat(4000, 1)).elbo.view(4000, 6).mean(0)
        w = torch.exp(log_weights(m, x, k) - want)  # (k, 6), mean 1 in expectation
    se = w.std(0) / w.mean(0) / math.sqrt(k)
    assert (mean_elbo < want - 0.2).all() and (se < 0.01).all()
    assert ((est - want).abs() < 4 * se).all()


# --------------------------------------------------------------------------------------------- DReG


def _grad_draws(m, x, k: int, estimator: str, groups: int, copies: int, seed: int):
    """(groups, P) gradients of the IWAE bound's mean over `copies` draws per example; encoder-side first."""
    enc = [*m.encoder.parameters(), *m.up.parameters()]
    params = [*enc, *m.decoder.parameters(), *m.prior.parameters()]
    g, xr, rows = _gen(seed), x.repeat(copies, 1), []
    for _ in range(groups):
        eps = torch.randn(k, len(xr), m.latent_dim, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(iwae_bound(m, xr, k, eps=eps, estimator=estimator).mean(), params)
        rows.append(torch.cat([t.flatten() for t in grads]))
    return torch.stack(rows), sum(p.numel() for p in enc)


def test_dreg_gradient_of_a_hierarchy_is_unbiased_and_less_noisy(monkeypatch):
    """DReG's gradient averaged over many draws equals the standard IWAE gradient for every parameter (the
    encoder's and the upper q network's, whose log q is evaluated with detached weights at z's own slices) within
    5 standard errors; without the w~ hook (IWAE-STL) it is biased; the encoder side's variance is lower."""
    torch.set_num_threads(1)
    m, x = _model((2, 2), hidden=(8,), shape=(6,), activation="tanh"), _binary((3, 6))
    std, n_enc = _grad_draws(m, x, 8, "standard", 100, 20, seed=1)
    dreg, _ = _grad_draws(m, x, 8, "dreg", 100, 20, seed=2)

    def max_z(a, b):
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        live = se > 0  # the weights of an input pixel that is 0 in all 3 examples: zero in every draw
        assert torch.equal(a.mean(0)[~live], b.mean(0)[~live])
        return ((a.mean(0) - b.mean(0))[live] / se[live]).abs().max().item()

    assert max_z(std, dreg) < 5.0
    assert dreg[:, :n_enc].var(0).sum() < 0.5 * std[:, :n_enc].var(0).sum()
    monkeypatch.setattr(torch.Tensor, "register_hook", lambda self, fn: None)
    stl, _ = _grad_draws(m, x, 8, "dreg", 100, 20, seed=3)
    assert max_z(std, stl) > 10.0


def test_dreg_keeps_the_bound_and_the_generative_gradients():
    m, x = _model((3, 2), hidden=(8,), shape=(6,)), _binary((4, 6))
    eps = torch.randn(5, 4, 5, generator=_gen(5), dtype=torch.float64)
    gen = [*m.decoder.parameters(), *m.prior.parameters()]
    out = {}
    for est in ("standard", "dreg"):
        b = iwae_bound(m, x, 5, eps=eps, estimator=est)
        out[est] = b, torch.autograd.grad(b.sum(), [*m.encoder.parameters(), *m.up.parameters(), *gen])
    (bs, gs), (bd, gd) = out["standard"], out["dreg"]
    assert torch.equal(bs, bd)
    n = len([*m.encoder.parameters(), *m.up.parameters()])
    for a, b in zip(gs[n:], gd[n:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(gs[:n], gd[:n], strict=True))


# ------------------------------------------------------------------ priors, sampling, the explorer's top


@pytest.mark.parametrize("prior", ["standard", "vamp", "mog"])
def test_the_configured_prior_is_the_top_layers(prior):
    kw = {} if prior == "standard" else {"prior_components": 4}
    m, x = _model((4, 3), prior=prior, **kw), _binary((5, 1, 6, 5))
    assert isinstance(m.prior, HierarchicalPrior) and m.prior.top.dim == 3
    assert "top layer z2" in describe(m.prior)
    z = m.encode(x).rsample(2)
    parts = z.split((4, 3), -1)
    want = m.prior.top.log_prob(parts[1]) + _normal(m.prior.down[0].net(parts[1])).log_prob(parts[0]).sum(-1)
    torch.testing.assert_close(m.prior.log_prob(z), want, rtol=1e-10, atol=1e-10)
    assert (m.prior.log_prob_per_dim(z) is None) == (prior != "standard")
    if prior == "vamp":  # its components: q(z2 | z1 = mu1(u_k)) for the pseudo-inputs u_k
        assert isinstance(m.prior.top, VampPrior)
        u = m.prior.top.pseudo_inputs
        mu1 = m.encode(u).first.mu
        want = _normal(m.up[0].net(mu1))
        torch.testing.assert_close(m.prior.top.mixture().mu, want.loc)
    kl, kl_d = kl_divergence(m.prior, m.encode(x))
    assert kl.shape == (5,) and (kl_d is None) == (prior != "standard")


def test_sampling_temperature_and_completing_a_top_layer_point():
    m = _model((4, 3, 2)).float()
    z = m.latent_sampler(6, _gen(0))
    assert z.shape == (6, 9) and torch.equal(z, m.latent_sampler(6, _gen(0)))
    cold = m.latent_sampler(6, _gen(1), temperature=0.0)  # every layer's noise times 0: the chain of means
    assert (cold[:, -2:] == 0).all()
    torch.testing.assert_close(cold, m.complete(cold[:, -2:]))
    assert torch.equal(m.top(z), z[:, -2:])
    assert m.sample(4, _gen(0), temperature=0.5).shape == (4, 1, 6, 5)
    x = _binary((5, 1, 6, 5)).float()
    q = m.encode(x)
    assert q.mean.shape == q.stddev.shape == (5, 9) and (q.stddev > 0).all()
    torch.testing.assert_close(q.mean[:, 4:7], q.steps[0](q.mean[:, :4]).mu)


def test_free_bits_and_the_kl_per_dimension_of_a_hierarchy():
    m, x = _model((4, 3)), _binary((5, 1, 6, 5))
    loss, t = training_loss(m, x, free_bits=0.5, eps=torch.zeros(5, 7, dtype=torch.float64))
    assert loss.shape == (5,) and t.kl_per_dim.shape == (5, 7)
    loss.mean().backward()
    assert all(p.grad is not None for p in m.up.parameters())


# ------------------------------------------------------------------------------------- the config


def test_latent_dim_list_round_trips_and_one_size_is_the_one_layer_model(tmp_path):
    cfg = RunConfig(ModelConfig(latent_dim=(100, 50)))
    d = json.loads(cfg.to_json())
    assert d["model"]["latent_dim"] == [100, 50]
    (tmp_path / "config.json").write_text(cfg.to_json())
    back = RunConfig.from_json_file(tmp_path / "config.json")
    assert back.model.latent_dim == (100, 50) and back.model.latent_sizes == (100, 50)
    d["model"]["latent_dim"] = [20]  # a list of one size: the one-layer model, stored as the integer
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert RunConfig.from_json_file(tmp_path / "config.json").model.latent_dim == 20
    one = build_model(ModelConfig(latent_dim=20))
    assert type(one).__name__ == "VAE" and one.latent_dim == 20 and one.latent_sizes == (20,)
    assert layer_hidden((200, 200), 1) == (100, 100) and layer_hidden((5,), 2) == (2,)
    m = build_model(ModelConfig(latent_dim=(100, 50), hidden=(200, 200), activation="tanh"))
    assert [tuple(mod.net[0].weight.shape) for mod in (*m.up, *m.prior.down)] == [(100, 100), (100, 50)]
    assert m.latent_dim == 150 and isinstance(m.encode(torch.zeros(2, 1, 28, 28)), HierarchicalPosterior)


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"latent_dim": (100, 0)}, "--latent-dim must be a positive integer, got 0"),
        ({"latent_dim": (100, 50), "arch": "conv"}, "applies to an MLP VAE only: the hierarchy's networks are MLPs"),
        ({"latent_dim": (100, 50), "model": "ae"}, "an autoencoder has one code layer"),
        ({"latent_dim": (100, 50), "num_classes": 10}, "a hierarchy is unconditional"),
        ({"latent_dim": (2,) * 17}, "at most 16 stochastic layers"),
    ],
)
def test_bad_hierarchies_are_one_line_errors(kw, needle):
    with pytest.raises(VaekitError, match=needle) as e:
        ModelConfig(**kw).validate()
    assert "\n" not in str(e.value)
