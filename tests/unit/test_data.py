"""data (the package): Dataset batches by index, tensor or mask, and dynamic binarization as a Bernoulli draw."""

from __future__ import annotations

import vaekit.data

# ---------------------------------------------------------------------------- fetching


def test_dynamic_binarization_is_a_bernoulli_draw():
    """binarize(x) draws each pixel 1 with probability x (oracle: the Bernoulli mean within 4 standard errors,
    and the exact ends 0 and 1), reproducibly from the generator's state, and matches a Dataset batch's
    shape and dtype."""
    import torch

    p = torch.tensor([0.0, 1 / 255, 0.05, 0.3, 0.5, 0.77, 254 / 255, 1.0])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    draws = vaekit.data.binarize(p.expand(n, -1).contiguous(), g)
    assert draws.dtype == torch.float32 and draws.shape == (n, len(p))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    mean = draws.mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert ((mean - p).abs() <= 4 * se + 1e-12).all(), (mean, p)
    assert mean[0] == 0 and mean[-1] == 1
    again = vaekit.data.binarize(p.expand(n, -1).contiguous(), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    other = vaekit.data.binarize(p.expand(n, -1).contiguous(), torch.Generator().manual_seed(1))
    assert not torch.equal(draws, other)


def test_batch_by_index_tensor_matches_plain_indexing():
    import torch

    x = torch.randint(0, 256, (50, 1, 4, 3), dtype=torch.uint8)
    ds = vaekit.data.Dataset(x, None, "t")
    idx = torch.tensor([3, 0, 49, 3])
    torch.testing.assert_close(ds.batch(idx), x[idx].float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(ds.batch(slice(2, 5)), x[2:5].float() / 255, rtol=0, atol=0)
    mask = torch.zeros(50, dtype=torch.bool)
    mask[[1, 7]] = True
    torch.testing.assert_close(ds.batch(mask), x[mask].float() / 255, rtol=0, atol=0)


def test_num_classes_of_a_conditional_model_come_from_the_data():
    import pytest
    import torch

    from vaekit.data import Dataset, expect_labels, num_classes
    from vaekit.errors import VaekitError

    x = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    assert num_classes(Dataset(x, torch.tensor([0, 4, 2, 0, 1, 1]), "f.npz"), "f.npz") == 5  # max + 1
    assert num_classes(Dataset(x, torch.zeros(6, dtype=torch.int64), "mnist"), "mnist") == 10  # a built-in's own
    with pytest.raises(VaekitError, match=r"^--conditional needs labels, and x.npy has none \(") as e:
        num_classes(Dataset(x, None, "x.npy"), "x.npy")
    assert e.value.option == "conditional"
    with pytest.raises(VaekitError, match="labels up to 99999, more than the 65536 classes"):
        num_classes(Dataset(x, torch.tensor([0, 0, 0, 0, 0, 99999]), "f.npz"), "f.npz")
    ds = Dataset(x, torch.tensor([0, 4, 2, 0, 1, 1]), "f.npz")
    assert expect_labels(ds, 5, "--data f.npz") is ds and expect_labels(Dataset(x, None, "n"), 0, "w").y is None
    with pytest.raises(VaekitError, match="--data f.npz: label 4 is outside the model's classes 0..3"):
        expect_labels(ds, 4, "--data f.npz")
    with pytest.raises(VaekitError, match="--data n.npy: the model is conditional .4 classes. and needs"):
        expect_labels(Dataset(x, None, "n.npy"), 4, "--data n.npy")
