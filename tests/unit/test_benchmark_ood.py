"""benchmarks/ood.py's metrics: the FPR at 95% TPR, AUROC and AUPRC against hand-computed cases, and the FPR
against sklearn's ROC curve on random scores with ties, the upside-down pairs' ceiling by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ood

IN = [0.1, 0.2, 0.3, 0.4]
OUT = [0.25, 0.35, 0.5, 0.6]


@pytest.mark.parametrize(
    "tpr, fpr",
    [
        (0.95, 0.5),  # ceil(3.8) = 4: all four OOD scores flagged, t = 0.25; 0.3 and 0.4 of IN are >= t
        (0.75, 0.25),  # 3 flagged, t = 0.35; only 0.4
        (0.5, 0.0),  # 2 flagged, t = 0.5; none
        (0.25, 0.0),
    ],
)
def test_fpr_at_tpr_by_hand(tpr, fpr):
    assert ood.fpr_at_tpr(IN, OUT, tpr) == fpr


def test_fpr_at_tpr_ties_count_as_flagged():
    assert ood.fpr_at_tpr([1.0, 1.0, 0.0], [1.0, 2.0]) == pytest.approx(2 / 3)


def test_fpr_at_tpr_matches_sklearn_roc_curve():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.integers(0, 30, 500).astype(float), rng.integers(10, 40, 300).astype(float)  # many ties
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(500), np.ones(300)], np.r_[s_in, s_out])
    assert ood.fpr_at_tpr(s_in, s_out, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)])


def test_separation_by_hand():
    m = ood.separation(IN, OUT)
    assert m["auroc"] == pytest.approx(13 / 16)  # OOD above IN in 2 + 3 + 4 + 4 of the 16 pairs
    # ranked: o o i o i o i i -> precision at each OOD example 1, 1, 3/4, 4/6, averaged
    assert m["auprc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert m["fpr95"] == 0.5


def test_flip_ceiling_by_hand():
    """The upside-down set is the in-distribution set flipped, example for example: the ratio statistic is
    nll(x) - nll(flip x) for inliers and its negation for their flips; per label, the score's AUROC of that
    label's flipped images against every inlier."""
    import torch

    s_in = {"nll": np.array([1.0, 2.0, 5.0]), "score": np.array([0.0, 1.0, 2.0])}
    s_out = {"nll": np.array([3.0, 1.0, 5.0]), "score": np.array([3.0, 0.5, 1.5])}
    r = ood.flip_ceiling(s_in, s_out, torch.tensor([0, 1, 1]))
    # in: -2, 1, 0; out: 2, -1, 0 -> pairs out > in: 2 beats all 3, -1 beats -2, 0 beats -2 and ties 0 (half)
    assert r["flip_lr_auroc"] == pytest.approx((3 + 1 + 1.5) / 9)
    assert r["score_auroc_per_label"] == {0: 1.0, 1: pytest.approx((1 + 2) / 6)}
