"""Paths and grids in latent space: linear and spherical interpolation, the 2-D manifold grid."""

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
