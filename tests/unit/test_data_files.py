"""data.files: user files (.npy, .npz, IDX under any name, a folder of images) read into examples, or one
error line; .npy/.npz of every dtype and shape, and damaged files, fuzzed. Every test writes its own files
under tmp_path."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PROPERTY_SETTINGS, one_line
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vaekit.data
from vaekit.data import files, idx
from vaekit.errors import VaekitError

# ------------------------------------------------------------------------------------------------ npy / npz / IDX files


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


# -------------------------------------------------------------------------------------------------------- image folders


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


# ------------------------------------------------------------------------------------ arbitrary and damaged .npy / .npz


def damaged(raw: bytes, cut: int, flips) -> bytes:
    """`raw` with each (index, mask) of `flips` XORed in, then the last `cut` bytes (mod length) cut off."""
    raw = bytearray(raw)
    for i, v in flips:
        raw[i % len(raw)] ^= v
    return bytes(raw[: len(raw) - cut % (len(raw) + 1)])


def load_or_clean_error(path) -> tuple | None:
    """files.load_file(path): (x, y) keeping the loader's promises (x (N, D) or (N, C, H, W), uint8 or
    float32; y None or int64 (N,)), or None after exactly one clean error line."""
    try:
        x, y = files.load_file(path)
    except VaekitError as e:
        one_line(e)
        return None
    assert x.ndim in (2, 4) and x.dtype in (np.uint8, np.float32)
    assert y is None or (y.dtype == np.int64 and y.shape == (len(x),))
    return x, y


def write(path, data: bytes):
    path.write_bytes(data)
    return path


DTYPES = (
    hnp.integer_dtypes()
    | hnp.unsigned_integer_dtypes()
    | hnp.floating_dtypes()
    | hnp.boolean_dtypes()
    | hnp.complex_number_dtypes()
    | hnp.datetime64_dtypes()
    | hnp.unicode_string_dtypes(max_len=3)
    | hnp.byte_string_dtypes(max_len=3)
)


ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))


def _check_examples(x: np.ndarray, a: np.ndarray) -> None:
    """What load_file promises: (N, C, H, W) with C in 1..4 or (N, D); uint8, or float32 in [0, 1]."""
    assert x.ndim in (2, 4) and len(x) == len(a) > 0 and x.flags.c_contiguous
    assert x.dtype in (np.uint8, np.float32)
    if x.ndim == 4:
        assert 1 <= x.shape[1] <= 4
    if x.dtype == np.float32:
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert x.size == a.size


@PROPERTY_SETTINGS
@given(a=ARRAYS, fortran=st.booleans())
def test_npy_loader_arbitrary_arrays(tmp_path, a, fortran):
    path = tmp_path / "a.npy"
    np.save(path, np.asfortranarray(a) if fortran else a)
    loaded = load_or_clean_error(path)
    if loaded is not None:
        assert loaded[1] is None
        _check_examples(loaded[0], a)


@PROPERTY_SETTINGS
@given(
    a=hnp.arrays(st.sampled_from(["u1", "<f4", ">f8", "<i2"]), hnp.array_shapes(min_dims=2, max_dims=4, max_side=4)),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
)
def test_npy_loader_damaged_files(tmp_path, a, cut, flips):
    """A real .npy, cut short and with bytes flipped: a result that keeps the promises, or one error line."""
    b = io.BytesIO()
    np.save(b, a)
    path = write(tmp_path / "a.npy", damaged(b.getvalue(), cut, flips))
    load_or_clean_error(path)


@PROPERTY_SETTINGS
@given(
    members=st.dictionaries(st.sampled_from(["x", "y", "images", "labels", "a", "x.txt"]), ARRAYS, max_size=3),
    compressed=st.booleans(),
    junk=st.binary(max_size=20),
)
def test_npz_loader_arbitrary_archives(tmp_path, members, compressed, junk):
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        for k, a in members.items():
            if k.endswith(".txt"):
                z.writestr(k, junk)
            else:
                b = io.BytesIO()
                np.save(b, a)
                z.writestr(k + ".npy", b.getvalue() + (junk if k == "a" else b""))
    load_or_clean_error(path)


@PROPERTY_SETTINGS
@given(
    compressed=st.booleans(),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_npz_loader_damaged_archives(tmp_path, compressed, cut, flips):
    """A real .npz (images and labels), damaged: a result that keeps the promises, or one error line."""
    b = io.BytesIO()
    x = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    (np.savez_compressed if compressed else np.savez)(b, x=x, y=np.arange(3))
    path = write(tmp_path / "a.npz", damaged(b.getvalue(), cut, flips))
    load_or_clean_error(path)


def _every_byte_damaged(raw: bytes):
    for i in range(len(raw)):
        for v in (0x01, 0x80, 0xFF):
            bad = bytearray(raw)
            bad[i] ^= v
            yield bytes(bad)


@pytest.mark.parametrize("kind", ["npz", "npz-compressed", "npy", "idx.gz"])
def test_every_single_byte_corruption(tmp_path, kind):
    """Each byte of a small real file flipped three ways (about 1500 files): a result or one error line.
    (zipfile raised NotImplementedError and RuntimeError for flipped method/flag bytes.)"""
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    b = io.BytesIO()
    if kind.startswith("npz"):
        (np.savez_compressed if kind.endswith("compressed") else np.savez)(b, x=x, y=np.arange(2))
    elif kind == "npy":
        np.save(b, x)
    else:
        b.write(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4]) + x.tobytes(), mtime=0))
    path = tmp_path / ("a." + kind.split("-")[0])
    for raw in _every_byte_damaged(b.getvalue()):
        path.write_bytes(raw)
        load_or_clean_error(path)
