"""Datasets: one tensor of examples in memory, batched by indexing, or rows read from disk on demand.

`load(source, split)` takes a built-in name (`mnist`, `fashion-mnist`) or a path
(.npy/.npz, IDX, a folder of images or of .npy shards) and returns a `Dataset`. Pixel values are
kept as uint8 where the source is 8-bit (4x less memory than float) and turned
into float32 in [0, 1] one batch at a time by `Dataset.batch`. Data too big for memory (lazy.py says
when; $VAEKIT_IN_MEMORY overrides) stays on disk: `Dataset.x` is then a `lazy.Rows`, and `batch` and
`subset` give the same examples as they would in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import VaekitError

from .files import load_file
from .idx import read_idx, write_idx
from .lazy import Rows, in_memory_setting
from .sources import DATASETS, cache_dir, fetch, load_builtin

BINARIZE = ("dynamic", "static", "none")

__all__ = [
    "Dataset",
    "Rows",
    "load",
    "fetch",
    "read_idx",
    "write_idx",
    "cache_dir",
    "DATASETS",
    "BINARIZE",
    "binarize",
    "split_validation",
    "expect_shape",
    "expect_labels",
    "num_classes",
]


@dataclass
class Dataset:
    """x: (N, *shape) uint8 in [0, 255] or float32 in [0, 1], a tensor in memory or a lazy.Rows read from
    disk on demand (the same values either way); y: (N,) int64 labels or None."""

    x: torch.Tensor | Rows
    y: torch.Tensor | None
    name: str

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W) for images, (D,) for vectors."""
        return tuple(self.x.shape[1:])

    @property
    def on_disk(self) -> bool:
        """Whether the examples are read from disk on demand (a lazy.Rows) rather than held in memory."""
        return isinstance(self.x, Rows)

    def batch(self, idx: torch.Tensor | slice, device: torch.device | str = "cpu") -> torch.Tensor:
        """Examples `idx` as float32 in [0, 1] on `device`."""
        if self.on_disk:
            xb = self.x.read(idx)
        elif (
            isinstance(idx, torch.Tensor)
            and idx.dim() == 1
            and idx.dtype == torch.int64
            and len(self.x)
            and self.x.is_contiguous()
        ):
            # index_select on the flattened rows: faster than advanced indexing on (N, C, H, W) (benchmarks/RESULTS.md)
            xb = self.x.view(len(self.x), -1).index_select(0, idx).view(len(idx), *self.shape)
        else:
            xb = self.x[idx]
        xb = xb.to(device, non_blocking=True)
        if xb.dtype == torch.uint8:
            return xb.float().div_(255.0)
        return xb.float()

    def subset(self, idx: torch.Tensor | slice) -> Dataset:
        """Examples `idx`; on disk, a view that reads nothing until it is used."""
        x = self.x.take(idx) if self.on_disk else self.x[idx]
        return Dataset(x, None if self.y is None else self.y[idx], self.name)

    def binarized(self, seed: int) -> Dataset:
        """One fixed Bernoulli draw of every pixel (static binarization), kept as uint8 {0, 255}."""
        if self.on_disk:
            raise VaekitError(
                f"--binarize static keeps a binarized copy of all of {self.name} in memory, and it is read from "
                f"disk ({len(self)} examples, {self.x.nbytes / 2**30:.1f} GiB); use --binarize dynamic",
                option="binarize",
            )
        g = torch.Generator().manual_seed(seed)
        out = torch.empty_like(self.x, dtype=torch.uint8)
        step = 8192  # bounded float memory for large datasets
        for i in range(0, len(self), step):
            p = self.batch(slice(i, i + step))
            out[i : i + step] = binarize(p, g).to(torch.uint8).mul_(255)
        return Dataset(out, self.y, self.name)


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw of a batch of [0, 1] pixels (dynamic binarization): u < x with u ~ U[0, 1),
    the same distribution as torch.bernoulli(x), and faster on the CPU (benchmarks/RESULTS.md)."""
    return torch.lt(torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device), x).to(x.dtype)


def load(source: str | Path, split: str = "train", in_memory: str | None = None) -> Dataset:
    """A built-in dataset by name, or a file/folder of the user's (the whole file; `split` is ignored).

    in_memory: yes | no | auto (None: $VAEKIT_IN_MEMORY, else auto): whether a .npy, a folder of .npy
    shards or of images is loaded into memory or read from disk on demand; auto chooses by size (lazy.py).
    Built-in datasets, .npz and IDX files are always loaded into memory.
    Raises VaekitError with one line naming the source and the problem.
    """
    in_memory = in_memory_setting(in_memory)
    if split not in ("train", "test"):
        raise VaekitError(f"unknown split {split!r}: use train or test")
    name = str(source)
    if name in DATASETS:
        images, labels = load_builtin(name, split)
        return Dataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), name)
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join(DATASETS)
        raise VaekitError(f"unknown dataset {name!r}: not a built-in ({known}) and no such file or folder")
    images, labels = load_file(path, in_memory)
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return Dataset(images if isinstance(images, Rows) else torch.from_numpy(images), y, path.name)


def expect_shape(ds: Dataset, shape, what: str) -> Dataset:
    """`ds` if its examples have `shape` (the model's input shape); else a one-line error naming `what`."""
    want = tuple(shape)
    if ds.shape != want:
        raise VaekitError(f"{what}: examples have shape {ds.shape}, the model expects {want}")
    return ds


def num_classes(ds: Dataset, source: str | Path) -> int:
    """The label classes a conditional model of `ds` (loaded from `source`) needs: a built-in dataset's own
    count (10 for MNIST), else max(label) + 1. One-line errors when `ds` has no labels or too many classes."""
    from vaekit.config import MAX_WIDTH

    if ds.y is None:
        raise VaekitError(
            f"--conditional needs labels, and {source} has none (labels come with the built-in datasets, an .npz "
            f"with a `y` array, or a folder with one sub-folder of images per label)",
            option="conditional",
        )
    if str(source) in DATASETS:
        return DATASETS[str(source)].classes
    k = int(ds.y.max()) + 1 if len(ds.y) else 0
    if not 0 < k <= MAX_WIDTH:
        raise VaekitError(
            f"--conditional: {source} has labels up to {k - 1}, more than the {MAX_WIDTH} classes a conditional "
            f"model takes"
            if k
            else f"--conditional: {source} has no labels to condition on",
            option="conditional",
        )
    return k


def expect_labels(ds: Dataset, num_classes: int, what: str) -> Dataset:
    """`ds` if a model of `num_classes` label classes can use it: any data for an unconditional model (0),
    else labels in 0..num_classes-1. One-line errors naming `what` otherwise."""
    if not num_classes:
        return ds
    if ds.y is None:
        raise VaekitError(
            f"{what}: the model is conditional ({num_classes} classes) and needs the examples' labels; "
            f"{ds.name} has none"
        )
    if len(ds.y):
        lo, hi = int(ds.y.min()), int(ds.y.max())
        if lo < 0 or hi >= num_classes:
            raise VaekitError(
                f"{what}: label {lo if lo < 0 else hi} is outside the model's classes 0..{num_classes - 1}"
            )
    return ds


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out `fraction` of `ds` (a fixed random subset) for validation."""
    if not 0.0 <= fraction < 1.0:
        raise VaekitError(f"--val-fraction must be in [0, 1), got {fraction}")
    n_val = int(round(len(ds) * fraction))
    if n_val == 0:
        return ds, None
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)
