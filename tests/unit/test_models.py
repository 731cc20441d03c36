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
    cold = ae.latent_sampler(20_000, torch.Generator().manual_seed(1), temperature=0.5)  # N(m, 0.25 S)
    torch.testing.assert_close(cold.mean(0), codes.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(cold.T), 0.25 * torch.cov(codes.T), atol=0.03, rtol=0.05)


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


# ------------------------------------------------------------------------------------ conditional models


def _cond(model="vae", arch="mlp", likelihood="bernoulli", shape=(1, 6, 5), k=3, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(
            model=model,
            arch=arch,
            input_shape=shape,
            latent_dim=4,
            hidden=(16,),
            likelihood=likelihood,
            num_classes=k,
            **({"channels": (4, 8)} if arch == "conv" else {}),
            **kw,
        )
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "cbernoulli"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("model", ["vae", "ae"])
def test_conditional_models_have_the_unconditional_shapes(model, arch, likelihood):
    m = _cond(model, arch, likelihood, shape=(1, 9, 8))
    assert m.conditional and m.num_classes == 3
    x, y = torch.rand(5, 1, 9, 8), torch.tensor([0, 1, 2, 1, 0])
    q = m.encode(x, y)
    assert q.mean.shape == (5, 4)
    assert m.decode(q.mean, y).mean.shape == (5, 1, 9, 8)
    assert m.decode(torch.randn(7, 5, 4), y).mean.shape == (7, 5, 1, 9, 8)  # k samples of a batch: y broadcast
    assert m.decode(torch.randn(6, 4), 2).mean.shape == (6, 1, 9, 8)  # one label for all
    assert m.reconstruct(x, y).shape == (5, 1, 9, 8)
    assert m.sample(5, _gen(0), y=y).shape == (5, 1, 9, 8)
    assert m.sample(3, _gen(0), y=1).shape == (3, 1, 9, 8)
    v = m.given(y)
    assert v.sample(5, _gen(0)).shape == (5, 1, 9, 8) and v.reconstruct(x).shape == (5, 1, 9, 8)
    loss, terms = m(torch.bernoulli(x), y)
    assert loss.shape == (5,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad and p.dim() > 1)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_one_hot_label_joins_the_first_dense_layer_of_each_network(arch):
    """The label is a one-hot vector concatenated to the first dense layer's input: the K extra columns of
    that layer's weight, whose column c is class c's learned offset of the pre-activation."""
    m, u = _cond(arch=arch, k=3), _cond(arch=arch, k=0)
    p_c = dict((n, t.shape) for n, t in m.named_parameters())
    p_u = dict((n, t.shape) for n, t in u.named_parameters())
    grown = {n for n in p_c if p_c[n] != p_u[n]}
    enc0 = "encoder.net.0.weight" if arch == "mlp" else "encoder.head.0.weight"
    dec0 = "decoder.net.0.weight" if arch == "mlp" else "decoder.head.0.0.weight"
    assert grown == {enc0, dec0}
    for name in grown:
        assert p_c[name][1] == p_u[name][1] + 3
    # p(x|z, y=c) is the network with the first layer's bias moved by the weight's column D + c
    z = torch.randn(4, 4)
    first = dict(m.named_modules())[dec0[: -len(".weight")]]
    for c in range(3):
        with torch.no_grad():
            want_first = torch.nn.functional.linear(z, first.weight[:, :4], first.bias + first.weight[:, 4 + c])
            got_first = first(torch.cat([z, torch.nn.functional.one_hot(torch.full((4,), c), 3).float()], 1))
        torch.testing.assert_close(got_first, want_first)
    with torch.no_grad():  # the decoder's output for class c: same z, the c-th column only
        outs = [m.decode(z, c).mean for c in range(3)]
        assert torch.equal(m.decode(z, 1).mean, outs[1])  # same label, same output
        assert all((outs[i] - outs[j]).abs().max() > 1e-4 for i in range(3) for j in range(i))  # labels differ
        x = torch.rand(4, *m.shape)
        assert (m.encode(x, 0).mean - m.encode(x, 2).mean).abs().max() > 1e-4


def test_a_label_that_changes_only_its_column_changes_only_through_it():
    m = _cond(k=4)
    dec = m.decoder.net[0]
    z, y = torch.randn(3, 4), torch.tensor([3, 3, 3])
    before = m.decode(z, y).mean.detach()
    with torch.no_grad():
        dec.weight[:, 4 + 0] += 5.0  # class 0's column: class 3 does not use it
    torch.testing.assert_close(m.decode(z, y).mean, before, rtol=0, atol=0)
    with torch.no_grad():
        dec.weight[:, 4 + 3] += 5.0
    assert (m.decode(z, y).mean - before).abs().max() > 1e-3


def test_given_is_a_light_view_with_the_unconditional_interface():
    m = _cond(k=3, likelihood="gaussian")
    x, y = torch.rand(4, 1, 6, 5), torch.tensor([2, 0, 1, 2])
    v = m.given(y)
    assert not isinstance(v, torch.nn.Module) and not list(vars(v).get("_parameters", {}))
    assert set(map(id, v.parameters())) == set(map(id, m.parameters()))  # the model's own, nothing new
    assert v.prior is m.prior and v.is_vae and v.latent_dim == 4 and v.shape == (1, 6, 5) and v.config is m.config
    torch.testing.assert_close(v.encode(x).mu, m.encode(x, y).mu)
    z = torch.randn(7, 4, 4)
    torch.testing.assert_close(v.decode(z).mean, m.decode(z, y).mean)
    assert v.latent_sampler(2).shape == (2, 4)
    torch.manual_seed(0)
    a = v(x)[0]
    torch.manual_seed(0)
    torch.testing.assert_close(a, m(x, y)[0])


def test_conditional_autoencoder_samples_its_code_gaussian_under_a_label():
    ae = _cond("ae", k=3)
    ae.fit_code_gaussian(torch.randn(100, 4, generator=_gen(1)) + 2.0)
    s0, s1 = ae.sample(6, _gen(2), y=0), ae.sample(6, _gen(2), y=1)
    z = ae.latent_sampler(6, _gen(2))
    torch.testing.assert_close(s0, ae.decode(z, 0).mean)
    assert (s0 - s1).abs().max() > 1e-4


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda m, u, x, z: m.encode(x), "conditional (3 classes)"),
        (lambda m, u, x, z: m.decode(z), "conditional (3 classes)"),
        (lambda m, u, x, z: m(x), "conditional (3 classes)"),
        (lambda m, u, x, z: m.sample(2), "conditional (3 classes)"),
        (lambda m, u, x, z: m.given(None), "conditional (3 classes)"),
        (lambda m, u, x, z: m.decode(z, torch.tensor([0, 3])), "label 3 is outside this model's classes 0..2"),
        (lambda m, u, x, z: m.encode(x, torch.tensor([-1, 0])), "label -1 is outside"),
        (lambda m, u, x, z: m.given(10), "label 10 is outside"),
        (lambda m, u, x, z: m.encode(x, torch.tensor([0.0, 1.0])), "labels must be integers"),
        (lambda m, u, x, z: m.encode(x, torch.tensor([True, False])), "labels must be integers"),
        (lambda m, u, x, z: m.encode(x, "a"), "labels must be integers"),
        (lambda m, u, x, z: m.encode(x, torch.tensor([0, 1, 2])), "do not match examples of shape (2, 1, 6, 5)"),
        (lambda m, u, x, z: m.decode(torch.randn(5, 2, 4), torch.tensor([0, 1, 2])), "do not match codes"),
        (lambda m, u, x, z: u.encode(x, torch.tensor([0, 1])), "not conditional"),
        (lambda m, u, x, z: u.decode(z, 0), "not conditional"),
        (lambda m, u, x, z: u.given(torch.tensor([0, 1])), "not conditional"),
        (lambda m, u, x, z: u(x, torch.tensor([0, 1])), "not conditional"),
    ],
)
def test_bad_labels_are_one_line_errors(call, needle):
    m, u = _cond(k=3), _cond(k=0)
    with pytest.raises(VaekitError) as e:
        call(m, u, torch.rand(2, 1, 6, 5), torch.randn(2, 4))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


def test_an_unconditional_model_is_unchanged_by_the_conditional_machinery():
    """Same parameters, same numbers as before: num_classes 0 builds the networks with no extra input."""
    u = _cond(k=0)
    assert not u.conditional and u.num_classes == 0
    x = torch.rand(3, 1, 6, 5)
    with torch.no_grad():
        h = u.encoder.net(x.flatten(1))
    torch.testing.assert_close(u.encode(x).mu, h[:, :4])
