"""networks: MLP and convolutional encoders/decoders sized from the input shape (models.py composes them:
test_models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaekit.networks import ACTIVATIONS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, conv_sizes, mlp

CONV_SHAPES = [(1, 28, 28), (3, 32, 32), (1, 7, 9), (3, 64, 48), (1, 5, 5), (4, 9, 30), (2, 8, 8)]


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv_encoder_decoder_shapes(shape):
    torch.manual_seed(0)
    enc = ConvEncoder(shape, (8, 16, 32), (24,), 10, "relu")
    dec = ConvDecoder(shape, (8, 16, 32), (24,), 5, "relu")
    x = torch.rand(3, *shape)
    assert enc(x).shape == (3, 10)
    assert dec(torch.randn(4, 5)).shape == (4, *shape)


def test_conv_downsamples_only_while_the_image_is_large_enough():
    enc = ConvEncoder((1, 5, 5), (8, 16), (), 4, "relu")
    assert not any(isinstance(l, nn.Conv2d) for l in enc.conv)  # 5x5: no stride-2 layer
    enc = ConvEncoder((1, 28, 28), (8, 16, 32), (), 4, "relu")
    assert sum(isinstance(l, nn.Conv2d) for l in enc.conv) == 2  # 28 -> 14 -> 7, stops at < 8
    assert conv_sizes(7, 9, 2) == [(7, 9), (4, 5), (2, 3)]


def test_mlp_layers_depth_width_activation():
    net = mlp([5, 7, 3, 2], "tanh")
    kinds = [type(l) for l in net]
    assert kinds == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert [l.out_features for l in net if isinstance(l, nn.Linear)] == [7, 3, 2]
    enc, dec = MLPEncoder((1, 4, 4), (9, 5), 6, "elu"), MLPDecoder((1, 4, 4), (9, 5), 3, "elu")
    assert [l.out_features for l in enc.net if isinstance(l, nn.Linear)] == [9, 5, 6]
    assert [l.out_features for l in dec.net if isinstance(l, nn.Linear)] == [5, 9, 16]  # mirrored
    for name in ACTIVATIONS:
        assert mlp([2, 3, 1], name)(torch.randn(4, 2)).shape == (4, 1)
