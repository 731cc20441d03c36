"""The compiled whole step's arithmetic (fused_step.FusedStep, run uncompiled here: the same function torch.compile
traces) against eager autograd + torch.optim.Adam (steps.EagerStep): same weights, Adam state and sums."""

import pytest
import torch
from conftest import train_alike

from vaekit.config import ModelConfig, TrainConfig
from vaekit.fused_step import FusedStep, supported
from vaekit.models import build_model
from vaekit.steps import EagerStep, make_optimizer

CPU = torch.device("cpu")


def _pair(cfg: TrainConfig):
    out = []
    for kind in (EagerStep, FusedStep):
        torch.manual_seed(0)
        model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=2))
        opt = make_optimizer(model, cfg)
        step = EagerStep(model, opt, cfg, CPU) if kind is EagerStep else FusedStep(model, opt, cfg, CPU, compile=False)
        out.append((model, opt, step))
    return out


@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.1, "clip": 0.5}, {"beta": 0.3, "free_bits": 0.1}])
def test_fused_step_matches_eager_autograd_and_adam(extra):
    cfg = TrainConfig(amp=False, compile=False, **extra)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(6, 1, 4, 4, generator=g), torch.randn(6, 2, generator=g)) for _ in range(3)]
    train_alike(_pair(cfg), batches, lambda i: 1e-2 * (i + 1), lambda i: cfg.beta)


def test_a_non_finite_step_changes_nothing():
    cfg = TrainConfig(amp=False, compile=False)
    (_, _, eager), (model, opt, step) = _pair(cfg)
    sums = torch.zeros(5, dtype=torch.float64)
    step(torch.rand(6, 1, 4, 4), None, torch.randn(6, 2), 1e-2, 1.0)
    step.commit(sums)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}
    x = torch.rand(6, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    assert step(x, None, torch.randn(6, 2), 1e-2, 1.0).item()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in opt.state_dict()["state"].items():
        for n, t in v.items():
            assert torch.equal(t, state[k][n]), (k, n)


def test_the_fused_step_applies_to_one_process_and_the_standard_estimator():
    assert supported(TrainConfig(), 1)
    assert not supported(TrainConfig(), 2)
    assert not supported(TrainConfig(iw_k=4, estimator="dreg"), 1)
