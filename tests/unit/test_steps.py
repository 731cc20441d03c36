"""steps: the learning-rate schedules (constant, cosine, step) at chosen steps and epochs, and over a time budget."""

from __future__ import annotations

import math

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


def test_with_a_time_budget_the_cosine_runs_over_elapsed_seconds():
    """From lr at 0 s to half at half the budget to 0 at (and after) it, whatever the step; the other schedules
    and a run without a budget ignore the clock."""
    cos = TrainConfig(lr=0.1, schedule="cosine", time_budget="1m")
    assert [S.learning_rate(cos, 7, 100, 0, t) for t in (0.0, 30.0, 60.0, 90.0)] == pytest.approx(
        [0.1, 0.05, 0.0, 0.0], abs=1e-12
    )
    assert S.learning_rate(cos, 99, 100, 9, 15.0) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert S.learning_rate(TrainConfig(lr=0.1, schedule="cosine"), 50, 100, 5, 1e9) == pytest.approx(0.05)
    assert S.learning_rate(TrainConfig(lr=0.1, time_budget="2s"), 50, 100, 5, 1.0) == 0.1
    step = TrainConfig(lr=0.1, schedule="step", step_every=2, time_budget="1h")
    assert S.learning_rate(step, 0, 100, 4, 3000.0) == 0.025
