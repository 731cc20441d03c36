"""The user's own data: a .npy/.npz array, an IDX file, a folder of images or of .npy shards.

Everything comes out as images (N, C, H, W) with C in 1..4, or vectors (N, D);
uint8 in [0, 255] or float32 in [0, 1]. Bad data is refused with one line naming
the file and the problem (VaekitError), never a traceback.
"""

from __future__ import annotations

import contextlib
import lzma
import warnings
import zipfile
import zlib
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vaekit.errors import VaekitError

from .idx import GZIP_MAGIC, MAX_GZIP_RATIO, check_size, read_idx

if TYPE_CHECKING:
    from .lazy import Rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_KEYS = ("x", "images")
LABEL_KEYS = ("y", "labels")
GREY_MODES = ("1", "L", "LA", "La")  # Pillow modes read as grey (C = 1); any other 8-bit mode as colour (C = 3)
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16-bit and float images: refused


def load_file(path: str | Path, in_memory: str = "yes") -> tuple[np.ndarray | Rows, np.ndarray | None]:
    """Examples and labels from a file or folder of the user's.

    Returns x: (N, C, H, W) or (N, D), uint8 in [0, 255] or float32 in [0, 1];
    y: (N,) integer labels (an .npz with `y`/`labels`, or one sub-folder per label), else None.
    `in_memory` (yes | no | auto, lazy.keep_in_memory): with "no", or "auto" and examples too big for
    memory, a .npy, a folder of .npy shards or a folder of images comes back as a lazy.Rows read on demand.
    """
    path = Path(path)
    if path.is_dir():
        shards = npy_shards(path)
        if shards:
            return _load_shards(path, shards, in_memory), None
        return load_image_folder(path, in_memory)
    if not path.is_file():
        raise VaekitError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npy" or suffix == ".npz":
        return _load_numpy(path, in_memory)
    if suffix in IMAGE_SUFFIXES:
        raise VaekitError(f"{path}: a single image; give the folder that holds the images")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise VaekitError(f"{path}: cannot read ({e.strerror or e})") from None
    named_idx = "idx" in path.name.lower() or "ubyte" in path.name.lower()  # read_idx says what is wrong
    if head not in (b"\x00\x00", GZIP_MAGIC) and not named_idx:  # IDX starts with two zero bytes
        raise VaekitError(
            f"{path}: unknown format: vaekit reads .npy, .npz, IDX files and folders of PNG/JPEG/BMP images"
        )
    return as_examples(read_idx(path), path), None


def npy_shards(folder: Path) -> list[Path]:
    """The .npy files directly in `folder`, sorted by name, when it holds no images (else [])."""
    found = _files_in(folder, (".npy",))
    return found if found and not _images_in(folder) else []


def _load_shards(folder: Path, shards: list[Path], in_memory: str) -> np.ndarray | Rows:
    """One dataset of the shards' rows concatenated in file-name order: kept on disk, or read into memory."""
    from . import lazy

    rows = lazy.NpyRows(shards, folder)
    return rows if not lazy.keep_in_memory(in_memory, rows.nbytes) else rows.read_all()


def _load_numpy(path: Path, in_memory: str = "yes") -> tuple[np.ndarray | Rows, np.ndarray | None]:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise VaekitError(f"{path}: cannot read ({e.strerror or e})") from None
    if head == b"\x93NUMPY":
        x = open_npy(path)
        if in_memory != "yes" and isinstance(x, np.memmap):
            from . import lazy

            nbytes = x.size * (4 if np.issubdtype(x.dtype, np.floating) else 1)  # as held in memory
            if not lazy.keep_in_memory(in_memory, nbytes):
                del x  # the rows are read with pread, never through a map (lazy.py says why)
                return lazy.NpyRows([path], path), None
        return as_examples(x, path), None
    if head.startswith(b"PK"):  # .npz is a zip archive
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
                return _from_npz(npz, path)
        except (
            ValueError,
            OSError,
            EOFError,
            zipfile.BadZipFile,
            zlib.error,
            lzma.LZMAError,
            NotImplementedError,
            RuntimeError,
        ) as e:  # zipfile: unknown method, "encrypted" flag bits
            raise VaekitError(f"{path}: corrupt .npz archive ({_first_line(e)})") from None
        except MemoryError:
            raise VaekitError(f"{path}: the arrays do not fit in memory") from None
    raise VaekitError(f"{path}: not a NumPy .npy/.npz file (it starts with {head!r})")


