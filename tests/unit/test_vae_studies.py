"""vae_studies (the VAE-only studies of the report) on small untrained models and synthetic data: the contrast
index, the shift study and how the report reads it, the gradient estimators' norms and noise. Each number checked
against a direct computation or a case with a known answer; the toy model and images are test_studies'."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_studies import SHAPE, FakeClassifier, images, tiny

from vaekit.studies import shift_right
from vaekit.vae_studies import contrast_index, read_shift, reparam_gradients, shift_study


def test_contrast_index():
    x = torch.zeros(5, *SHAPE)
    x[1] += 0.1  # nearest, but the same class as x[0]
    x[2] += 0.2  # nearest of another class
    x[3] += 0.5
    x[4] += 0.9
    assert contrast_index(x, None, None) == 1
    assert contrast_index(x, torch.tensor([7, 7, 1, 2, 3]), None) == 2

    class Only3:  # recognises example 3 alone as its own class
        def predict(self, xs):
            return torch.tensor([0, 0, 0, 2, 0])

    assert contrast_index(x, torch.tensor([7, 7, 1, 2, 3]), Only3()) == 3


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_shift_study(binarize):
    from vaekit.evaluate import log_likelihood

    m, x = tiny(binarize=binarize), images(2)
    st = shift_study(m, x[0], x[1], k=8, draws=3, seed=4)
    want = torch.stack([x[0], shift_right(x[0], 1), shift_right(x[0], 2), shift_right(x[0], 3), x[1]])
    torch.testing.assert_close(st["images"], want)
    np.testing.assert_allclose(st["mse"], ((want - x[0]) ** 2).flatten(1).mean(1).numpy(), rtol=1e-6)
    assert st["mse"][0] == 0 and len(st["logp"]) == 5
    again = shift_study(m, x[0], x[1], k=8, draws=3, seed=4)
    assert again["logp"] == st["logp"]
    if binarize == "none":  # one draw: log p of the greyscale images themselves
        ll = log_likelihood(m, want, 8, generator=torch.Generator().manual_seed(5)).double()
        np.testing.assert_allclose(st["logp"], ll.numpy(), rtol=1e-6)


def test_read_shift():
    st = {"mse": [0.0, 0.01, 0.05, 0.08, 0.04], "logp": [-50.0, -60.0, -70.0, -90.0, -55.0], "images": images(5)}
    rd = read_shift(st, None)
    assert rd.first_worse == 2 and rd.logp_drop == 40.0 and rd.label is None and rd.same_label is None
    assert read_shift({**st, "mse": [0.0, 0.01, 0.02, 0.03, 0.04]}, None).first_worse is None
    clf = FakeClassifier()
    rd = read_shift(st, clf)
    assert rd.label == clf.predict(st["images"]).tolist()
    assert rd.confidence == pytest.approx(clf.predict_proba(st["images"]).max(-1).values.tolist())
    assert rd.same_label == (len(set(rd.label[:4])) == 1)


def test_reparam_gradients():
    m, x = tiny(), images(20)
    r = reparam_gradients(m, x, draws=4, seed=0)
    assert r["detached"]["norm"] == 0.0 and r["detached"]["rel_std"] is None  # no path from z to the encoder
    assert r["reparam"]["norm"] > 0 and r["score"]["norm"] > 0
    assert r["noise_ratio"] == pytest.approx(r["score"]["rel_std"] / r["reparam"]["rel_std"])
    # the KL's gradient, from the closed form 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)
    params = [p for p in m.encoder.parameters()]
    q = m.encode(x)
    kl = 0.5 * (q.mean**2 + q.stddev**2 - 1 - 2 * q.stddev.log()).sum(1).mean()
    g = torch.cat([t.flatten() for t in torch.autograd.grad(kl, params)])
    assert r["kl_norm"] == pytest.approx(float(g.norm()), rel=1e-4)
    # one draw: the mean of draws is that draw, so its norm is the single-sample gradient's, its spread 0
    one = reparam_gradients(m, x, draws=1, seed=7)
    torch.manual_seed(7)
    q = m.encode(x)
    g = torch.cat([t.flatten() for t in torch.autograd.grad(m.decode(q.rsample()).log_prob(x).mean(), params)])
    assert one["reparam"]["norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert one["reparam"]["rel_std"] == 0.0 and math.isnan(one["noise_ratio"])
