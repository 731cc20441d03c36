"""Encoders/decoders sized from the input shape; models composed from them; likelihood objects."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.distributions import Bernoulli, ContinuousBernoulli, Gaussian, Normal, PointMass
from vaekit.errors import VaekitError
from vaekit.models import LOGVAR_RANGE, build_model
from vaekit.networks import ACTIVATIONS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, conv_sizes, mlp

CONV_SHAPES = [(1, 28, 28), (3, 32, 32), (1, 7, 9), (3, 64, 48), (1, 5, 5), (4, 9, 30), (2, 8, 8)]


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv_encoder_decoder_shapes(shape):
    torch.manual_seed(0)
    enc = ConvEncoder(shape, (8, 16, 32), (24,), 10, "relu")
    dec = ConvDecoder(shape, (8, 16, 32), (24,), 5, "relu")
    x = torch.rand(3, *shape)
    assert enc(x).shape == (3, 10)
    assert dec(torch.randn(4, 5)).shape == (4, *shape)


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


def test_conv_downsamples_only_while_the_image_is_large_enough():
    enc = ConvEncoder((1, 5, 5), (8, 16), (), 4, "relu")
    assert not any(isinstance(l, nn.Conv2d) for l in enc.conv)  # 5x5: no stride-2 layer
    enc = ConvEncoder((1, 28, 28), (8, 16, 32), (), 4, "relu")
    assert sum(isinstance(l, nn.Conv2d) for l in enc.conv) == 2  # 28 -> 14 -> 7, stops at < 8
    assert conv_sizes(7, 9, 2) == [(7, 9), (4, 5), (2, 3)]


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


def test_mlp_layers_depth_width_activation():
    net = mlp([5, 7, 3, 2], "tanh")
    kinds = [type(l) for l in net]
    assert kinds == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert [l.out_features for l in net if isinstance(l, nn.Linear)] == [7, 3, 2]
    enc, dec = MLPEncoder((1, 4, 4), (9, 5), 6, "elu"), MLPDecoder((1, 4, 4), (9, 5), 3, "elu")
    assert [l.out_features for l in enc.net if isinstance(l, nn.Linear)] == [9, 5, 6]
    assert [l.out_features for l in dec.net if isinstance(l, nn.Linear)] == [5, 9, 16]  # mirrored
    for name in ACTIVATIONS:
        assert mlp([2, 3, 1], name)(torch.randn(4, 2)).shape == (4, 1)


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


def test_build_model_validates_its_config():
    with pytest.raises(VaekitError, match="conv"):
        build_model(ModelConfig(arch="conv", input_shape=(784,)))
    with pytest.raises(VaekitError, match="latent-dim"):
        build_model(ModelConfig(latent_dim=0))
    with pytest.raises(VaekitError, match="learn-sigma"):
        build_model(ModelConfig(learn_sigma="global"))
    assert math.prod(build_model(ModelConfig()).shape) == 784
