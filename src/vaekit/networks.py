"""Encoders and decoders: MLP and convolutional, sized from the input shape.

An encoder maps x (B, *shape) to a flat vector (B, out_dim); a decoder maps
z (N, D) to one parameter per input value (N, *shape) -- logits or means; the
likelihood turns those into a distribution.

Conditioning (a conditional VAE, `n_cond` > 0 classes): a one-hot label c (B, n_cond) is concatenated to
the input of the first dense layer -- the flattened x of the MLP encoder, the flattened conv features
before the conv encoder's MLP head, z in both decoders. A one-hot vector into a Linear layer adds that
layer's column for the class to its pre-activation: a learned per-class embedding, with no width to
choose (Sohn et al. 2015). With n_cond = 0 (and c None) the networks are the unconditional ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def _cat(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """h (N, F) with the one-hot labels c (N, K) appended, (N, F + K); h itself when c is None."""
    return h if c is None else torch.cat([h, c.to(h.dtype)], dim=-1)


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of `sizes` with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: tuple[int, ...], out_dim: int, activation: str, n_cond: int = 0):
        super().__init__()
        self.net = mlp([math.prod(shape) + n_cond, *hidden, out_dim], activation)

    def forward(self, x, c=None):  # (B, *shape), c (B, n_cond) or None -> (B, out_dim)
        return self.net(_cat(x.flatten(1), c))


class MLPDecoder(nn.Module):
    def __init__(
        self, shape: tuple[int, ...], hidden: tuple[int, ...], latent_dim: int, activation: str, n_cond: int = 0
    ):
        super().__init__()
        self.shape = tuple(shape)
        self.net = mlp([latent_dim + n_cond, *reversed(hidden), math.prod(shape)], activation)

    def forward(self, z, c=None):  # (N, D), c (N, n_cond) or None -> (N, *shape)
        return self.net(_cat(z, c)).view(-1, *self.shape)


def conv_sizes(h: int, w: int, n_down: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2, kernel-3, padding-1 convolution: ceil(s / 2) each time."""
    sizes = [(h, w)]
    for _ in range(n_down):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def n_downsamples(h: int, w: int, max_down: int) -> int:
    """As many halvings as keep the smaller side at 4 pixels or more, at most `max_down`."""
    n = 0
    while n < max_down and min(h, w) >= 8:
        h, w = (h + 1) // 2, (w + 1) // 2
        n += 1
    return n


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions (one per entry of `channels`, fewer for small inputs), then an MLP head."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        channels: tuple[int, ...],
        hidden: tuple[int, ...],
        out_dim: int,
        activation: str,
        n_cond: int = 0,
    ):
        super().__init__()
        c, h, w = shape
        n = n_downsamples(h, w, len(channels))
        layers: list[nn.Module] = []
        for c_out in channels[:n]:
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            c = c_out
        self.conv = nn.Sequential(*layers)
        fh, fw = conv_sizes(h, w, n)[-1]
        self.head = mlp([c * fh * fw + n_cond, *hidden, out_dim], activation)

    def forward(self, x, c=None):  # (B, C, H, W), c (B, n_cond) or None -> (B, out_dim)
        return self.head(_cat(self.conv(x).flatten(1), c))


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder: an MLP to a small feature map, then stride-2 transposed convolutions
    whose output padding restores the exact input size (odd sizes included)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        channels: tuple[int, ...],
        hidden: tuple[int, ...],
        latent_dim: int,
        activation: str,
        n_cond: int = 0,
    ):
        super().__init__()
        c, h, w = shape
        n = n_downsamples(h, w, len(channels))
        sizes = conv_sizes(h, w, n)
        chans = list(channels[:n])
        c0 = chans[-1] if chans else c
        self.start = (c0, *sizes[-1])
        self.head = nn.Sequential(
            mlp([latent_dim + n_cond, *reversed(hidden), math.prod(self.start)], activation), ACTIVATIONS[activation]()
        )
        layers: list[nn.Module] = []
        outs = list(reversed(chans[:-1])) + [c] if n else []
        for i, c_out in enumerate(outs):
            (hi, wi), (ho, wo) = sizes[n - i], sizes[n - i - 1]
            pad = (ho - (2 * hi - 1), wo - (2 * wi - 1))  # 0 or 1 on each axis
            layers.append(nn.ConvTranspose2d(c0, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < len(outs) - 1:
                layers.append(ACTIVATIONS[activation]())
            c0 = c_out
        if n == 0:  # input too small to downsample: one same-size convolution
            layers = [nn.Conv2d(c0, c, 3, padding=1)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z, c=None):  # (N, D), c (N, n_cond) or None -> (N, C, H, W)
        return self.deconv(self.head(_cat(z, c)).view(-1, *self.start))
