"""Devices, processes and sharding: what the training loop needs to run the same under torchrun.

Every rank draws the same permutation; global batch s is perm[s*B:(s+1)*B] and rank r takes the r-th of
`world` slices of it (tensor_split: sizes differ by at most one), so the ranks together see exactly the
batches a single process would. The random draws of a step are made for the whole global batch from a
stream every rank shares (the binarization from a shared generator, the reparameterization noise from
torch's global one, seeded alike on every rank), and each rank keeps its rows. DDP averages the gradients
and each rank weights its shard's mean by its share of the global batch (`shard_weight`), so a step is the
same mean over the global batch as in one process: only the floating-point summation order differs.
Outside torchrun (world = 1) every helper here is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from vaekit.data import Dataset
from vaekit.data import binarize as draw_binary
from vaekit.errors import VaekitError


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a one-line error for cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaekitError(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() is False)", option="device"
        )
    return torch.device(name)


@contextmanager
def process_group(device_name: str, world: int):
    """Under torchrun (world > 1): pin this rank's GPU, join the group (NCCL on GPU, gloo on CPU), leave it
    on exit. Yields the device name the run should use ("cuda" once a GPU is pinned)."""
    if world == 1:
        yield device_name
        return
    import torch.distributed as dist

    if resolve_device(device_name).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device_name = "cuda"
    backend = "nccl" if device_name == "cuda" else "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("GROUP_WORLD_SIZE") == "1":
        # One node: torchrun's agent keeps its store across restarts, with the keys a killed group wrote (its
        # peers' addresses: pytorch#135712); a prefix per restart (the same count on every rank) hides them.
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend, store=dist.PrefixStore(f"vaekit/restart{attempt}", store), rank=rank, world_size=world
        )
    else:
        dist.init_process_group(backend)
    try:
        yield device_name
        dist.barrier()  # a finished rank waits for rank 0's last writes before the group is torn down
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """The module the loop calls: DistributedDataParallel over `model` under torchrun, else `model`."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """The sum of `t` over ranks, in place (no-op for one process)."""
    if world > 1:
        torch.distributed.all_reduce(t)
    return t


def agree(values: list[float], world: int, device) -> list[float]:
    """Under DDP, the max of each flag over ranks, so that every rank takes the same branch."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_states(local: dict[str, torch.Tensor], world: int, device) -> dict[str, torch.Tensor]:
    """Every rank's tensors under keys suffixed `.r{rank}` (world > 1); `local` itself for one process."""
    if world == 1:
        return local
    import torch.distributed as dist

    out = {}
    for k, v in local.items():
        parts = [torch.empty_like(v, device=device) for _ in range(world)]
        dist.all_gather(parts, v.to(device))
        out.update({f"{k}.r{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def shard_batch(
    ds: Dataset, global_idx: torch.Tensor, rank: int, world: int, gen: torch.Generator | None, device
) -> torch.Tensor:
    """This rank's slice of global batch `global_idx`, as float on `device`; with `gen`, dynamically binarized.

    The binarization is drawn for the whole global batch from a generator every rank shares, then sliced,
    so a step sees the same data whatever the number of processes (the bernoulli draw is cheap)."""
    parts = global_idx.tensor_split(world)
    if gen is None:
        return ds.batch(parts[rank], device)
    lo = sum(len(p) for p in parts[:rank])
    x = draw_binary(ds.batch(global_idx if world > 1 else parts[rank]), gen)  # CPU generator, CPU draw
    return x[lo : lo + len(parts[rank])].to(device, non_blocking=True)


def rank_rows(n: int, rank: int, world: int) -> slice:
    """The rows of rank `rank` among `n` split into `world` parts as torch.tensor_split does (the first n % world
    parts one row longer)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return slice(lo, lo + q + (rank < r))


def shard_weight(n: int, rank: int, world: int) -> float:
    """What this rank multiplies its shard's mean loss by so that DDP's average over ranks is the mean over
    the global batch of `n`: world * (its rows) / n; exactly 1.0 when the shards are equal."""
    rows = rank_rows(n, rank, world)
    return 1.0 if n % world == 0 else world * (rows.stop - rows.start) / n


def shard_noise(n: int, latent_dim: int, k: int, rows: slice, world: int, dtype, device) -> torch.Tensor | None:
    """Rows `rows` (this rank's: rank_rows, or every world-th) of the reparameterization noise of a global
    batch of `n` examples, (rows, D) or (k, rows, D) for k > 1 importance samples: the standard normal draw a
    single process makes for the whole batch (torch's global generator, the same shape and dtype), sliced.
    None for one process, which lets the model draw it itself: the same numbers at no cost."""
    if world == 1:
        return None
    eps = torch.randn((n, latent_dim) if k == 1 else (k, n, latent_dim), dtype=dtype, device=device)
    return eps[..., rows, :]


def shard_labels(ds: Dataset, global_idx: torch.Tensor, rank: int, world: int, device) -> torch.Tensor | None:
    """The labels (B/world,) int64 on `device` of this rank's slice of global batch `global_idx` (the rows
    shard_batch gives it); None when the data has no labels."""
    if ds.y is None:
        return None
    return ds.y[global_idx.tensor_split(world)[rank]].to(device, non_blocking=True)
