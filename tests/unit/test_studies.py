"""studies (the report's studies of any model) on small untrained models and synthetic data: each number checked
against a direct computation or a case with a known answer. No training, no dataset. The VAE-only studies:
test_vae_studies."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.latent import interpolate, normal_grid
from vaekit.models import build_model
from vaekit.studies import (
    PAIR_LABELS,
    QUICK,
    compare_generation,
    compare_interp,
    interp_study,
    manifold_study,
    pair_indices,
    path_smoothness,
    reconstruction_mse,
    shift_right,
)

SHAPE = (1, 6, 6)


def tiny(model: str = "vae", latent_dim: int = 3, binarize: str = "none", seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(model=model, input_shape=SHAPE, latent_dim=latent_dim, hidden=(16,))
    m = build_model(cfg).eval()
    m.run_config = RunConfig(cfg, TrainConfig(binarize=binarize))
    return m


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


class FakeClassifier:
    """predict_proba: a softmax of a fixed random linear map of the pixels (10 classes)."""

    def __init__(self, seed: int = 2):
        self.w = torch.randn(math.prod(SHAPE), 10, generator=torch.Generator().manual_seed(seed))

    def predict_proba(self, x):
        return torch.softmax(x.flatten(1) @ self.w, -1)

    def predict(self, x):
        return self.predict_proba(x).argmax(-1)


def test_path_smoothness_and_shift_right():
    frames = images(5)
    want = [np.abs(frames[t + 1].numpy() - frames[t].numpy()).mean() for t in range(4)]
    np.testing.assert_allclose(path_smoothness(frames).numpy(), want, rtol=1e-6)
    x = images(2)
    for s in (0, 1, 3):
        want = np.roll(x.numpy(), s, axis=-1)
        want[..., :s] = 0
        np.testing.assert_array_equal(shift_right(x, s).numpy(), want)
    assert shift_right(x, 0) is not x


def test_reconstruction_mse_across_batches():
    m, x = tiny(), images(2500)  # three batches of 1000
    with torch.no_grad():
        want = ((m.decode(m.encode(x).mean).mean.double() - x.double()) ** 2).mean()
    assert reconstruction_mse(m, x) == pytest.approx(float(want), rel=1e-5)


def test_pair_indices():
    y = torch.tensor([0, 5, 1, 3, 9, 6, 4, 1])
    # (1, 0): first 1 is 2, first 0 is 0; (3, 6): 3 and 5; (4, 9): 6 and 4
    assert pair_indices(y, 3, len(y)) == [(2, 0), (3, 5), (6, 4)]
    assert pair_indices(y, 3, 4) == [(2, 0)]  # only the first 4 examples count
    assert pair_indices(None, 2, 10) == [(0, 1), (2, 3)]
    assert len(PAIR_LABELS) >= QUICK.pairs


def test_interp_study_numbers():
    ae, vae = tiny("ae", seed=1), tiny("vae", seed=2)
    main = [type("E", (), {"name": n, "model": m})() for n, m in (("ae", ae), ("vae", vae))]
    x, y = images(40), torch.arange(40) % 10
    clf = FakeClassifier()
    st = interp_study(main, clf, x, y, QUICK)
    assert st.pairs == pair_indices(y, QUICK.pairs, 40) and len(st.paths) == len(st.pairs)
    for (i, j), row in zip(st.pairs, st.paths):
        assert [(p.name, p.mode) for p in row] == [(n, m) for n in ("ae", "vae") for m in ("linear", "spherical")]
        for p, e in zip(row, [main[0], main[0], main[1], main[1]]):
            with torch.no_grad():
                z = e.model.encode(x[[i, j]]).mean
                frames = e.model.decode(interpolate(z[0], z[1], QUICK.steps, p.mode == "spherical")).mean
            torch.testing.assert_close(p.frames, frames)
            torch.testing.assert_close(p.confidence, clf.predict_proba(frames).max(-1).values)
    for (name, mode), m in st.summary.items():
        ch = np.concatenate([p.change.numpy() for row in st.paths for p in row if (p.name, p.mode) == (name, mode)])
        cf = np.concatenate([p.confidence.numpy() for row in st.paths for p in row if (p.name, p.mode) == (name, mode)])
        assert len(ch) == QUICK.pairs * (QUICK.steps - 1)
        assert m["mean_change"] == pytest.approx(ch.mean()) and m["max_change"] == pytest.approx(ch.max())
        assert m["max_over_mean"] == pytest.approx(ch.max() / ch.mean())
        assert m["min_confidence"] == pytest.approx(cf.min()) and m["mean_confidence"] == pytest.approx(cf.mean())
    assert all(m["mean_confidence"] is None for m in interp_study(main, None, x, y, QUICK).summary.values())


def test_compare_interp_and_generation_known_answers():
    def row(r, c):
        return {"max_over_mean": r, "min_confidence": c}

    s = {("a", "linear"): row(3.0, 0.4), ("v", "linear"): row(1.5, 0.6)}
    s |= {("a", "spherical"): row(1.0, 0.9), ("v", "spherical"): row(2.0, 0.5)}
    cmp = compare_interp(s, "a", "v")
    assert cmp["wins"] == 2 and cmp["n"] == 4
    assert cmp["modes"]["linear"] == {
        "ratio_ae": 3.0,
        "ratio_vae": 1.5,
        "min_confidence_ae": 0.4,
        "min_confidence_vae": 0.6,
    }
    s = {k: row(v["max_over_mean"], None) for k, v in s.items()}
    assert compare_interp(s, "a", "v") | {"modes": None} == {"modes": None, "wins": 1, "n": 2}

    a = {"frechet": 9.0, "confidence": 0.8, "coverage": 0.9}
    v = {"frechet": 3.0, "confidence": 0.7, "coverage": 0.95}
    g = compare_generation(a, v)
    assert g["vae_wins"] == {"frechet": True, "confidence": False, "coverage": True} and g["wins"] == 2
    assert g["frechet_gap"] == 6.0 and g["frechet_ratio"] == 3.0 and g["confidence_gap"] == pytest.approx(0.1)
    assert compare_generation(a, {**v, "frechet": 0.0})["frechet_ratio"] == math.inf


def test_manifold_study():
    m, x = tiny(latent_dim=2), images(300)
    st = manifold_study(m, x, QUICK)
    n = QUICK.manifold_n
    want = [statistics.NormalDist().inv_cdf(q) for q in np.linspace(0.05, 0.95, n)]
    np.testing.assert_allclose(st.axis, want, rtol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(st.images, m.decode(normal_grid(n)).mean)
        z = m.encode(x).mean.numpy()
    np.testing.assert_allclose(st.z, z, rtol=1e-6)
    assert st.inside == pytest.approx(np.mean([abs(a) <= want[-1] and abs(b) <= want[-1] for a, b in z]))
