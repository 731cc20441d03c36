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
