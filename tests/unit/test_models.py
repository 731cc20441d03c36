"""models: VAEs and autoencoders composed from the networks for every input shape, the distribution objects they
return, the clamped encoder log-variance, the Gaussian likelihood's sigma, sampling from the prior (or an AE's
fitted code Gaussian), and build_model's validation."""

from __future__ import annotations

import math

import pytest
import torch
from test_networks import CONV_SHAPES
from test_objectives import P_LOGVAR, P_MU, _gen, _mlp_vae

from vaekit.config import ModelConfig
from vaekit.distributions import Bernoulli, ContinuousBernoulli, Gaussian, Normal, NormalPrior, PointMass
from vaekit.errors import VaekitError
from vaekit.models import LOGVAR_RANGE, build_model


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("model", ["vae", "ae"])
def test_conv_models_round_trip_every_shape(shape, model):
    torch.manual_seed(0)
    m = build_model(
        ModelConfig(model=model, arch="conv", input_shape=shape, latent_dim=3, hidden=(16,), channels=(4, 8))
    )
    x = torch.rand(2, *shape)
    q = m.encode(x)
    assert q.mean.shape == (2, 3)
    p = m.decode(q.mean)
    assert p.mean.shape == (2, *shape)
    assert m.reconstruct(x).shape == (2, *shape)
    assert m.sample(5).shape == (5, *shape)
    loss, terms = m(torch.bernoulli(x))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in m.encoder.parameters())


@pytest.mark.parametrize("shape", [(784,), (10,), (1,)])
def test_mlp_on_vector_data(shape):
    torch.manual_seed(0)
    m = build_model(ModelConfig(input_shape=shape, latent_dim=2, hidden=(12, 6)))
    x = torch.rand(4, *shape)
    assert m.encode(x).mean.shape == (4, 2)
    assert m.decode(torch.randn(3, 2)).mean.shape == (3, *shape)
    assert m.decode(torch.randn(7, 3, 2)).mean.shape == (7, 3, *shape)  # k samples of a batch
    loss, _ = m(torch.bernoulli(x))
    assert loss.shape == (4,) and torch.isfinite(loss).all()


def test_the_lecture_model_has_the_expected_size():
    m = build_model(ModelConfig())  # 784-400-20 MLP VAE
    n_enc = 784 * 400 + 400 + 400 * 40 + 40
    n_dec = 20 * 400 + 400 + 400 * 784 + 784
    assert sum(p.numel() for p in m.encoder.parameters()) == n_enc
    assert sum(p.numel() for p in m.decoder.parameters()) == n_dec


def test_models_return_distribution_objects():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 4, 4)
    vae = build_model(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,)))
    assert isinstance(vae.encode(x), Normal) and isinstance(vae.decode(torch.zeros(1, 2)), Bernoulli)
    ae = build_model(ModelConfig(model="ae", input_shape=(1, 4, 4), latent_dim=2, hidden=(8,)))
    assert isinstance(ae.encode(x), PointMass)
    assert torch.equal(ae.encode(x).stddev, torch.zeros(3, 2))
    cb = build_model(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,), likelihood="cbernoulli"))
    assert isinstance(cb.decode(torch.zeros(1, 2)), ContinuousBernoulli)
    g = build_model(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,), likelihood="gaussian"))
    assert isinstance(g.decode(torch.zeros(1, 2)), Gaussian)


def test_encoder_logvar_is_clamped():
    vae = build_model(ModelConfig(input_shape=(3,), latent_dim=2, hidden=()))
    with torch.no_grad():
        vae.encoder.net[0].bias[2:] = torch.tensor([1e4, -1e4])
    lv = vae.encode(torch.zeros(1, 3)).logvar
    assert lv.tolist() == [[LOGVAR_RANGE[1], LOGVAR_RANGE[0]]]


@pytest.mark.parametrize("learn", ["none", "global", "pixel"])
def test_gaussian_likelihood_sigma(learn):
    shape = (1, 3, 4)
    m = build_model(
        ModelConfig(
            input_shape=shape,
            latent_dim=2,
            hidden=(),
            likelihood="gaussian",
            sigma=0.3,
            learn_sigma=learn,
            min_sigma=0.01,
        )
    )
    lik = m.likelihood
    sigma = lik.log_sigma().exp()
    assert torch.allclose(sigma, torch.tensor(0.3), rtol=1e-5)
    assert sigma.shape == (() if learn != "pixel" else shape)
    params = dict(m.named_parameters())
    assert ("likelihood.raw_sigma" in params) == (learn != "none")
    if learn != "none":  # bounded away from zero however far the raw parameter is pushed
        with torch.no_grad():
            lik.raw_sigma.fill_(-1e4)
        assert (lik.log_sigma().exp() >= 0.01 - 1e-9).all()
        assert torch.isfinite(m.decode(torch.zeros(1, 2)).log_prob(torch.rand(1, *shape))).all()


@pytest.mark.parametrize("sigma", [0.002, 1.0, 1000.0])
def test_gaussian_likelihood_any_sigma_is_represented_exactly(sigma):
    m = build_model(ModelConfig(input_shape=(4,), latent_dim=2, hidden=(), likelihood="gaussian", sigma=sigma))
    assert m.likelihood.log_sigma().exp().item() == pytest.approx(sigma, rel=1e-5)


def test_autoencoder_samples_from_its_fitted_code_gaussian():
    ae = build_model(ModelConfig(model="ae", input_shape=(5,), latent_dim=2, hidden=()))
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(20_000, 2, generator=g) @ torch.tensor([[2.0, 0.0], [1.0, 0.5]]) + torch.tensor([3.0, -1.0])
    ae.fit_code_gaussian(codes)
    z = ae.latent_sampler(20_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.mean(0), codes.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.cov(codes.T), atol=0.1, rtol=0.05)


def test_a_vae_samples_from_its_prior():
    prior = NormalPrior(P_MU.float(), P_LOGVAR.float())
    model = _mlp_vae(seed=43).float()
    model.prior = prior
    z = model.latent_sampler(100_000, _gen(44))
    torch.testing.assert_close(z.mean(0), P_MU.float(), atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.exp(0.5 * P_LOGVAR.float()), rtol=0.02, atol=0)
    assert model.sample(3, _gen(45)).shape == (3, 1, 6, 5)


def test_build_model_validates_its_config():
    with pytest.raises(VaekitError, match="conv"):
        build_model(ModelConfig(arch="conv", input_shape=(784,)))
    with pytest.raises(VaekitError, match="latent-dim"):
        build_model(ModelConfig(latent_dim=0))
    with pytest.raises(VaekitError, match="learn-sigma"):
        build_model(ModelConfig(learn_sigma="global"))
    assert math.prod(build_model(ModelConfig()).shape) == 784
