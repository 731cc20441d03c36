"""Examples read from disk on demand: data bigger than memory.

`data.load` keeps a dataset in memory (one tensor: the fast path, and the default) unless its examples
would take more than MEMORY_FRACTION of the memory available; then the Dataset holds a `Rows` instead of
a tensor, for a .npy file (`NpyRows`), a folder of .npy shards (`NpyRows`, rows concatenated in file-name
order) or a folder of images (`ImageRows`). `Rows.read(idx)` returns, bit for bit, what indexing the
in-memory tensor would, so the training order (one permutation per epoch), exact resume and DDP sharding
work the same, and a rank reads only the rows distributed.shard_batch asks of it.

The threshold: in memory while the examples (uint8, or float32 for float data) take at most 1/8 of
MemAvailable (/proc/meminfo), shared by the ranks of a node (LOCAL_WORLD_SIZE). Small on purpose: loading a
.npy holds two copies for a moment (the file's pages and the array), a validation split copies the rest
again, every rank of a node loads its own, and the memory is shared with the rest of the machine; while
reading from disk costs little (benchmarks/RESULTS.md, "Data bigger than memory"). $VAEKIT_IN_MEMORY
(auto | yes | no) overrides it for every command.

Why pread and not a memory map (measured: benchmarks/RESULTS.md, "Data bigger than memory"): the pages of
an np.memmap that training touches count in the process's resident set (RssFile) until they are unmapped,
and the kernel maps far more than the rows read (fault-around, large page-cache folios): shuffled batches
over 0.5% of a 4.2 GB file's rows put 1.3 GB in RSS, over 3.7% of them 4 GB (MADV_RANDOM or not). A map
stays small only with madvise(MADV_DONTNEED) after every batch, and then costs about what pread does (0.3-0.4
ms a batch of 128 from the page cache, 2% of a training step of the default model on 1 CPU thread); and a
map kills the process with SIGBUS when the file is cut short, where pread gives a one-line error. So rows are
read with os.pread into a fresh buffer: a batch's rows sorted so that the reads go forward, consecutive rows
merged into one read. The kernel's page cache still keeps hot data; the process holds one batch. Rows that
are not in the page cache cost a random read each: a shuffled epoch then runs at the disk's random-read rate.
"""

from __future__ import annotations

import copy
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from math import prod
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import VaekitError

from .files import GREY_MODES, WIDE_MODES, _as_nchw, _as_pixels, mixed_sizes, open_npy, read_image, strict_pillow

ENV = "VAEKIT_IN_MEMORY"
CHOICES = ("auto", "yes", "no")
MEMORY_FRACTION = 1 / 8
READ_CHUNK = 64 << 20  # bytes per read (and per chunk when a whole file is scanned or read into memory)


def in_memory_setting(value: str | None = None) -> str:
    """`value` (auto | yes | no), else $VAEKIT_IN_MEMORY, else auto; a one-line error for anything else."""
    where = "in_memory" if value is not None else ENV
    value = value if value is not None else os.environ.get(ENV, "auto")
    if value not in CHOICES:
        raise VaekitError(f"{where} must be auto, yes or no, got {value!r}")
    return value


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), else physical memory; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def keep_in_memory(setting: str, nbytes: int) -> bool:
    """Whether examples taking `nbytes` in memory are loaded there (yes), or read from disk (no); auto:
    in memory while nbytes <= MEMORY_FRACTION of the available memory over the ranks of this node."""
    if setting != "auto":
        return setting == "yes"
    avail = available_memory()
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:  # not set by torchrun: one process
        ranks = 1
    return avail is None or nbytes <= MEMORY_FRACTION * avail / ranks


