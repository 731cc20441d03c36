"""The reference classifier and the scores it gives generated digits: Frechet distance on known answers,
class coverage, a short real training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from vaekit.classifier import (
    Classifier,
    ClassifierConfig,
    accuracy,
    class_coverage,
    feature_frechet,
    fit_classifier,
    frechet_distance,
    generation_scores,
    is_classifier_folder,
    load_classifier,
    train_classifier,
)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _frechet_scipy(m1, c1, m2, c2):
    """The textbook formula with scipy's general matrix square root (the oracle)."""
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    m, c = rng.normal(size=8), _random_cov(rng, 8)
    assert frechet_distance(m, c, m, c) == pytest.approx(0.0, abs=1e-8)


def test_frechet_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_diagonal_closed_form():
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    want = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(m1, np.diag(s1**2), m2, np.diag(s2**2)) == pytest.approx(want)


def test_frechet_shift_only_is_squared_mean_distance():
    rng = np.random.default_rng(1)
    c = _random_cov(rng, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    assert frechet_distance(m1, c, m2, c) == pytest.approx(((m1 - m2) ** 2).sum(), rel=1e-7, abs=1e-7)


def test_frechet_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(2)
    m1, m2 = rng.normal(size=16), rng.normal(size=16)
    c1, c2 = _random_cov(rng, 16), _random_cov(rng, 16)
    d = frechet_distance(m1, c1, m2, c2)
    assert d == pytest.approx(_frechet_scipy(m1, c1, m2, c2), rel=1e-6)
    assert d == pytest.approx(frechet_distance(m2, c2, m1, c1), rel=1e-9)


def test_frechet_singular_covariance_is_finite():
    # rank-deficient covariances (fewer samples than features) must not give NaN or a negative distance
    f = np.random.default_rng(3).normal(size=(5, 20))
    c = np.cov(f, rowvar=False)
    d = frechet_distance(f.mean(0), c, f.mean(0) + 1.0, c)
    assert np.isfinite(d) and d == pytest.approx(20.0, rel=1e-5)


def test_feature_frechet_from_samples_approaches_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) * 2.0 + torch.tensor([1.0, 0.0, 0.0])
    # means differ by 1 in one dim; each sd differs by 1 in all three: 1 + 3 * (2 - 1)^2 = 4
    assert feature_frechet(a, b) == pytest.approx(4.0, rel=0.05)


def test_class_coverage():
    assert class_coverage(torch.arange(10).repeat(5), 10) == pytest.approx(1.0)
    assert class_coverage(torch.full((50,), 3), 10) == pytest.approx(0.1)
    assert class_coverage(torch.tensor([0, 1] * 10), 10) == pytest.approx(0.2)


def test_classifier_shapes():
    c = Classifier(ClassifierConfig(hidden=(32, 16)))
    x = torch.rand(7, 1, 28, 28)
    assert c(x).shape == (7, 10)
    assert c.features(x).shape == (7, 16)
    p = c.predict_proba(x)
    assert p.shape == (7, 10) and torch.allclose(p.sum(-1), torch.ones(7))
    assert c.predict(x).shape == (7,) and c.predict(x).dtype == torch.int64


def test_classifier_learns_mnist_slice(mnist_train):
    """Three epochs on 3000 real training digits already classify held-out test digits well."""
    import vaekit

    test = vaekit.data.load("mnist", "test").subset(slice(0, 1000))
    cfg = ClassifierConfig(epochs=3)
    torch.manual_seed(cfg.seed)  # the initial weights; otherwise they depend on which tests ran first
    model = Classifier(cfg)
    rows = fit_classifier(model, mnist_train.subset(slice(0, 3000)), cfg, test=test)
    assert len(rows) == 3 and rows[2]["train_loss"] < rows[0]["train_loss"]
    assert accuracy(model, test) > 0.85
    s = generation_scores(model, test.batch(slice(0, 300)), test.batch(slice(300, 600)))
    assert s["confidence"] > 0.7 and s["coverage"] > 0.8 and s["frechet"] >= 0 and sum(s["label_counts"]) == 300


@pytest.mark.slow  # train_classifier trains on real MNIST
def test_classifier_folder_round_trip_and_resume(tmp_path):
    out = tmp_path / "clf"
    model = train_classifier(ClassifierConfig(epochs=1, limit=2000, hidden=(64, 32)), out)
    assert is_classifier_folder(out) and {"config.json", "model.safetensors", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    assert "classifier" in json.loads((out / "config.json").read_text())
    loaded = load_classifier(out)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded.predict_proba(x), model.predict_proba(x))
    assert 0.5 < loaded.test_accuracy <= 1.0
    # more epochs on resume: the first epoch's row is kept, a second is added
    first = (out / "metrics.jsonl").read_text().splitlines()
    train_classifier(ClassifierConfig(epochs=2, limit=2000, hidden=(64, 32)), out, resume=True)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and rows[0] == first[0]
