"""Every random stream vaekit draws, derived from the one user seed, in one place.

Changing a formula here changes every number downstream (and breaks exact resume of older runs): don't.
"""

from __future__ import annotations


def weights(seed: int) -> int:
    """The initial weights (the same on every rank) and the validation split."""
    return seed


def noise(seed: int) -> int:
    """The reparameterization noise of training: one stream, the same on every rank (each draws the global
    batch's noise and keeps its rows, so DDP draws what one process does)."""
    return seed


def order(seed: int) -> int:
    """The data order (the same on every rank)."""
    return seed


def binarize(seed: int) -> int:
    """Dynamic binarization of the training batches (the same on every rank)."""
    return seed * 1009 + 17


def static_train(seed: int) -> int:
    """The one fixed draw of --binarize static, training split."""
    return seed


def static_val(seed: int) -> int:
    """The one fixed draw of --binarize static, validation split."""
    return seed + 1


def val_noise(seed: int) -> int:
    """The ELBO's sample in validation (fixed, so epochs are comparable; one stream shared by the ranks)."""
    return seed + 12345


def val_binarize(seed: int) -> int:
    """The binarization of the validation set (fixed, so epochs are comparable)."""
    return seed + 2


def importance(seed: int) -> int:
    """The importance samples of an evaluation or a report study seeded by `seed` (the ELBO's sample and
    the binarization use `seed` itself)."""
    return seed + 1


def generated(seed: int) -> int:
    """The report's generated digits (prior draws of every model, the same for each)."""
    return seed + 1


def pseudo_inputs(seed: int) -> int:
    """Which training examples a VampPrior's pseudo-inputs start from, and their noise (priors.py)."""
    return seed * 7919 + 101
