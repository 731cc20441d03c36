"""priors: the VampPrior and the learned mixture of Gaussians against a direct mixture computation
(torch.distributions' MixtureSameFamily of the encoder's own outputs), their samples' moments, the ELBO and the
IWAE bound with their Monte Carlo KL written out by hand, gradients reaching the pseudo-inputs, the start from
training examples, conditional pseudo-inputs, and the save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from vaekit import io
from vaekit.config import ModelConfig, RunConfig
from vaekit.data import Dataset
from vaekit.errors import VaekitError
from vaekit.models import LOGVAR_RANGE, build_model
from vaekit.objectives import elbo, iwae_bound, training_loss
from vaekit.priors import INIT_NOISE, INIT_RANGE, MoGPrior, VampPrior, describe, init_pseudo_inputs

SHAPE, D = (1, 6, 5), 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vamp(k=7, seed=0, prior="vamp", dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(input_shape=SHAPE, latent_dim=D, hidden=(16,), prior=prior, prior_components=k, **kw)
    return build_model(cfg).to(dtype)


def _oracle(model) -> td.MixtureSameFamily:
    """p(z) computed directly: the encoder on the pseudo-inputs (or the MoG's parameters), then torch's mixture
    of Independent Normals with equal weights, in float64."""
    p = model.prior
    if isinstance(p, VampPrior):
        u = torch.sigmoid(p.logits)
        c = torch.nn.functional.one_hot(p.labels, p.num_classes).to(u.dtype) if p.num_classes else None
        out = model.encoder(u) if c is None else model.encoder(u, c)
        mu, logvar = out.chunk(2, -1)
    else:
        mu, logvar = p.means, p.logvars
    mu, sd = mu.double(), torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE).double())
    cat = td.Categorical(logits=torch.zeros(mu.shape[0], dtype=torch.float64))
    return td.MixtureSameFamily(cat, td.Independent(td.Normal(mu, sd), 1))


def _binary(n=5, seed=1, dtype=torch.float32):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4, dtype=dtype), generator=_gen(seed))


def _extreme(model, case: str):
    """Pseudo-inputs all 0, all 1 (sigmoid of -+40 is 0 and 1 in float32), or an encoder whose outputs are
    ~1e3 times too large (means in the thousands, log-variances pinned at the clamp's ends)."""
    with torch.no_grad():
        if case == "zeros":
            model.prior.logits.fill_(-40.0)
        elif case == "ones":
            model.prior.logits.fill_(40.0)
        elif case == "huge":
            last = model.encoder.net[-1]
            last.weight.mul_(1e3)
            last.bias.mul_(1e3)
    return model


@pytest.mark.parametrize("case", ["random", "zeros", "ones", "huge"])
def test_vamp_log_prob_matches_a_direct_mixture(case):
    """log p(z) at draws of the prior, of q(z|x) for data, and far away, against the oracle (float64 from the
    same float32 encoder outputs); identical pseudo-inputs (all 0, all 1) make a one-component mixture."""
    model = _extreme(_vamp(seed=3), case)
    oracle = _oracle(model)
    with torch.no_grad():
        q = model.encode(_binary(6, seed=4))
        z = torch.cat([model.prior.sample(30, _gen(5)), q.rsample(5).reshape(-1, D), 50 * torch.randn(10, D)])
        ours = model.prior.log_prob(z.view(2, -1, D))
    assert ours.shape == (2, 35) and ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    ref = oracle.log_prob(z.double()).view(2, 35)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-3)
    if case in ("zeros", "ones"):
        c = oracle.component_distribution
        one = td.Independent(td.Normal(c.base_dist.loc[0], c.base_dist.scale[0]), 1)
        torch.testing.assert_close(ours.double(), one.log_prob(z.double()).view(2, 35), rtol=1e-5, atol=1e-3)


def test_mog_log_prob_matches_a_direct_mixture_and_clamps_its_variances():
    model = _vamp(k=6, seed=6, prior="mog", dtype=torch.float64)
    with torch.no_grad():
        model.prior.means.mul_(3)
        model.prior.logvars.uniform_(-20, 12, generator=_gen(7))  # beyond the clamp on both sides
    z = model.prior.sample(40, _gen(8))
    torch.testing.assert_close(model.prior.log_prob(z), _oracle(model).log_prob(z), rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_prior_samples_have_the_mixtures_moments(prior):
    """The mean and covariance of 100k draws from model.prior against the mixture's own (its components from
    the oracle), within 4.5 standard errors of each entry; at temperature 0 every draw is a component mean."""
    model = _vamp(k=5, seed=9, prior=prior, dtype=torch.float64)
    c = _oracle(model).component_distribution.base_dist
    mu, var = c.loc, c.scale**2
    n = 100_000
    z = model.latent_sampler(n, _gen(10))
    m = mu.mean(0)
    cov = torch.diag(var.mean(0)) + mu.T @ mu / len(mu) - torch.outer(m, m)
    assert ((z.mean(0) - m).abs() < 4.5 * z.std(0) / math.sqrt(n)).all()
    prods = (z - m)[:, :, None] * (z - m)[:, None, :]
    assert ((prods.mean(0) - cov).abs() < 4.5 * prods.std(0) / math.sqrt(n)).all()
    z0 = model.latent_sampler(50, _gen(11), temperature=0.0)
    assert ((z0[:, None, :] - mu[None]).abs().amax(-1).amin(-1) < 1e-12).all()
    assert model.sample(3, _gen(12)).shape == (3, *SHAPE)


def test_elbo_and_iwae_with_the_vamp_prior_against_a_hand_written_monte_carlo():
    """With eps fixed: ELBO = log p(x|z) - (log q(z|x) - log p(z)) and IWAE_k = logsumexp_i(log p(x|z_i) +
    log p(z_i) - log q(z_i|x)) - log k, each term from torch.distributions; IWAE(k=1) is the ELBO; no
    per-dimension KL (free bits are refused)."""
    model = _vamp(seed=13, dtype=torch.float64)
    x = _binary(5, seed=14, dtype=torch.float64)
    eps = torch.randn(3, 5, D, generator=_gen(15), dtype=torch.float64)
    q = model.encode(x)
    q_ref = td.Independent(td.Normal(q.mu, q.stddev), 1)
    z = q.mu + q.stddev * eps  # (k, B, D)
    recon = td.Independent(td.Bernoulli(logits=model.decoder(z.reshape(-1, D)).view(3, 5, *SHAPE)), 3).log_prob(x)
    log_w = recon + _oracle(model).log_prob(z) - q_ref.log_prob(z)  # (k, B)
    t = elbo(model, x, eps=eps[0])
    torch.testing.assert_close(t.elbo, log_w[0], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(t.kl, q_ref.log_prob(z[0]) - _oracle(model).log_prob(z[0]), rtol=1e-10, atol=1e-9)
    assert t.kl_per_dim is None
    torch.testing.assert_close(iwae_bound(model, x, 1, eps=eps[:1]), t.elbo, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(
        iwae_bound(model, x, 3, eps=eps), torch.logsumexp(log_w, 0) - math.log(3), rtol=1e-10, atol=1e-9
    )
    with pytest.raises(VaekitError, match="free bits"):
        training_loss(model, x, free_bits=0.5)


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_the_loss_reaches_the_priors_parameters(prior):
    model = _vamp(seed=16, prior=prior)
    loss, _ = model(_binary(8, seed=17))
    loss.mean().backward()
    params = dict(model.prior.named_parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    if prior == "vamp":  # the encoder gets gradient through q(z|u_k) too; the labels are a buffer
        assert set(params) == {"logits"} and "labels" in dict(model.prior.named_buffers())


def test_pseudo_inputs_start_from_distinct_training_examples_in_range():
    model = _vamp(k=20, seed=18)
    before = model.prior.pseudo_inputs.clone()
    assert ((before > 0) & (before < 1)).all()
    x = torch.rand(50, *SHAPE, generator=_gen(19))
    ds = Dataset(x, torch.arange(50) % 3, "toy")
    init_pseudo_inputs(model, ds, seed=20)
    u = model.prior.pseudo_inputs.detach()
    assert (u >= INIT_RANGE[0] - 1e-6).all() and (u <= INIT_RANGE[1] + 1e-6).all()
    nearest = (u.flatten(1)[:, None] - x.flatten(1)[None]).abs().amax(-1)  # (K, N): the largest pixel gap
    # each is one training example plus noise (under 5 standard deviations), and no two share an example
    assert (nearest.amin(1) < 5 * INIT_NOISE).all() and len(set(nearest.argmin(1).tolist())) == 20
    init_pseudo_inputs(model, ds, seed=20)
    torch.testing.assert_close(model.prior.pseudo_inputs.detach(), u, rtol=0, atol=0)  # seeded
    with pytest.raises(VaekitError, match="more pseudo-inputs than the 10 training examples"):
        init_pseudo_inputs(model, Dataset(x[:10], None, "toy"), seed=0)
    plain = _vamp(seed=18, prior="standard", k=500)
    init_pseudo_inputs(plain, Dataset(x[:10], None, "toy"), seed=0)  # any other prior: nothing to do


def test_a_conditional_vamp_prior_encodes_labelled_pseudo_inputs():
    """p(z) = 1/K sum_k q(z | u_k, y_k), one prior for every y: the labels start as the examples' own."""
    model = _vamp(k=6, seed=21, num_classes=3)
    ds = Dataset(torch.rand(30, *SHAPE, generator=_gen(22)), torch.tensor([2, 0, 1] * 10), "toy")
    init_pseudo_inputs(model, ds, seed=23)
    assert model.prior.labels.tolist() != [0, 1, 2, 0, 1, 2]
    z = torch.randn(9, D, generator=_gen(24))
    with torch.no_grad():
        torch.testing.assert_close(model.prior.log_prob(z).double(), _oracle(model).log_prob(z.double()))
        t = elbo(model.given(torch.tensor([0, 1, 2, 0, 1])), _binary(5, seed=25))
    assert torch.isfinite(t.elbo).all() and model.given(1).prior is model.prior


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_save_and_load_round_trip(tmp_path, prior):
    """config.json + model.safetensors rebuild the prior: the same parameters, the same log-density, and the
    encoder's weights stored once (the VampPrior holds the model's encoder, not a copy)."""
    model = _vamp(k=9, seed=26, prior=prior, num_classes=2 if prior == "vamp" else 0)
    if prior == "vamp":
        with torch.no_grad():
            model.prior.labels.copy_(torch.tensor([1, 1, 0, 1, 0, 0, 1, 0, 1]))
    io.save(model, tmp_path, RunConfig(model.config))
    back = io.load(tmp_path)
    assert type(back.prior) is type(model.prior) and back.config.prior == prior
    state = model.state_dict()
    assert not any(k.startswith("prior.encoder") for k in state)
    for k, v in back.state_dict().items():
        assert torch.equal(v, state[k]), k
    z = torch.randn(11, D, generator=_gen(27))
    with torch.no_grad():
        assert torch.equal(back.prior.log_prob(z), model.prior.log_prob(z))


def test_describe_and_refusals():
    assert describe(_vamp(k=7).prior) == "a VampPrior (K=7 pseudo-inputs)"
    assert describe(_vamp(k=3, prior="mog").prior) == "a mixture of K=3 Gaussians"
    assert describe(_vamp(prior="standard", k=500).prior) == "N(0, I)"
    assert isinstance(_vamp(k=3, prior="mog").prior, MoGPrior)
    for kw, needle in (
        ({"model": "ae", "prior": "vamp"}, "applies to a VAE only"),
        ({"prior": "vamp", "prior_components": 0}, "positive integer"),
        ({"prior": "bogus"}, "not one of standard, vamp, mog"),
        ({"prior_components": 12}, "applies only to --prior vamp or mog"),
    ):
        with pytest.raises(VaekitError, match=needle):
            ModelConfig(input_shape=SHAPE, **kw).validate()
