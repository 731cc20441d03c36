"""steps: the learning-rate schedules (constant, cosine, step) at chosen steps and epochs."""

from __future__ import annotations

import pytest

import vaekit.steps as S
from vaekit.config import TrainConfig


def test_learning_rate_schedules():
    cfg = TrainConfig(lr=0.1)
    assert [S.learning_rate(cfg, s, 100, s // 10) for s in (0, 50, 99)] == [0.1, 0.1, 0.1]
    cos = TrainConfig(lr=0.1, schedule="cosine")
    assert S.learning_rate(cos, 0, 100, 0) == 0.1
    assert S.learning_rate(cos, 50, 100, 5) == pytest.approx(0.05)
    assert S.learning_rate(cos, 100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(lr=0.1, schedule="step", step_every=2)
    assert [S.learning_rate(step, 0, 100, e) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
