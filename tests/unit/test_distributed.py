"""distributed: outside torchrun every helper is a no-op, and the ranks' shards of a global batch are
together exactly the batch one process would see, binarization included."""

from __future__ import annotations

import pytest
import torch

from vaekit import distributed as D
from vaekit.data import Dataset, binarize
from vaekit.errors import VaekitError


def _ds(n=20):
    return Dataset((torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2) % 7) / 7, None, "toy")


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_of_every_rank_make_up_the_single_process_batch(world):
    ds, idx = _ds(), torch.tensor([5, 0, 17, 3, 9, 12, 1, 8, 19, 4])
    one = D.shard_batch(ds, idx, 0, 1, None, "cpu")
    assert torch.equal(torch.cat([D.shard_batch(ds, idx, r, world, None, "cpu") for r in range(world)]), one)
    # dynamic binarization: every rank draws for the whole global batch from the shared generator state
    want = binarize(ds.batch(idx), torch.Generator().manual_seed(3))
    parts = [D.shard_batch(ds, idx, r, world, torch.Generator().manual_seed(3), "cpu") for r in range(world)]
    assert torch.equal(torch.cat(parts), want)
    assert torch.equal(D.shard_batch(ds, idx, 0, 1, torch.Generator().manual_seed(3), "cpu"), want)


def test_one_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.dist_info() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert D.dist_info() == (2, 4)
    t = torch.tensor([1.0, 2.0])
    assert D.all_sum(t, 1) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    assert D.agree([0.0, 1.0], 1, "cpu") == [0.0, 1.0]
    model = torch.nn.Linear(2, 2)
    assert D.wrap(model, torch.device("cpu"), 1) is model
    states = {"torch": torch.get_rng_state()}
    assert D.gather_states(states, 1, "cpu") is states
    with D.process_group("auto", 1) as device:
        assert device == "auto"


def test_cuda_without_a_gpu_is_a_one_line_error_naming_the_option(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VaekitError, match="--device cuda: no CUDA device") as e:
        D.resolve_device("cuda")
    assert e.value.option == "device"
    assert D.resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_gets_the_labels_of_its_own_rows(world):
    ds, idx = _ds(), torch.tensor([5, 0, 17, 3, 9, 12, 1, 8, 19, 4])
    ds = Dataset(ds.x, torch.arange(20) * 10, "toy")
    for r in range(world):
        x, y = D.shard_batch(ds, idx, r, world, None, "cpu"), D.shard_labels(ds, idx, r, world, "cpu")
        assert torch.equal(x, ds.batch(y // 10))  # the labels belong to the rows that rank holds
    assert torch.equal(torch.cat([D.shard_labels(ds, idx, r, world, "cpu") for r in range(world)]), idx * 10)
    assert D.shard_labels(_ds(), idx, 0, world, "cpu") is None


@pytest.mark.parametrize("n", [1, 7, 10, 25])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_rows_are_tensor_splits_parts(n, world):
    t = torch.arange(n)
    for r, part in enumerate(t.tensor_split(world)):
        assert torch.equal(t[D.rank_rows(n, r, world)], part)


@pytest.mark.parametrize("k", [1, 3])
def test_the_ranks_noise_rows_are_the_single_process_draw(k):
    """Each rank, its global RNG seeded alike, draws for the global batch and keeps its rows: together the
    draw Normal.rsample makes in one process (same values, shape (k, B, D) or (B, D))."""
    from vaekit.distributions import Normal

    n, d, world = 7, 3, 3
    q = Normal(torch.zeros(n, d), torch.zeros(n, d))
    torch.manual_seed(11)
    want = q.rsample(k if k > 1 else None)
    parts = []
    for r in range(world):
        torch.manual_seed(11)
        parts.append(D.shard_noise(n, d, k, D.rank_rows(n, r, world), world, torch.float32, "cpu"))
    assert torch.equal(torch.cat(parts, dim=-2), want)
    assert D.shard_noise(n, d, k, D.rank_rows(n, 0, 1), 1, torch.float32, "cpu") is None  # the model draws it


@pytest.mark.parametrize("n, world", [(10, 2), (25, 2), (7, 3), (4, 4)])
def test_ddp_gradient_is_the_single_process_gradient(n, world):
    """DDP simulated in one process: each rank's loss on its rows with its noise, times shard_weight, and the
    gradients averaged over ranks (what DDP's all-reduce does) equal one process's gradient of the global mean,
    unequal shards (25 over 2, 7 over 3) included, up to float32 summation order."""
    from vaekit.config import ModelConfig
    from vaekit.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=2))
    x = torch.rand(n, 1, 4, 4)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    torch.manual_seed(5)
    want = grads(model(x)[0].mean())
    got = 0
    for r in range(world):
        torch.manual_seed(5)
        rows = D.rank_rows(n, r, world)
        eps = D.shard_noise(n, 2, 1, rows, world, torch.float32, "cpu")
        got = got + grads(model(x[rows], eps=eps)[0].mean() * D.shard_weight(n, r, world)) / world
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert D.shard_weight(10, 1, 2) == 1.0 and D.shard_weight(25, 0, 2) == 2 * 13 / 25