class Rows:
    """N examples (N, *example) kept on disk, read on demand: uint8 in [0, 255] or float32 in [0, 1], the
    same values and layout `files.load_file` gives in memory. A view (`take`) holds the row numbers of the
    underlying data it shows, so a subset or a validation split reads nothing until it is used."""

    def __init__(self, n: int, example: tuple[int, ...], dtype: torch.dtype, source):
        self.example, self.dtype, self.source = tuple(example), dtype, source
        self._n = n
        self._rows: np.ndarray | None = None  # (M,) int64 rows of the underlying data; None: all, in order

    def __len__(self) -> int:
        return self._n if self._rows is None else len(self._rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.example)

    @property
    def nbytes(self) -> int:
        """What the examples take in memory."""
        return len(self) * prod(self.example) * (1 if self.dtype == torch.uint8 else 4)

    def take(self, idx) -> Rows:
        """The examples `idx` (a slice, or integer indices) as a view; nothing is read."""
        view = copy.copy(self)
        view._rows = self._underlying(idx)
        return view

    def read(self, idx) -> torch.Tensor:
        """The examples `idx` (a slice, or integer indices (B,)) as a tensor (B, *example), in idx's order."""
        rows = self._underlying(idx)
        if not len(rows):
            return torch.empty((0, *self.example), dtype=self.dtype)
        if np.all(rows[1:] >= rows[:-1]):
            return torch.from_numpy(self._read_sorted(rows))
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.example), np.uint8 if self.dtype == torch.uint8 else np.float32)
        out[order] = self._read_sorted(rows[order])
        return torch.from_numpy(out)

    def read_all(self) -> np.ndarray:
        """Every example, in memory (N, *example), read in chunks."""
        out = np.empty(self.shape, np.uint8 if self.dtype == torch.uint8 else np.float32)
        step = max(1, READ_CHUNK // max(1, prod(self.example) * out.itemsize))
        for a in range(0, len(self), step):
            out[a : a + step] = self.read(slice(a, a + step)).numpy()
        return out

    def _underlying(self, idx) -> np.ndarray:
        """Rows of the underlying data for indices `idx` into this view: (B,) int64."""
        n = len(self)
        if isinstance(idx, slice):
            i = np.arange(*idx.indices(n), dtype=np.int64)
        else:
            i = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx).reshape(-1)
            if i.dtype == np.bool_:
                if len(i) != n:
                    raise IndexError(f"a mask of {len(i)} values for {n} examples")
                i = np.flatnonzero(i)
            if len(i) and not np.issubdtype(i.dtype, np.integer):
                raise IndexError(f"examples are indexed by integers, got {i.dtype}")
            i = i.astype(np.int64, copy=False)
            if len(i) and (i.min() < -n or i.max() >= n):
                bad = int(i.min()) if i.min() < -n else int(i.max())
                raise IndexError(f"index {bad} is out of bounds for {n} examples")
            i = np.where(i < 0, i + n, i)
        return i if self._rows is None else self._rows[i]

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        """The underlying rows `rows` (ascending) as (len(rows), *example)."""
        raise NotImplementedError


