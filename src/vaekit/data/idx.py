"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), read strictly.

Layout: two zero bytes, a data-type code, the number of dimensions, one big-endian
uint32 per dimension, then the data in big-endian C order. Files may be gzipped.
Every size the header claims is checked against what the file holds before
anything of that size is allocated, so a corrupt header is an error, not a MemoryError.
"""

from __future__ import annotations

import gzip
import os
import zlib
from math import prod
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError

# IDX type code -> numpy dtype (big-endian where it matters).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_NDIM = 4  # (N, H, W) images and (N,) labels need 3; 4 leaves room for (N, C, H, W)
GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot expand data by more than ~1032x, so a gzip file of n bytes holds less
# than this many times n once decompressed: a larger claim is refused before reading.
MAX_GZIP_RATIO = 1100
_CHUNK = 1 << 20


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (plain or gzipped), in native byte order.

    Returns an ndarray of shape (d1, ..., dn), 1 <= n <= 4, of the file's dtype
    (uint8, int8, int16, int32, float32 or float64), writable and owning its memory.
    Raises VaekitError with one line naming the file and the problem.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise VaekitError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        try:
            file_size = os.fstat(f.fileno()).st_size
            if f.read(2) == GZIP_MAGIC:
                f.seek(0)
                with gzip.GzipFile(fileobj=f, mode="rb") as g:
                    return _read_stream(g, path, data_size=None, gz_size=file_size)
            f.seek(0)
            return _read_stream(f, path, data_size=file_size, gz_size=None)
        except EOFError as e:
            raise VaekitError(f"{path}: truncated gzip data ({e})") from None
        except (zlib.error, gzip.BadGzipFile) as e:
            raise VaekitError(f"{path}: corrupt gzip data ({e})") from None
        except MemoryError:
            raise VaekitError(f"{path}: the array does not fit in memory") from None
        except OSError as e:
            raise VaekitError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_stream(f, path: Path, data_size: int | None, gz_size: int | None) -> np.ndarray:
    """Parse one IDX stream. data_size: bytes in a plain file; gz_size: bytes of a gzip file."""
    head = f.read(4)
    if len(head) < 4:
        raise VaekitError(f"{path}: not an IDX file (only {len(head)} bytes)")
    if head[:2] != b"\x00\x00":
        raise VaekitError(f"{path}: not an IDX file (magic number 0x{head.hex()})")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise VaekitError(f"{path}: unknown IDX data type code 0x{code:02X} (known: {known})")
    if not 1 <= ndim <= MAX_NDIM:
        raise VaekitError(f"{path}: IDX header says {ndim} dimensions; vaekit reads 1 to {MAX_NDIM}")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise VaekitError(
            f"{path}: truncated: the header needs {4 + 4 * ndim} bytes, the file holds {4 + len(raw_dims)}"
        )
    shape = tuple(int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    dtype = IDX_DTYPES[code]
    expected = prod(shape) * dtype.itemsize  # a Python int: no overflow for absurd headers
    described = f"{'x'.join(map(str, shape))} {dtype.name}"

    if data_size is not None:
        available = data_size - 4 - 4 * ndim
        check_size(str(path), described, expected, available, "the file")
        buf = bytearray(expected)
        if f.readinto(buf) != expected:  # the file shrank while we read it
            raise VaekitError(f"{path}: truncated while reading")
    else:
        if expected > MAX_GZIP_RATIO * gz_size:
            raise VaekitError(
                f"{path}: truncated or corrupt: header claims {described} = {expected} "
                f"bytes of data, more than a {gz_size}-byte gzip file can hold"
            )
        buf = _read_at_most(f, expected + 1)  # one byte more reveals trailing data
        if len(buf) < expected:
            raise VaekitError(
                f"{path}: truncated: header says {described} = {expected} bytes of data, the gzip file holds {len(buf)}"
            )
        if len(buf) > expected:
            raise VaekitError(f"{path}: trailing data after the {described} array the header describes")

    try:
        x = np.frombuffer(buf, dtype=dtype).reshape(shape)
    except ValueError:  # an empty array whose other dimensions overflow numpy's size: (0, 2^31, 2^31, 2^31)
        raise VaekitError(f"{path}: the IDX header's shape {described} is not one an array can have") from None
    if not x.dtype.isnative:  # swap in place: no second copy of a large array
        x = x.byteswap(inplace=True).view(x.dtype.newbyteorder("="))
    return x


def _read_at_most(f, limit: int) -> bytearray:
    """Up to `limit` bytes from a stream, in chunks, so memory grows with the data, not the claim."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = f.read(min(_CHUNK, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` (1 to 4 dimensions; uint8, int8, int16, int32, float32 or float64) as IDX.

    Gzipped when `path` ends with `.gz`.
    """
    path = Path(path)
    x = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(x.dtype.newbyteorder("="))
    if code is None:
        raise VaekitError(
            f"{path}: IDX cannot store dtype {x.dtype} (use uint8, int8, int16, int32, float32 or float64)"
        )
    if not 1 <= x.ndim <= MAX_NDIM:
        raise VaekitError(f"{path}: cannot write a {x.ndim}-d array as IDX (1 to {MAX_NDIM} dimensions)")
    if max(x.shape) >= 2**32:
        raise VaekitError(f"{path}: dimension too large for IDX: shape {x.shape}")
    header = bytes([0, 0, code, x.ndim]) + b"".join(d.to_bytes(4, "big") for d in x.shape)
    data = x.astype(IDX_DTYPES[code], copy=False).tobytes(order="C")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "wb") as f:
            f.write(header)
            f.write(data)
    except OSError as e:
        raise VaekitError(f"{path}: cannot write ({e.strerror or e})") from None


def check_size(where: str, described: str, expected: int, held: int, holder: str) -> None:
    """Refuse data whose header promises more bytes than `holder` holds (truncated) or fewer (trailing data),
    before anything of the promised size is allocated."""
    if expected > held:
        raise VaekitError(
            f"{where}: truncated or corrupt: header says {described} = {expected} bytes of data, {holder} holds {held}"
        )
    if expected < held:
        raise VaekitError(
            f"{where}: {held - expected} bytes of trailing data after the {described} array the header describes"
        )