def open_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped (no page read yet; a plain array when numpy maps none, e.g. an
    empty one), its header checked: one-line errors for a corrupt or truncated file, pickled objects and
    trailing data after the array."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        raise VaekitError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # numpy parses the header with ast and tokenize: ValueError, SyntaxError...
        if "Python objects" in str(e):
            raise VaekitError(
                f"{path}: holds Python objects (pickled data), which vaekit does not load; save a numeric array"
            ) from None
        raise VaekitError(f"{path}: corrupt or truncated .npy file ({_first_line(e)})") from None
    extra = path.stat().st_size - x.offset - x.nbytes if isinstance(x, np.memmap) else 0
    if extra:  # np.save twice into one file: numpy would read the first array and say nothing
        raise VaekitError(
            f"{path}: {extra} bytes of trailing data after the {x.shape} {x.dtype} array the header describes"
        )
    return x


def _from_npz(npz, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    keys = list(npz.files)
    x_key = next((k for k in IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if x_key is None:
        raise VaekitError(
            f"{path}: cannot tell which array holds the examples (keys: "
            f"{', '.join(keys) or 'none'}); name it 'x' or 'images'"
        )
    y_key = next((k for k in LABEL_KEYS if k in keys), None)
    for key in (x_key, y_key):
        if key is not None:
            _check_npz_member(npz.zip, key, path)
    try:
        x, y = npz[x_key], None if y_key is None else npz[y_key]
    except ValueError as e:
        if "pickle" in str(e):
            raise VaekitError(
                f"{path}: holds Python objects (pickled data), which vaekit does not load; save numeric arrays"
            ) from None
        raise
    x = as_examples(x, f"{path}[{x_key}]")
    return x, None if y is None else _as_labels(y, len(x), f"{path}[{y_key}]")


def _check_npz_member(archive: zipfile.ZipFile, key: str, path: Path) -> None:
    """Refuse a member that is no .npy array, or whose header claims more data than the member holds,
    before numpy allocates what the header claims."""
    name = key + ".npy"
    if name not in archive.namelist():
        raise VaekitError(f"{path}: member {key!r} is not a .npy array; save the arrays with np.savez")
    info = archive.getinfo(name)
    if (
        info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
        and info.file_size > max(info.compress_size, 1) * MAX_GZIP_RATIO
    ):
        raise VaekitError(
            f"{path}[{key}]: corrupt: the archive says {info.file_size} bytes, more than "
            f"{info.compress_size} compressed bytes can hold"
        )
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f, max_header_size=10_000)
        except Exception as e:  # ValueError, SyntaxError, tokenize.TokenError from a damaged header
            raise VaekitError(f"{path}[{key}]: not a .npy array ({_first_line(e)})") from None
        held = info.file_size - f.tell()
    if dtype.hasobject:
        raise VaekitError(
            f"{path}[{key}]: holds Python objects (pickled data), which vaekit does not load; save numeric arrays"
        )
    check_size(f"{path}[{key}]", f"{shape} {dtype}", prod(shape) * dtype.itemsize, held, "the archive member")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _as_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise VaekitError(f"{where}: labels must have shape ({n},), got {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise VaekitError(f"{where}: labels must be integers, got {y.dtype}")
    if n and y.min() < 0:
        raise VaekitError(f"{where}: labels must be >= 0, got {y.min()}")
    return np.array(y, dtype=np.int64)


def as_examples(x: np.ndarray, source: str | Path) -> np.ndarray:
    """`x` as (N, C, H, W) images or (N, D) vectors, uint8 [0, 255] or float32 [0, 1], in memory.

    Shapes: (N, H, W) -> (N, 1, H, W); (N, C, H, W) with C in 1..4 kept; (N, H, W, C)
    with C in {1, 3, 4} and H, W > 4 -> NCHW; (N, D) kept.
    """
    return _as_pixels(_as_nchw(x, source), source)


def _as_nchw(x: np.ndarray, source) -> np.ndarray:
    shape = tuple(x.shape)
    if x.ndim not in (2, 3, 4):
        raise VaekitError(
            f"{source}: an array of shape {shape}; vaekit takes (N, H, W), (N, C, H, W), (N, H, W, C) or (N, D)"
        )
    if 0 in shape:
        raise VaekitError(f"{source}: no data (shape {shape})")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and not 1 <= shape[1] <= 4:
        if shape[3] in (1, 3, 4) and shape[1] > 4 and shape[2] > 4:
            return x.transpose(0, 3, 1, 2)  # channels-last -> NCHW (copied contiguous later)
        raise VaekitError(
            f"{source}: cannot read shape {shape} as images: expected (N, C, H, W) "
            f"with C in 1..4 or (N, H, W, C) with C in 1, 3, 4"
        )
    return x


def _as_pixels(x: np.ndarray, source) -> np.ndarray:
    """uint8 kept; bool -> {0, 255}; integers in [0, 255] -> uint8; floats in [0, 1] -> float32."""
    if x.dtype == np.uint8:
        return np.array(x, order="C")  # a copy: own memory, not a view of the user's array or a map
    if x.dtype == np.bool_:
        return np.array(x, dtype=np.uint8, order="C") * np.uint8(255)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise VaekitError(f"{source}: integer values from {lo} to {hi}; give uint8 0..255 or floats in [0, 1]")
        return np.array(x, dtype=np.uint8, order="C")
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = x.min(), x.max()  # NaN propagates through min and max: no extra pass
        if np.isnan(lo) or np.isnan(hi):
            raise VaekitError(f"{source}: contains NaN values")
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise VaekitError(f"{source}: contains infinite values")
        if lo < 0 or hi > 1:
            raise VaekitError(
                f"{source}: float values from {lo:g} to {hi:g}; scale them to [0, 1] or give uint8 0..255"
            )
        return np.array(x, dtype=np.float32, order="C")
    raise VaekitError(f"{source}: unsupported dtype {x.dtype}; give uint8 0..255 or floats in [0, 1]")


def load_image_folder(folder: Path, in_memory: str = "yes") -> tuple[np.ndarray | Rows, np.ndarray | None]:
    """Images (N, C, H, W) uint8 from a folder: images inside it, else one sub-folder per label.

    Labelled layout: sub-folder names sorted -> labels 0..K-1. Grey (L, 1, LA) -> C=1;
    colour (RGB, RGBA, P, CMYK...) -> C=3, alpha dropped; a mix of grey and colour is
    promoted to colour. `in_memory`: as in load_file (a lazy.ImageRows decodes on demand).
    """
    paths, labels = image_paths(folder)
    if in_memory != "yes":
        from . import lazy

        if not lazy.keep_in_memory(in_memory, lazy.image_bytes(paths)):
            return lazy.ImageRows(paths, folder), labels
    return _read_images(paths), labels


def image_paths(folder: Path) -> tuple[list[Path], np.ndarray | None]:
    """The images of a folder in reading order, and their labels (N,) int64 for the labelled layout."""
    flat = _images_in(folder)
    if flat:
        return flat, None
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, sub in enumerate(classes):
        found = _images_in(sub)
        if not found:
            raise VaekitError(f"{sub}: a label sub-folder with no images (PNG, JPEG, BMP)")
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise VaekitError(f"{folder}: no images found (PNG, JPEG, BMP), neither in the folder nor in sub-folders")
    return paths, np.array(labels, dtype=np.int64)


def _images_in(folder: Path) -> list[Path]:
    return _files_in(folder, IMAGE_SUFFIXES)


def _files_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    try:
        return sorted(
            p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith(".")
        )
    except OSError as e:
        raise VaekitError(f"{folder}: cannot list ({e.strerror or e})") from None


def _read_images(paths: list[Path]) -> np.ndarray:
    pixels, first = [], None
    for p in paths:
        a = read_image(p)
        if first is None:
            first = (p, a.shape)
        elif a.shape[:2] != first[1][:2]:
            raise mixed_sizes(first[0], first[1][:2], p, a.shape[:2])
        pixels.append(a)
    c = max(a.shape[2] for a in pixels)
    x = np.empty((len(pixels), c, *first[1][:2]), dtype=np.uint8)  # (N, C, H, W)
    for i, a in enumerate(pixels):
        x[i] = a.transpose(2, 0, 1)  # a grey (H, W, 1) broadcasts to 3 channels when mixed
    return x


@contextlib.contextmanager
def strict_pillow():
    """Pillow only warns between 1x and 2x its pixel limit (a second stderr line, then a huge image): inside,
    that warning is an error, which the callers turn into a one-line refusal naming the image."""
    from PIL import Image  # only image folders need Pillow

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def read_image(p: Path) -> np.ndarray:
    """One image's pixels (H, W, 1) grey or (H, W, 3) colour, uint8; a one-line error naming it if unreadable."""
    from PIL import Image

    try:
        with strict_pillow(), Image.open(p) as im:
            im.load()
            return _to_grey_or_rgb(im, p)
    except VaekitError:
        raise
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise VaekitError(f"{p}: not a readable image ({type(e).__name__}: {e})") from None


def mixed_sizes(first: Path, hw0: tuple[int, int], p: Path, hw: tuple[int, int]) -> VaekitError:
    (h0, w0), (h, w) = hw0, hw
    return VaekitError(f"mixed image sizes: {first} is {w0}x{h0}, {p} is {w}x{h}; resize them to one size")


def _to_grey_or_rgb(im, path: Path) -> np.ndarray:
    """(H, W, 1) for grey images, (H, W, 3) for colour ones, uint8."""
    if im.mode in GREY_MODES:
        return np.asarray(im.convert("L"))[:, :, None]
    if im.mode in WIDE_MODES:
        raise VaekitError(f"{path}: a {im.mode} image (16-bit or float); vaekit reads 8-bit grey or colour images")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # so the palette's transparency is handled, then dropped
    return np.asarray(im.convert("RGB"))
