"""vaekit.latent.pca, the one PCA of the report's scatters and the explorer's map, against two oracles:
numpy's SVD of the centred data and scikit-learn's PCA (synthetic codes, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from vaekit.latent import pca


def codes(n: int = 500, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Correlated Gaussian codes with distinct variances along their axes, away from the origin."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.linspace(3.0, 0.1, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales @ a + 5.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pca_matches_numpy_svd(k):
    z = codes()
    mean, basis, share = pca(z, k)
    x = z.numpy()
    c = x - x.mean(0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-12)
    # the same axes up to sign; our sign: the largest-magnitude loading of each axis is positive
    for i in range(k):
        v = vt[i] * np.sign(vt[i][np.abs(vt[i]).argmax()])
        np.testing.assert_allclose(basis[i].numpy(), v, atol=1e-10)
        assert basis[i][basis[i].abs().argmax()] > 0
    np.testing.assert_allclose(share.numpy(), s[:k] ** 2 / (s**2).sum(), rtol=1e-10)
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(k), atol=1e-12)


def test_pca_matches_scikit_learn_projection():
    z = codes(seed=3).float()  # the codes the report and the app pass: float32
    mean, basis, share = pca(z, 2)
    assert mean.dtype == basis.dtype == share.dtype == torch.float32
    ref = PCA(2, svd_solver="full").fit(z.numpy().astype(np.float64))
    np.testing.assert_allclose(share.numpy(), ref.explained_variance_ratio_, rtol=1e-5)
    ours = ((z - mean) @ basis.T).numpy()
    theirs = ref.transform(z.numpy().astype(np.float64))
    for i in range(2):  # scikit-learn's sign convention is the same in recent versions; compare up to sign
        sign = np.sign(ours[:, i] @ theirs[:, i])
        np.testing.assert_allclose(ours[:, i], sign * theirs[:, i], atol=1e-3)


def test_pca_is_deterministic_and_shift_invariant():
    z = codes(seed=5)
    a, b = pca(z), pca(z + 100.0)
    torch.testing.assert_close(a[1], b[1], atol=1e-9, rtol=0)
    torch.testing.assert_close(a[2], b[2], atol=1e-9, rtol=0)
    torch.testing.assert_close(pca(z)[1], a[1], atol=0, rtol=0)
    # flipping the data flips no axis: the sign rule depends on the axis, not the data's orientation
    torch.testing.assert_close(pca(-z)[1], a[1], atol=1e-9, rtol=0)


def test_pca_constant_codes_and_bad_k():
    mean, basis, share = pca(torch.ones(10, 4), 2)
    assert torch.equal(mean, torch.ones(4)) and torch.equal(share, torch.zeros(2))
    torch.testing.assert_close(basis @ basis.T, torch.eye(2))
    for k in (0, 5):
        with pytest.raises(ValueError, match="k must be"):
            pca(torch.randn(10, 4), k)
    with pytest.raises(ValueError, match="k must be"):
        pca(torch.randn(1, 4), 2)
