"""data.idx: strict IDX reading and writing, down to the header bytes, and IDX files fuzzed (every test writes
its own small files under tmp_path)."""

from __future__ import annotations

import gzip
import math
import time
import tracemalloc

import numpy as np
import pytest
from conftest import PROPERTY_SETTINGS, one_line
from hypothesis import given, settings
from hypothesis import strategies as st

from vaekit.data import idx
from vaekit.errors import VaekitError


def idx_bytes(header: bytes, n_data: int) -> bytes:
    """`header` and `n_data` random bytes (incompressible, so gzip keeps the size honest)."""
    return header + np.random.default_rng(0).integers(0, 256, n_data, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip_uint8(tmp_path, name):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    idx.write_idx(tmp_path / name, x)
    y = idx.read_idx(tmp_path / name)
    assert y.dtype == np.uint8 and y.shape == (5, 28, 28) and y.flags.writeable
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_other_dtypes_native_order(tmp_path, dtype):
    x = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype) * dtype(3)
    idx.write_idx(tmp_path / "a", x)
    y = idx.read_idx(tmp_path / "a")
    assert y.dtype == np.dtype(dtype) and y.dtype.isnative
    np.testing.assert_array_equal(x, y)


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    x = np.arange(10, dtype=np.float32)
    idx.write_idx(tmp_path / "a.gz", x)
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "plain-name"), x)


def test_idx_real_header_layout(tmp_path):
    """A hand-written MNIST-style label file: magic 0x00000801, one dimension of 3."""
    (tmp_path / "labels").write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x07\x02\x01")
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "labels"), [7, 2, 1])


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "not an IDX file (magic number 0x89504e47)"),
        (b"\x00", "not an IDX file (only 1 bytes)"),
        (b"\x00\x00\x07\x01" + bytes(8), "unknown IDX data type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x05" + bytes(20), "5 dimensions"),
        (b"\x00\x00\x08\x03" + bytes(4), "truncated: the header needs 16 bytes"),
    ],
)
def test_idx_bad_headers(tmp_path, data, needle):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(VaekitError) as e:
        idx.read_idx(tmp_path / "bad")
    assert needle in one_line(e) and str(tmp_path / "bad") in str(e.value)


def mnist_header(n=60000):
    return b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))


@pytest.mark.parametrize("n, gz", [(60000, False), (2, False), (2, True), (60000, True)])
def test_idx_truncated(tmp_path, n, gz):
    data = idx_bytes(mnist_header(n), 1000)
    (tmp_path / "t").write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(VaekitError, match="truncated") as e:
        idx.read_idx(tmp_path / "t")
    assert str(n * 784) in one_line(e)
    if n == 2:  # a gzip file far too small for its header is refused before reading it
        assert "holds 1000" in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_trailing_bytes(tmp_path, gz):
    data = idx_bytes(mnist_header(2), 2 * 784 + 3)
    (tmp_path / "t").write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(VaekitError, match="trailing data") as e:
        idx.read_idx(tmp_path / "t")
    one_line(e)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_huge_header_is_refused_without_allocating(tmp_path, gz):
    header = b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") * 3  # 2.16e14 bytes claimed
    data = header + bytes(16)
    (tmp_path / "huge").write_bytes(gzip.compress(data) if gz else data)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(VaekitError) as e:
            idx.read_idx(tmp_path / "huge")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 5_000_000
    assert "216000000000000" in one_line(e)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_empty_array_with_overflowing_dimensions_is_one_line(tmp_path, gz):
    """0 x 2^31 x 2^31 x 2^31 holds no bytes, but numpy cannot shape it (found by the fuzz test below)."""
    data = b"\x00\x00\x08\x04" + (0).to_bytes(4, "big") + (1 << 31).to_bytes(4, "big") * 3
    (tmp_path / "empty").write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(VaekitError) as e:
        idx.read_idx(tmp_path / "empty")
    assert one_line(e) == (
        f"{tmp_path / 'empty'}: the IDX header's shape 0x2147483648x2147483648x2147483648 uint8 is not one an "
        "array can have"
    )


def test_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(mnist_header(2), 2 * 784))
    (tmp_path / "c").write_bytes(good[:12] + b"\xff" * 40 + good[52:])
    (tmp_path / "t").write_bytes(good[: len(good) // 2])
    for name in ("c", "t"):
        with pytest.raises(VaekitError, match="gzip data") as e:
            idx.read_idx(tmp_path / name)
        one_line(e)


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
    ndim=st.integers(0, 5),
    dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=0, max_size=5),
    body=st.binary(max_size=64),
    gz=st.booleans(),
    cut=st.integers(0, 100),
)
def test_idx_fuzz_never_a_traceback(tmp_path_factory, code, ndim, dims, body, gz, cut):
    """Any header and body: an array whose size matches, or one VaekitError line; never anything else."""
    data = bytes([0, 0, code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims) + body
    data = gzip.compress(data) if gz else data
    path = tmp_path_factory.mktemp("fuzz") / "f"
    path.write_bytes(data[: len(data) - cut % (len(data) + 1)])
    try:
        x = idx.read_idx(path)
    except VaekitError as e:
        assert "\n" not in str(e)
    else:
        assert 1 <= x.ndim <= 4 and x.dtype.isnative


def test_idx_missing_file(tmp_path):
    with pytest.raises(VaekitError, match="cannot read"):
        idx.read_idx(tmp_path / "nope")


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(VaekitError, match="dtype uint16"):
        idx.write_idx(tmp_path / "a", np.zeros(3, np.uint16))
    with pytest.raises(VaekitError, match="5-d"):
        idx.write_idx(tmp_path / "a", np.zeros((1,) * 5, np.uint8))


# ------------------------------------------------------------------------------------------------------ arbitrary bytes


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=300), gz=st.booleans())
def test_read_idx_arbitrary_bytes(tmp_path, data, gz):
    path = write(tmp_path / "f", gzip.compress(data, mtime=0) if gz else data)
    try:
        x = idx.read_idx(path)
    except VaekitError as e:
        one_line(e)
    else:
        assert 1 <= x.ndim <= idx.MAX_NDIM and x.dtype.isnative and x.flags.writeable


@PROPERTY_SETTINGS
@given(
    code=st.sampled_from(sorted(idx.IDX_DTYPES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    tail=st.binary(max_size=400),
    exact=st.booleans(),
    gz=st.booleans(),
)
def test_read_idx_valid_header_random_tail(tmp_path, code, shape, tail, exact, gz):
    """A valid header and a random tail: the array when the tail is exactly the data (bit for bit), else
    one error line saying truncated or trailing."""
    dtype = idx.IDX_DTYPES[code]
    need = math.prod(shape) * dtype.itemsize
    if exact:
        tail = (tail * (need // max(len(tail), 1) + 1))[:need] if tail else bytes(need)
    head = bytes([0, 0, code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    raw = head + tail
    path = write(tmp_path / "f", gzip.compress(raw, mtime=0) if gz else raw)
    try:
        x = idx.read_idx(path)
    except VaekitError as e:
        one_line(e)
        assert len(tail) != need
        assert ("truncated" in str(e)) == (len(tail) < need) and ("trailing" in str(e)) == (len(tail) > need)
    else:
        assert len(tail) == need and x.shape == tuple(shape)
        np.testing.assert_array_equal(x, np.frombuffer(tail, dtype=dtype).reshape(shape))