class _Files:
    """Open file descriptors of a set of paths, opened on first use, closed with the object; not carried
    through pickling (a process that receives the object opens its own)."""

    def __init__(self, paths: list[Path]):
        self.paths, self.fds = paths, {}
        self._closer = weakref.finalize(self, _close_all, self.fds)

    def fd(self, i: int) -> int:
        if i not in self.fds:
            try:
                self.fds[i] = os.open(self.paths[i], os.O_RDONLY)
            except OSError as e:
                raise VaekitError(f"{self.paths[i]}: cannot read ({e.strerror or e})") from None
        return self.fds[i]

    def read_runs(self, files: list[int], offsets: list[int], sizes: list[int]) -> bytearray:
        """The bytes of file files[k] from offsets[k], sizes[k] of them, for every k, joined; one pread a run
        (the fast path), and a one-line error naming the file if one ends before its run does."""
        if max(sizes) <= READ_CHUNK:
            fds = [self.fds[i] if i in self.fds else self.fd(i) for i in files]
            try:
                data = bytearray().join([os.pread(fd, n, o) for fd, o, n in zip(fds, offsets, sizes)])
            except OSError:
                data = None  # said below, with the file's name
            if data is not None and len(data) == sum(sizes):
                return data
        data = bytearray()
        for i, offset, size in zip(files, offsets, sizes):
            for o in range(offset, offset + size, READ_CHUNK):
                n = min(READ_CHUNK, offset + size - o)
                try:
                    part = os.pread(self.fd(i), n, o)
                except OSError as e:
                    raise VaekitError(f"{self.paths[i]}: cannot read ({e.strerror or e})") from None
                if len(part) < n:
                    raise VaekitError(f"{self.paths[i]}: truncated: it ends at byte {o + len(part)}, inside its rows")
                data += part
        return data

    def __getstate__(self):
        return {"paths": self.paths}

    def __setstate__(self, state):
        self.__init__(state["paths"])


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class NpyRows(Rows):
    """The rows of one .npy file, or of several (shards) concatenated in the order given, read with pread.

    Each file's header is checked as the in-memory path checks it (corrupt, truncated, pickled, trailing
    data: one line naming the file); shards must hold rows of one shape and dtype; Fortran-ordered arrays
    are refused (their rows are not contiguous on disk). Non-uint8 data is scanned once here for values
    outside [0, 1] / 0..255, NaN and infinities, so that training never stops on a bad row."""

    def __init__(self, paths: list[Path], source):
        heads = []
        for p in paths:
            x = open_npy(p)
            _as_nchw(_zero_strided(x.shape, x.dtype), p)  # the shape is one vaekit reads; a one-line error if not
            if not x.flags.c_contiguous:
                raise VaekitError(f"{p}: stored in Fortran order; save it with np.save(f, np.ascontiguousarray(x))")
            heads.append((p, x.offset, x.shape, x.dtype))
            del x  # drop the map: the rows are read with pread
        p0, _, shape0, dtype0 = heads[0]
        for p, _, shape, dtype in heads[1:]:
            if shape[1:] != shape0[1:] or dtype != dtype0:
                raise VaekitError(
                    f"{source}: shard {p.name} holds rows of shape {shape[1:]} {dtype}, {p0.name} rows of shape "
                    f"{shape0[1:]} {dtype0}; every shard must hold rows of one shape and dtype"
                )
        counts = [h[2][0] for h in heads]
        example = _as_nchw(_zero_strided((sum(counts), *shape0[1:]), dtype0), source).shape[1:]
        floating = np.issubdtype(dtype0, np.floating)
        super().__init__(sum(counts), example, torch.float32 if floating else torch.uint8, source)
        self._files, self._offsets = _Files([h[0] for h in heads]), np.array([h[1] for h in heads], np.int64)
        self._starts = np.cumsum([0, *counts])  # shard i holds underlying rows starts[i]..starts[i+1]-1
        self._row, self._dtype = tuple(shape0[1:]), dtype0
        self._row_bytes = prod(self._row) * dtype0.itemsize
        if dtype0 != np.uint8:
            self.check()

    def check(self) -> None:
        """Every row's values, one file and READ_CHUNK bytes at a time; a one-line error naming the file."""
        step = max(1, READ_CHUNK // self._row_bytes)
        for i, p in enumerate(self._files.paths):
            for a in range(self._starts[i], self._starts[i + 1], step):
                rows = np.arange(a, min(a + step, self._starts[i + 1]))
                _as_pixels(_as_nchw(self._raw(rows), p), p)

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        x = _as_nchw(self._raw(rows), self.source)
        return np.ascontiguousarray(x) if x.dtype == np.uint8 else _as_pixels(x, self.source)

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        """Underlying rows `rows` (ascending) as stored on disk (k, *row): one pread per run of consecutive
        rows within a file."""
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        first = np.concatenate(([0], np.flatnonzero((np.diff(rows) != 1) | (np.diff(shard) != 0)) + 1))
        count = np.diff(np.append(first, len(rows)))
        s = shard[first]
        offsets = self._offsets[s] + (rows[first] - self._starts[s]) * self._row_bytes
        data = self._files.read_runs(s.tolist(), offsets.tolist(), (count * self._row_bytes).tolist())
        return np.frombuffer(data, self._dtype).reshape(len(rows), *self._row)  # writable: a bytearray's


def _zero_strided(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array of `shape` that takes no memory (every element is one zero), for checking shapes."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))


class ImageRows(Rows):
    """A folder's images (N, C, H, W) uint8, decoded on demand by a few threads (Pillow decodes without
    the GIL). The headers are read here (sizes, modes: no pixels), so mixed sizes are refused at once."""

    WORKERS = min(4, os.cpu_count() or 1)

    def __init__(self, paths: list[Path], source):
        (w0, h0), c = _header(paths[0])
        for p in paths[1:]:
            (w, h), ci = _header(p)
            if (w, h) != (w0, h0):
                raise mixed_sizes(paths[0], (h0, w0), p, (h, w))
            c = max(c, ci)
        super().__init__(len(paths), (c, h0, w0), torch.uint8, source)
        self._paths, self._pool = paths, None

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="vaekit-images")
        out = np.empty((len(rows), *self.example), np.uint8)
        paths = [self._paths[r] for r in rows.tolist()]
        for i, (p, a) in enumerate(zip(paths, self._pool.map(read_image, paths))):
            if a.shape[:2] != self.example[1:]:
                raise mixed_sizes(self._paths[0], self.example[1:], p, a.shape[:2])
            out[i] = a.transpose(2, 0, 1)  # a grey (H, W, 1) broadcasts to 3 channels when mixed
        return out

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}


def _header(p: Path) -> tuple[tuple[int, int], int]:
    """An image's (width, height) and channels (1 grey, 3 colour) from its header; one line if unreadable."""
    from PIL import Image

    try:
        with strict_pillow(), Image.open(p) as im:
            size, mode = im.size, im.mode
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError...
        raise VaekitError(f"{p}: not a readable image ({type(e).__name__}: {e})") from None
    if mode in WIDE_MODES:
        raise VaekitError(f"{p}: a {mode} image (16-bit or float); vaekit reads 8-bit grey or colour images")
    return size, 1 if mode in GREY_MODES else 3


def image_bytes(paths: list[Path]) -> int:
    """What a folder of these images takes in memory, from the first one's header: N * C * H * W."""
    (w, h), c = _header(paths[0])
    return len(paths) * c * h * w
