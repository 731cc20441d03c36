"""The hand-written step of the plain MLP VAE (mlp_step.MLPStep) against eager autograd + torch.optim.Adam
(steps.EagerStep, which differentiates the model's own training_loss): the same gradients to float32
rounding, the same weights, Adam state and sums after several steps; bf16 close to them; where it applies."""

import pytest
import torch
from conftest import train_alike

from vaekit.config import ModelConfig, TrainConfig
from vaekit.mlp_step import ACT, MLPStep, supported
from vaekit.models import LOGVAR_RANGE, build_model
from vaekit.steps import EagerStep, make_optimizer, make_step

CPU = torch.device("cpu")


def _pair(cfg: TrainConfig, activation="relu", hidden=(8, 6), extreme=False):
    out = []
    for kind in (EagerStep, MLPStep):
        torch.manual_seed(0)
        model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=hidden, latent_dim=3, activation=activation))
        if extreme:  # push some log-variances past both ends of LOGVAR_RANGE: the clamp's zero gradient
            with torch.no_grad():
                model.encoder.net[-1].bias[3] = LOGVAR_RANGE[1] + 30
                model.encoder.net[-1].bias[4] = LOGVAR_RANGE[0] - 30
        opt = make_optimizer(model, cfg)
        out.append((model, opt, kind(model, opt, cfg, CPU)))
    return out


def _batches(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [((torch.rand(6, 1, 4, 4, generator=g) > 0.5).float(), torch.randn(6, 3, generator=g)) for _ in range(n)]


@pytest.mark.parametrize("activation", sorted(ACT))
@pytest.mark.parametrize("extreme", [False, True])
def test_gradients_are_autograds(activation, extreme):
    cfg = TrainConfig(amp=False, compile=False)
    (m0, _, eager), (m1, _, mine) = _pair(cfg, activation, extreme=extreme)
    x, eps = _batches(1)[0]
    x[0] = torch.rand(1, 4, 4)  # grey pixels too: the Bernoulli loss is BCE on values in [0, 1]
    assert not eager(x, None, eps, 1e-2, 0.7).item()
    assert not mine(x, None, eps, 1e-2, 0.7).item()
    for (name, p0), p1 in zip(m0.named_parameters(), m1.parameters()):
        assert p1.grad is not None and p1.grad.dtype == torch.float32, name
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-5, atol=1e-6, msg=name)
    if extreme:  # the clamped dimensions pass no gradient to their bias
        assert m1.encoder.net[-1].bias.grad[3] == 0 and m1.encoder.net[-1].bias.grad[4] == 0


@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.1, "clip": 0.5}])
def test_steps_match_eager_autograd_and_adam(extra):
    cfg = TrainConfig(amp=False, compile=False, **extra)
    train_alike(_pair(cfg), _batches(), lambda i: 1e-2 * (i + 1), lambda i: 0.5 + 0.2 * i)


def test_without_eps_it_draws_the_noise_the_model_draws():
    cfg = TrainConfig(amp=False, compile=False)
    (m0, _, eager), (m1, _, mine) = _pair(cfg)
    x = _batches(1)[0][0]
    torch.manual_seed(7)
    eager(x, None, None, 1e-2, 1.0)
    torch.manual_seed(7)
    mine(x, None, None, 1e-2, 1.0)
    for p0, p1 in zip(m0.parameters(), m1.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-5, atol=1e-6)


def test_bf16_is_close_to_float32():
    """(bf16 matmuls run on any CPU, emulated where it has no native bf16: --amp refuses those for speed only.)"""
    x, eps = _batches(1)[0]
    grads, sums = {}, {}
    for amp in (False, True):
        (_, _, _), (m, _, step) = _pair(TrainConfig(amp=amp, compile=False), hidden=(64,))
        step(x, None, eps, 1e-2, 1.0)
        grads[amp] = torch.cat([p.grad.flatten() for p in m.parameters()])
        sums[amp] = torch.zeros(5, dtype=torch.float64)
        step.commit(sums[amp])
    assert torch.linalg.vector_norm(grads[True] - grads[False]) < 0.05 * torch.linalg.vector_norm(grads[False])
    torch.testing.assert_close(sums[True], sums[False], rtol=0.01, atol=0.0)


def test_a_non_finite_batch_is_reported_bad():
    (_, _, _), (_, _, mine) = _pair(TrainConfig(amp=False, compile=False))
    x, eps = _batches(1)[0]
    x[0, 0, 0, 0] = float("nan")
    assert mine(x, None, eps, 1e-2, 1.0).item()


@pytest.mark.parametrize(
    "model_kw,train_kw,world,expected",
    [
        ({}, {}, 1, True),
        ({"activation": "silu", "hidden": (5, 5, 5)}, {"clip": 1.0, "weight_decay": 0.1}, 1, True),
        ({}, {}, 2, False),  # DDP reduces the gradients between backward and the step
        ({}, {"iw_k": 2}, 1, False),
        ({}, {"free_bits": 0.1}, 1, False),
        ({"activation": "elu"}, {}, 1, False),
        ({"likelihood": "gaussian"}, {}, 1, False),
        ({"prior": "vamp"}, {}, 1, False),
        ({"latent_dim": (3, 2)}, {}, 1, False),
        ({"num_classes": 3}, {}, 1, False),
        ({"model": "ae"}, {}, 1, False),
    ],
)
def test_where_it_applies(model_kw, train_kw, world, expected):
    kw = {"input_shape": (1, 4, 4), "hidden": (8,), "latent_dim": 3} | model_kw
    model, cfg = build_model(ModelConfig(**kw)), TrainConfig(amp=False, compile=False, **train_kw)
    assert supported(model, cfg, world) is expected
    step = make_step(model, model, make_optimizer(model, cfg), cfg, CPU, world, 1.0)
    assert isinstance(step, MLPStep) is expected


def test_a_prior_given_to_the_model_is_what_trains():
    from vaekit.distributions import NormalPrior
    from vaekit.models import VAE

    base = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=3))
    shifted = NormalPrior(torch.ones(3), torch.zeros(3))  # N(1, I): not the KL the hand-written step computes
    model = VAE(base.config, base.encoder, base.decoder, base.likelihood, prior=shifted)
    assert supported(base, TrainConfig(), 1) and not supported(model, TrainConfig(), 1)


def test_a_forward_replaced_on_the_model_is_what_trains():
    model, cfg = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=3)), TrainConfig()
    model.forward = lambda x, **kw: type(model).forward(model, x, **kw)
    assert not supported(model, cfg, 1)
