"""Paths, grids and planes in latent space: linear and spherical interpolation, the 2-D manifold grid, the
principal plane of a set of codes (the report's scatters and the explorer's map both use `pca`)."""

from __future__ import annotations

import torch


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """`steps` points from z0 to z1 (both (D,)), ends included: (steps, D).

    Spherical (slerp, Shoemake 1985) keeps the norm near that of typical N(0, I) draws, where a straight
    line through the origin region passes through codes of unusually small norm.
    """
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device).unsqueeze(1)  # (steps, 1)
    if not spherical:
        return (1 - t) * z0 + t * z1
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    if omega.abs() < 1e-4:  # nearly parallel: slerp degenerates to lerp
        return (1 - t) * z0 + t * z1
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def normal_grid(n: int, lo: float = 0.05, hi: float = 0.95) -> torch.Tensor:
    """An n x n grid of 2-D codes through the inverse normal CDF of evenly spaced quantiles: (n*n, 2),
    row-major with the second coordinate decreasing down the rows (the classic manifold figure)."""
    q = torch.linspace(lo, hi, n, dtype=torch.float64)
    v = torch.distributions.Normal(0.0, 1.0).icdf(q).float()
    ys, xs = torch.meshgrid(v.flip(0), v, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def pca(z: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k principal axes of codes z (N, D), 1 <= k <= min(N, D): their mean (D,), an orthonormal
    basis (k, D) (one axis per row, by decreasing variance) and the share of the total variance along
    each axis (k,). Project with (z - mean) @ basis.T -> (N, k).

    An exact SVD of the centred codes (computed in float64, returned in z's dtype): codes have a few to a
    few hundred dimensions, so it is cheap, and unlike a randomised low-rank solver it needs no seed.
    Signs as scikit-learn's PCA fixes them: each axis' largest-magnitude loading is positive, so the same
    codes always give the same picture.
    """
    n, d = z.shape
    if not 1 <= k <= min(n, d):
        raise ValueError(f"pca: k must be in 1..min(N, D) = {min(n, d)} for codes of shape {tuple(z.shape)}, got {k}")
    z64 = z.detach().double()
    mean = z64.mean(0)
    _, s, vh = torch.linalg.svd(z64 - mean, full_matrices=False)  # s (min(N, D),), vh (min(N, D), D)
    basis = vh[:k]
    basis = basis * torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
    share = s[:k] ** 2 / (s**2).sum().clamp_min(1e-300)
    return mean.to(z.dtype), basis.to(z.dtype), share.to(z.dtype)
