"""Write the bad-input corpus: tests/corpus/ (deterministic: the same bytes on every run).

    python scripts/make_corpus.py [OUT]        # default: tests/corpus

A case is a few small files and the `vaekit` command that must refuse them: exit 2, one line on
stderr, `error: ...`, naming the file (or flag) and the problem, no traceback, and nothing in an
existing run folder changed. `OUT/cases.json` lists the cases; tests/integration/test_cli_corpus.py runs them all
and checks that this script still writes exactly the files that are checked in.

A case in cases.json:
    id       unique name;  about: one line, what is wrong
    argv     the command, with placeholders: {corpus} this folder, {run} a copy of a real trained
             run folder (its files must not change), {tmp} an empty folder for outputs
    needles  strings the error line must contain (case-insensitive): the file or flag, the problem
    patch    (optional) changes made to a private copy of the run before the command:
             [{"path": "checkpoint/state.safetensors", "op": "truncate", "size": 100}, ...]
             ops: truncate (to `size` bytes), delete, copy (from `src` in the corpus)
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES: list[dict] = []
SHAPE = (1, 8, 8)  # the tiny model folders' input shape


def case(id: str, about: str, argv: list, needles: list[str], patch: list[dict] | None = None) -> None:
    assert all(c["id"] != id for c in CASES), id
    c = {"id": id, "about": about, "argv": [str(a) for a in argv], "needles": needles}
    if patch:
        c["patch"] = patch
    CASES.append(c)


def write(out: Path, rel: str, data: bytes) -> str:
    p = out / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return "{corpus}/" + rel


# ----------------------------------------------------------------------------------------- byte makers


def idx(code: int, shape: tuple[int, ...], data: bytes | None = None, ndim: int | None = None) -> bytes:
    """An IDX header (magic 00 00, type code, ndim, big-endian dims) and `data` (zeros by default)."""
    head = bytes([0, 0, code, len(shape) if ndim is None else ndim]) + b"".join(d.to_bytes(4, "big") for d in shape)
    if data is None:
        data = bytes(int(np.prod(shape)) if shape else 0)
    return head + data


def npy(header: dict | str, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy file with a hand-written header (numpy's own writer refuses the odd ones)."""
    h = (header if isinstance(header, str) else repr(header)).encode("latin1")
    pre = b"\x93NUMPY" + bytes(version)
    size = 2 if version == (1, 0) else 4
    h += b" " * ((64 - (len(pre) + size + len(h) + 1) % 64) % 64) + b"\n"
    return pre + len(h).to_bytes(size, "little") + h + data


def npy_of(x: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, x, allow_pickle=True)
    return b.getvalue()


def npz(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of `members` with fixed timestamps (np.savez stamps the current time)."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)
    return b.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def png_chunks(w: int, h: int, idat: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A PNG written chunk by chunk, so its header can claim what the pixels do not hold."""

    def chunk(kind: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + kind + d + struct.pack(">I", zlib.crc32(kind + d))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png(x: np.ndarray) -> bytes:
    """A real PNG of an (H, W) uint8 or uint16 array."""
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(x).save(b, "PNG")
    return b.getvalue()


def safetensors(tensors: dict[str, np.ndarray], header_extra: dict | None = None) -> bytes:
    """A safetensors file written by hand (little-endian float32), optionally with a forged header."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header.update(header_extra or {})
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def tiny_model(**overrides) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json (as a dict) and weights of a 64-8-2 VAE; the weights come from numpy's RNG, not from
    torch's initialisation, so the bytes do not change with the torch version."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from vaekit.config import ModelConfig, RunConfig, TrainConfig
    from vaekit.models import build_model

    trained = TrainConfig(epochs=1, amp=False, compile=False)  # a run's config.json holds --amp/--compile resolved
    cfg = RunConfig(ModelConfig(input_shape=SHAPE, hidden=(8,), latent_dim=2, **overrides), trained)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(cfg.model).state_dict().items()}
    g = np.random.default_rng(0)
    weights = {k: (g.standard_normal(s) * 0.1).astype(np.float32) for k, s in sorted(shapes.items())}
    return json.loads(cfg.to_json()), weights


# ------------------------------------------------------------------------------------------------ cases


def train_new(data: str) -> list:
    return ["train", "--data", data, "--epochs", 1, "--quiet", "--out", "{tmp}/run"]


def train_over_run(data: str) -> list:
    """--overwrite on the existing run: bad data must be refused before anything is deleted."""
    return ["train", "--data", data, "--epochs", 1, "--quiet", "--out", "{run}", "--overwrite"]


def eval_on(data: str) -> list:
    return ["eval", "{run}", "--data", data, "--iw-samples", 0]


def encode_on(data: str) -> list:
    return ["encode", "{run}", "--data", data, "-o", "{tmp}/codes.npy"]


def data_cases(out: Path) -> None:
    def d(name: str, data: bytes) -> str:
        return write(out, "data/" + name, data)

    # the control, and the good data of the config and flag cases (tests/integration/test_cli_corpus.py checks it loads)
    d(
        "good.npz",
        npz(
            {
                "x.npy": npy_of((np.arange(60 * 64) % 256).astype(np.uint8).reshape(60, 8, 8)),
                "y.npy": npy_of(np.arange(60) % 3),
            }
        ),
    )

    # IDX
    f = d("wrong-magic-idx3-ubyte", b"\x01\x02\x08\x03" + idx(0x08, (2, 4, 4))[4:])
    case(
        "idx_wrong_magic", "IDX file whose first two bytes are not zero", train_new(f), ["wrong-magic", "magic number"]
    )
    f = d("truncated-idx3-ubyte", idx(0x08, (10, 28, 28))[: 16 + 100])
    case(
        "idx_truncated",
        "IDX header says 10x28x28, the file holds 100 bytes of data",
        train_over_run(f),
        ["truncated-idx3-ubyte", "truncated"],
    )
    f = d("huge-header-idx3-ubyte", idx(0x08, (4_000_000_000, 4_000_000_000, 4_000_000_000), b"\x00" * 64))
    case(
        "idx_huge_header",
        "IDX header claims 4e9^3 bytes; must be refused before any allocation",
        eval_on(f),
        ["huge-header", "header says"],
    )
    f = d("bad-dtype-idx3-ubyte", idx(0x0A, (2, 4, 4)))
    case("idx_bad_dtype", "IDX data-type code 0x0A (not a known type)", encode_on(f), ["bad-dtype", "type code"])
    f = d("ndim0-idx", idx(0x08, (), ndim=0))
    case("idx_ndim0", "IDX header with 0 dimensions", train_new(f), ["ndim0-idx", "0 dimensions"])
    f = d("ndim5-idx", idx(0x08, (1, 1, 2, 2, 2)))
    case("idx_ndim5", "IDX header with 5 dimensions", train_new(f), ["ndim5-idx", "5 dimensions"])
    f = d("trailing-idx3-ubyte", idx(0x08, (2, 4, 4)) + b"\xff" * 7)
    case("idx_trailing_bytes", "IDX file with 7 bytes after the array", eval_on(f), ["trailing-idx3", "trailing"])
    f = d("tiny-idx", b"\x00\x00\x08")
    case("idx_three_bytes", "a 3-byte file that starts like IDX", train_new(f), ["tiny-idx", "not an IDX file"])
    f = d("labels-idx1-ubyte", idx(0x08, (10,)))
    case(
        "idx_labels_as_images",
        "an IDX label file (1-d) given as the images",
        train_new(f),
        ["labels-idx1-ubyte", "shape"],
    )
    f = d("float-range-idx3", idx(0x0D, (2, 2, 2), np.full(8, 2.5, ">f4").tobytes()))
    case("idx_float_out_of_range", "float32 IDX with pixel values 2.5", train_new(f), ["float-range-idx3", "[0, 1]"])

    # gzip
    f = d("corrupt-idx3-ubyte.gz", gz(idx(0x08, (4, 8, 8)))[:10] + b"\xde\xad\xbe\xef" * 8)
    case(
        "gz_corrupt_stream",
        "a gzip header followed by bytes that are not deflate data",
        train_new(f),
        ["corrupt-idx3-ubyte.gz", "gzip"],
    )
    full = gz(idx(0x08, (16, 8, 8), bytes(range(256)) * 4))
    f = d("truncated-idx3-ubyte.gz", full[: len(full) // 2])
    case("gz_truncated", "a gzipped IDX file cut in half", train_over_run(f), ["truncated-idx3-ubyte.gz", "truncated"])
    bad_crc = bytearray(gz(idx(0x08, (2, 4, 4))))
    bad_crc[-8] ^= 0xFF
    f = d("bad-crc-idx3-ubyte.gz", bytes(bad_crc))
    case("gz_bad_crc", "a gzipped IDX file whose CRC does not match", encode_on(f), ["bad-crc", "gzip"])
    f = d("claims-huge-idx3-ubyte.gz", gz(idx(0x08, (60_000, 28_000, 28_000), b"\x00" * 64)))
    case(
        "gz_header_claims_huge",
        "gzip whose IDX header claims 47 TB: more than the gzip file could hold",
        train_new(f),
        ["claims-huge", "more than"],
    )
    f = d("bomb-idx3-ubyte.gz", gz(idx(0x08, (2, 4, 4)) + bytes(20_000_000)))
    case(
        "gz_bomb_trailing",
        "20 kB of gzip that inflates to 20 MB of zeros after a 32-byte array (read no further)",
        eval_on(f),
        ["bomb-idx3-ubyte.gz", "trailing"],
    )

    # .npy
    x = np.zeros((10, 8, 8), np.float32)
    x[3, 2, 2] = np.nan
    f = d("nan.npy", npy_of(x))
    case("npy_nan", "float32 images with one NaN", train_over_run(f), ["nan.npy", "NaN"])
    x = np.zeros((10, 8, 8), ">f8")
    x[9, 7, 7] = -np.inf
    f = d("inf-big-endian.npy", npy_of(x))
    case("npy_inf", "big-endian float64 images with -inf", eval_on(f), ["inf-big-endian.npy", "infinite"])
    f = d("object.npy", npy_of(np.array([{"a": 1}, [1, 2]], dtype=object)))
    case("npy_pickled_objects", "an object array (a pickle inside the .npy)", train_new(f), ["object.npy", "pickle"])
    f = d("one-d.npy", npy_of(np.zeros(10, np.float32)))
    case("npy_1d", "a 1-d array", encode_on(f), ["one-d.npy", "shape"])
    f = d("five-d.npy", npy_of(np.zeros((2, 3, 4, 5, 6), np.float32)))
    case("npy_5d", "a 5-d array", train_new(f), ["five-d.npy", "shape"])
    f = d("empty.npy", npy_of(np.zeros((0, 8, 8), np.uint8)))
    case("npy_empty", "N = 0 examples", train_over_run(f), ["empty.npy", "no data"])
    f = d("range.npy", npy_of(np.linspace(-1, 3, 128, dtype=np.float32).reshape(2, 8, 8)))
    case("npy_float_out_of_range", "floats from -1 to 3", train_new(f), ["range.npy", "[0, 1]"])
    f = d("int-range.npy", npy_of(np.arange(128, dtype=np.int32).reshape(2, 8, 8) * 3))
    case("npy_int_out_of_range", "int32 values up to 381", train_new(f), ["int-range.npy", "0..255"])
    f = d("fortran-bad-flag.npy", npy({"descr": "<f4", "fortran_order": "maybe", "shape": (2, 4, 4)}, bytes(128)))
    case(
        "npy_fortran_order_not_bool",
        "header's fortran_order is 'maybe'",
        train_new(f),
        ["fortran-bad-flag.npy", "fortran_order"],
    )
    f = d("fortran-huge.npy", npy({"descr": "<f4", "fortran_order": True, "shape": (10**12, 28, 28)}, bytes(128)))
    case(
        "npy_fortran_huge_shape",
        "a Fortran-order header claiming 10^12 x 28 x 28 over 128 bytes",
        eval_on(f),
        ["fortran-huge.npy", "truncated"],
    )
    f = d("truncated.npy", npy_of(np.zeros((10, 8, 8), np.float32))[:300])
    case("npy_truncated", "a float32 .npy cut short", train_new(f), ["truncated.npy", "truncated"])
    f = d("trailing.npy", npy_of(np.zeros((2, 8, 8), np.uint8)) + npy_of(np.ones((2, 8, 8), np.uint8)))
    case(
        "npy_trailing_data",
        "two arrays saved into one .npy: only the first would be read",
        train_new(f),
        ["trailing.npy", "trailing"],
    )
    f = d("header-code.npy", npy("__import__('os').system('echo pwned')", bytes(128)))
    case(
        "npy_header_is_code",
        "a header that is a Python expression, not a dict literal",
        train_new(f),
        ["header-code.npy", "corrupt"],
    )
    f = d("version9.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (2, 4, 4)}, bytes(128), (9, 0)))
    case("npy_unknown_version", "format version 9.0", encode_on(f), ["version9.npy", "version"])
    f = d("complex.npy", npy_of(np.zeros((2, 4, 4), np.complex64)))
    case("npy_complex", "complex64 pixels", train_new(f), ["complex.npy", "dtype"])
    f = d("text.npy", b"0 1 2 3\n4 5 6 7\n")
    case("npy_not_numpy", "a text file named .npy", train_new(f), ["text.npy", "not a NumPy"])

    # .npz
    f = d("no-arrays.npz", npz({}))
    case("npz_no_arrays", "an empty archive", train_new(f), ["no-arrays.npz", "keys: none"])
    f = d(
        "wrong-keys.npz",
        npz({"a.npy": npy_of(np.zeros((2, 4, 4), np.uint8)), "b.npy": npy_of(np.zeros((2, 4, 4), np.uint8))}),
    )
    case("npz_wrong_keys", "two arrays, neither named x nor images", train_over_run(f), ["wrong-keys.npz", "'x'"])
    f = d("pickled.npz", npz({"x.npy": npy_of(np.array([None, 1], dtype=object))}))
    case("npz_pickled", "the examples are an object array (pickle)", train_new(f), ["pickled.npz", "pickle"])
    f = d(
        "pickled-labels.npz",
        npz({"x.npy": npy_of(np.zeros((2, 4, 4), np.uint8)), "y.npy": npy_of(np.array(["a", 2], dtype=object))}),
    )
    case("npz_pickled_labels", "good examples, pickled labels", eval_on(f), ["pickled-labels.npz", "pickle"])
    f = d("text-member.npz", npz({"x.npy": b"these are not the bytes of an array"}))
    case("npz_member_not_npy", "x.npy inside the archive is text", train_new(f), ["text-member.npz[x]", "not a .npy"])
    f = d("readme-only.npz", npz({"README.txt": b"hello"}))
    case("npz_non_array_member", "the only member is README.txt", train_new(f), ["readme-only.npz", "README"])
    f = d(
        "claims-huge.npz",
        npz({"x.npy": npy({"descr": "<f4", "fortran_order": False, "shape": (10**6, 1000, 1000)}, bytes(128))}),
    )
    case(
        "npz_member_claims_huge",
        "a member whose header claims 4 TB over 128 bytes: no allocation",
        train_new(f),
        ["claims-huge.npz", "truncated"],
    )
    f = d("labels-short.npz", npz({"x.npy": npy_of(np.zeros((10, 4, 4), np.uint8)), "y.npy": npy_of(np.arange(9))}))
    case("npz_labels_mismatch", "10 examples, 9 labels", train_new(f), ["labels-short.npz", "labels"])
    f = d(
        "labels-float.npz",
        npz({"x.npy": npy_of(np.zeros((3, 4, 4), np.uint8)), "y.npy": npy_of(np.array([0.5, 1, 2]))}),
    )
    case("npz_labels_float", "float labels", encode_on(f), ["labels-float.npz", "integers"])
    method99 = bytearray(npz({"x.npy": npy_of(np.zeros((2, 4, 4), np.uint8))}))
    for at in (8, method99.rindex(b"PK\x01\x02") + 10):  # the method field, local and central headers
        method99[at : at + 2] = (99).to_bytes(2, "little")
    f = d("method-99.npz", bytes(method99))
    case(
        "npz_unknown_compression",
        "a member compressed with method 99 (zipfile: NotImplementedError)",
        train_new(f),
        ["method-99.npz", "compression method"],
    )
    f = d("not-a-zip.npz", b"PK\x03\x04" + bytes(60))
    case("npz_corrupt_zip", "a zip signature, then zeros", train_new(f), ["not-a-zip.npz", "corrupt"])

    # image folders
    for name, files, about, needles, cmd in [
        ("img-empty", {".keep": b""}, "a folder with no images", ["img-empty", "no images"], train_new),
        (
            "img-mixed-sizes",
            {"a.png": png(np.zeros((8, 8), np.uint8)), "b.png": png(np.zeros((9, 8), np.uint8))},
            "an 8x8 and an 8x9 image",
            ["img-mixed-sizes", "mixed image sizes"],
            train_over_run,
        ),
        (
            "img-corrupt",
            {"a.png": png(np.zeros((8, 8), np.uint8)), "b.png": png(np.zeros((8, 8), np.uint8))[:40]},
            "one PNG cut after its header",
            ["img-corrupt/b.png", "not a readable image"],
            train_new,
        ),
        (
            "img-not-images",
            {"notes.txt": b"hello", "data.csv": b"1,2\n"},
            "only text files",
            ["img-not-images", "no images"],
            train_new,
        ),
        (
            "img-16bit",
            {"a.png": png(np.full((8, 8), 40000, np.uint16))},
            "a 16-bit grey PNG",
            ["img-16bit", "16-bit"],
            encode_on,
        ),
        (
            "img-empty-label",
            {"cat/a.png": png(np.zeros((8, 8), np.uint8)), "dog/readme.txt": b"x"},
            "labelled layout where one label folder has no images",
            ["img-empty-label/dog", "no images"],
            train_new,
        ),
        (
            "img-text-as-png",
            {"a.png": b"GIF89a but not really"},
            "a text file named .png",
            ["img-text-as-png/a.png", "not a readable image"],
            train_new,
        ),
        (
            "img-bomb-header",
            {"a.png": png_chunks(100_000, 100_000, zlib.compress(bytes(100)))},
            "a PNG header claiming 100000x100000 pixels",
            ["img-bomb-header/a.png", "decompression bomb"],
            train_new,
        ),
        (
            "img-huge",
            {"a.png": png_chunks(9000, 9000, zlib.compress(bytes(9001 * 9000), 9))},
            "a real 9000x9000 PNG of 79 kB: an MLP on it would need 1 TB (was: an allocation error's traceback)",
            ["img-huge", "parameters"],
            train_new,
        ),
        (
            "img-bomb-warning",
            {"a.png": png_chunks(10_000, 10_000, zlib.compress(bytes(100)))},
            "a PNG claiming 10^8 pixels (Pillow only warns): one line, no warning",
            ["img-bomb-warning/a.png", "decompression bomb"],
            train_new,
        ),
    ]:
        for rel, data in files.items():
            write(out, f"images/{name}/{rel}", data)
        case(name.replace("-", "_"), about, cmd("{corpus}/images/" + name), needles)
    write(out, "images/img-single/a.png", png(np.zeros((8, 8), np.uint8)))
    case(
        "img_single_file",
        "one image file instead of a folder",
        train_new("{corpus}/images/img-single/a.png"),
        ["img-single/a.png", "folder"],
    )


def config_cases(out: Path) -> None:
    def cfg(name: str, text: str | bytes, about: str, needles: list[str], run: bool = False) -> None:
        f = write(out, "configs/" + name, text if isinstance(text, bytes) else text.encode())
        argv = ["train", "--data", "{corpus}/data/good.npz", "--config", f, "--quiet"]
        argv += ["--out", "{run}", "--overwrite"] if run else ["--out", "{tmp}/run"]
        case("cfg_" + name.replace("-", "_").replace(".", "_"), about, argv, [name, *needles])

    cfg("unknown-key.yaml", "epochs: 1\nlatent_dims: 4\n", "a misspelt key", ["latent_dims", "unknown"], run=True)
    cfg(
        "wrong-type.yaml",
        "epochs: 1\nlatent_dim: twenty\n",
        "a string where an integer goes",
        ["latent_dim", "integer"],
    )
    cfg("wrong-type.json", '{"epochs": 1, "lr": [0.001]}', "JSON: a list where a number goes", ["lr", "number"])
    cfg("null-value.yaml", "epochs:\n", "a key with no value", ["epochs", "None"])
    cfg("not-a-mapping.yaml", "- epochs\n- 1\n", "a list, not a mapping", ["mapping"])
    cfg("scalar.json", "42", "JSON: a bare number", ["mapping"])
    cfg("syntax.yaml", "epochs: [1, 2\nlr: 0.1\n", "an unclosed bracket", ["not valid"])
    cfg("syntax.json", '{"epochs": 1,,}', "JSON with a doubled comma", ["not valid"])
    cfg("binary.yaml", bytes(range(256)) * 4, "binary garbage", ["not text"])
    cfg("huge-int.yaml", "epochs: 1\nlatent_dim: 100000000000000000000\n", "latent_dim 1e20", ["latent-dim", "at most"])
    cfg(
        "huge-float.yaml",
        "epochs: 1\nlikelihood: gaussian\nsigma: 1.0e300\n",
        "sigma 1e300 (overflows float32)",
        ["sigma", "too large"],
    )
    cfg("long-int.yaml", "epochs: " + "9" * 5000 + "\n", "an integer with 5000 digits", ["4300 digits"])
    cfg("negative-epochs.yaml", "epochs: -3\n", "epochs -3", ["epochs", "positive"], run=True)
    cfg(
        "negative-seed.yaml",
        "epochs: 1\nseed: -1\n",
        "seed -1 (numpy seeds are 0..2^32-1)",
        ["seed", "0..4294967295"],
        run=True,
    )
    cfg(
        "python-tag.yaml",
        "epochs: !!python/object/apply:os.system ['echo pwned']\n",
        "a YAML tag that would run code under an unsafe loader",
        ["not valid"],
    )
    cfg("deep.json", "[" * 5000 + "]" * 5000, "5000 nested lists (deeper than Python's recursion limit)", ["not valid"])
    alias = (
        "[&a [1,1,1,1,1,1,1,1,1,1]"
        + "".join(f", &{b} [{', '.join(['*' + a] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi"))
        + "]"
    )
    cfg(
        "alias-bomb.yaml",
        f"latent_dim: {alias}\n",
        "a billion-laughs alias bomb as a value (the error must not print it)",
        ["latent_dim", "integer"],
    )
    cfg(
        "bool-string.yaml", "epochs: 1\namp: 'yes'\n", "a quoted string where true/false goes", ["amp", "true or false"]
    )
    cfg(
        "duplicate-key.yaml",
        "epochs: 1\nlr: 0.01\nepochs: 50\n",
        "a key twice (was: the last one silently)",
        ["epochs", "duplicate"],
    )
    cfg("duplicate-key.json", '{"epochs": 1, "epochs": 50}', "JSON: a key twice", ["epochs", "duplicate"])


def flag_cases(out: Path) -> None:
    good = "{corpus}/data/good.npz"
    big = "9" * 30

    def train(id, about, extra, needles, where="{tmp}/run", *more):
        case(id, about, ["train", "--data", good, "--epochs", 1, "--quiet", "--out", where, *more, *extra], needles)

    train("flag_nonnumeric_batch_size", "--batch-size ten", ["--batch-size", "ten"], ["--batch-size", "invalid int"])
    train(
        "flag_hidden_commas",
        "--hidden ,, (was: an MLP without hidden layers)",
        ["--hidden", ",,"],
        ["--hidden", "expected integers"],
    )
    train(
        "flag_negative_epochs_overwrite",
        "--epochs -1 with --overwrite on an existing run",
        ["--epochs", -1],
        ["--epochs", "positive"],
        "{run}",
        "--overwrite",
    )
    train(
        "flag_negative_seed_overwrite",
        "--seed -5 with --overwrite on an existing run (was: the run deleted, then a numpy traceback)",
        ["--seed", -5],
        ["--seed", "0..4294967295"],
        "{run}",
        "--overwrite",
    )
    train("flag_huge_seed", "--seed 10^30", ["--seed", big], ["--seed", "0..4294967295"])
    train("flag_huge_threads", "--threads 10^30", ["--threads", big], ["--threads", "at most"])
    train("flag_huge_latent_dim", "--latent-dim 10^30", ["--latent-dim", big], ["--latent-dim", "at most"])
    train("flag_huge_iw_k", "--iw-k 10^30", ["--iw-k", big], ["--iw-k", "at most"])
    train(
        "flag_huge_free_bits",
        "--free-bits 1e300 (overflows float32)",
        ["--free-bits", "1e300"],
        ["--free-bits", "too large"],
    )
    train(
        "flag_unknown_likelihood_resume",
        "--likelihood poisson on --resume",
        ["--likelihood", "poisson"],
        ["--likelihood", "poisson"],
        "{run}",
        "--resume",
    )
    train(
        "flag_out_under_a_file", "--out inside a regular file", [], ["good.npz/run", "not a directory"], good + "/run"
    )
    case(
        "flag_eval_unknown_split",
        "eval --split valid",
        ["eval", "{run}", "--split", "valid"],
        ["--split", "invalid choice"],
    )
    case(
        "flag_eval_unknown_device",
        "eval --device tpu",
        ["eval", "{run}", "--device", "tpu", "--iw-samples", 0],
        ["--device", "invalid choice"],
    )
    case(
        "flag_eval_huge_seed",
        "eval --seed 10^30",
        ["eval", "{run}", "--seed", big, "--limit", 5],
        ["--seed", "0..4294967295"],
    )
    case(
        "flag_eval_huge_iw_samples",
        "eval --iw-samples 10^30 (was: an endless loop)",
        ["eval", "{run}", "--iw-samples", big],
        ["--iw-samples", "0..1000000"],
    )
    case(
        "flag_sample_huge_n", "sample -n 10^30", ["sample", "{run}", "-n", big, "-o", "{tmp}/s.png"], ["-n", "1..10000"]
    )
    case(
        "flag_sample_huge_seed",
        "sample --seed 10^30",
        ["sample", "{run}", "--seed", big, "-o", "{tmp}/s.png"],
        ["--seed", "0..4294967295"],
    )
    case(
        "flag_sample_unknown_extension",
        "sample -o s.xyz",
        ["sample", "{run}", "-o", "{tmp}/s.xyz"],
        ["s.xyz", "cannot write images"],
    )
    case(
        "flag_sample_output_is_a_folder",
        "sample -o FOLDER",
        ["sample", "{run}", "-n", 4, "-o", "{tmp}"],
        ["--output", "is a folder"],
    )
    case(
        "flag_interpolate_huge_steps",
        "interpolate --steps 10^30",
        ["interpolate", "{run}", "--from", 0, "--to", 1, "--steps", big, "-o", "{tmp}/i.png"],
        ["--steps", "1..10000"],
    )
    case(
        "flag_reconstruct_huge_n",
        "reconstruct -n 10^30",
        ["reconstruct", "{run}", "-n", big, "-o", "{tmp}/r.png"],
        ["-n", "1..10000"],
    )
    case(
        "flag_score_output_is_a_folder",
        "score -o FOLDER",
        ["score", "{run}", "--data", good, "--iw-samples", 0, "-o", "{tmp}"],
        ["--output", "is a folder"],
    )


def model_cases(out: Path) -> None:
    """Model folders (sample or eval on them); needles[0] is the folder's file that is wrong."""
    config, weights = tiny_model()

    def folder(
        name: str,
        about: str,
        file: str,
        problem: list[str],
        cfg=config,
        w=weights,
        raw: bytes | None = None,
        cfg_text: str | None = None,
        skip: tuple[str, ...] = (),
        cmd: str = "sample",
    ) -> None:
        rel = "models/" + name
        if "config.json" not in skip:
            write(out, rel + "/config.json", (cfg_text if cfg_text is not None else json.dumps(cfg, indent=2)).encode())
        if "model.safetensors" not in skip:
            write(out, rel + "/model.safetensors", raw if raw is not None else safetensors(w))
        m = "{corpus}/" + rel
        argv = (
            ["sample", m, "-n", 4, "-o", "{tmp}/s.png"]
            if cmd == "sample"
            else ["eval", m, "--data", "{corpus}/data/good.npz", "--iw-samples", 0]
        )
        if name != "good":  # the control: it must load (tests/integration/test_cli_corpus.py checks that it does)
            case("model_" + name.replace("-", "_"), about, argv, [f"{name}/{file}".rstrip("/"), *problem])

    folder("good", "a well-formed model folder", "", [])
    weights_file = "model.safetensors"
    full = safetensors(weights)
    folder(
        "truncated",
        "model.safetensors cut in half",
        weights_file,
        ["not a readable safetensors"],
        raw=full[: len(full) // 2],
    )
    n = struct.unpack("<Q", full[:8])[0]
    forged = json.loads(full[8 : 8 + n])
    first = sorted(forged)[0]
    forged[first]["data_offsets"] = [0, 10**15]
    h = json.dumps(forged).encode()
    folder(
        "forged-offsets",
        "a header whose first tensor claims a petabyte of data",
        weights_file,
        ["not a readable safetensors", "offset"],
        raw=struct.pack("<Q", len(h)) + h + full[8 + n :],
        cmd="eval",
    )
    folder(
        "forged-header-length",
        "the 8-byte header length claims 2^62 bytes",
        weights_file,
        ["not a readable safetensors", "header"],
        raw=struct.pack("<Q", 2**62) + full[8:],
    )
    forged = json.loads(full[8 : 8 + n])
    forged[first]["shape"] = [10**9, 10**9]
    h = json.dumps(forged).encode()
    folder(
        "forged-shape",
        "a header whose first tensor claims shape 1e9 x 1e9 over its real bytes",
        weights_file,
        ["not a readable safetensors", "shape"],
        raw=struct.pack("<Q", len(h)) + h + full[8 + n :],
    )
    folder(
        "header-not-json",
        "a header length, then bytes that are not JSON",
        weights_file,
        ["not a readable safetensors", "header"],
        raw=struct.pack("<Q", 16) + b"\xff" * 16 + bytes(64),
    )
    folder(
        "pickle-lookalike",
        "model.safetensors holding a pickle (what torch.save writes)",
        weights_file,
        ["not a readable safetensors"],
        raw=b"\x80\x04\x95" + b"\x00" * 5 + b"cos\nsystem\n(S'echo pwned'\ntR." + bytes(40),
    )
    other = json.loads(json.dumps(config))
    other["model"]["latent_dim"] = 3
    folder(
        "other-shape",
        "config.json for a 3-d latent space, weights for a 2-d one",
        weights_file,
        ["has shape", "config.json implies"],
        cfg=other,
        cmd="eval",
    )
    huge = json.loads(json.dumps(config))
    huge["model"]["input_shape"] = [1, 1_000_000, 1_000_000]
    folder(
        "config-huge-shape",
        "config.json claims 10^12-pixel inputs (was: the model built first, an allocation of 32 TB)",
        weights_file,
        ["has shape", "config.json implies"],
        cfg=huge,
    )
    folder(
        "missing-weights",
        "config.json only",
        "",
        ["not a model folder", "model.safetensors"],
        skip=("model.safetensors",),
    )
    folder("missing-config", "model.safetensors only", "", ["not a model folder", "config.json"], skip=("config.json",))
    folder(
        "config-not-json", "config.json that is not JSON", "config.json", ["not valid JSON"], cfg_text="{'model': vae}"
    )
    folder(
        "config-no-model",
        "config.json without its model section",
        "config.json",
        ["no 'model' section"],
        cfg_text='{"train": {}}',
    )
    bad_value = json.loads(json.dumps(config))
    bad_value["model"]["latent_dim"] = 0
    folder(
        "config-bad-value",
        "config.json with latent_dim 0 (was: an error naming a flag, not the file)",
        "config.json",
        ["latent-dim", "positive"],
        cfg=bad_value,
    )
    folder(
        "config-wrong-type",
        'config.json with latent_dim "2"',
        "config.json",
        ["latent_dim", "integer"],
        cfg_text=json.dumps(config).replace('"latent_dim": 2', '"latent_dim": "2"'),
    )
    folder(
        "config-long-int",
        "config.json with a 5000-digit integer",
        "config.json",
        ["not valid JSON", "4300 digits"],
        cfg_text=json.dumps(config).replace('"latent_dim": 2', '"latent_dim": ' + "2" * 5000),
    )
    folder(
        "config-deep",
        "config.json nested 5000 levels deep",
        "config.json",
        ["not valid JSON", "nested"],
        cfg_text='{"model": ' + "[" * 5000 + "]" * 5000 + "}",
    )
    w = dict(weights)
    k = sorted(w)[0]
    w[k] = w[k].copy()
    w[k].flat[0] = np.nan
    folder("weights-nan", "a weight is NaN", weights_file, ["NaN"], w=w, cmd="eval")
    folder(
        "extra-tensor",
        "an unexpected tensor besides the model's",
        weights_file,
        ["unexpected", "backdoor"],
        w={**weights, "backdoor.weight": np.ones(3, np.float32)},
    )
    folder(
        "missing-tensor",
        "one of the model's tensors is absent",
        weights_file,
        ["missing", "encoder"],
        w={k: v for k, v in weights.items() if k != sorted(weights)[-1]},
    )


def run_cases(out: Path) -> None:
    """Commands on a private copy of the real run, damaged first; the damaged copy must stay as it was."""
    ckpt = "checkpoint/state.safetensors"
    flags = ["--epochs", 3, "--quiet", "--out", "{run}", "--resume"]
    case(
        "resume_truncated_checkpoint",
        "--resume from a checkpoint cut to 100 bytes",
        ["train", *flags],
        ["checkpoint/state.safetensors", "not a readable safetensors"],
        patch=[{"path": ckpt, "op": "truncate", "size": 100}],
    )
    write(out, "runs/foreign-checkpoint.safetensors", safetensors({"x": np.zeros(2, np.float32)}))
    case(
        "resume_foreign_checkpoint",
        "--resume from a safetensors file that is no vaekit checkpoint",
        ["train", *flags],
        ["checkpoint/state.safetensors", "does not match"],
        patch=[{"path": ckpt, "op": "copy", "src": "runs/foreign-checkpoint.safetensors"}],
    )
    case(
        "resume_missing_config",
        "--resume in a run folder whose config.json is gone",
        ["train", *flags],
        ["config.json", "missing"],
        patch=[{"path": "config.json", "op": "delete"}],
    )
    case(
        "eval_run_missing_weights",
        "eval a run whose model.safetensors is gone",
        ["eval", "{run}"],
        ["run", "not a model folder"],
        patch=[{"path": "model.safetensors", "op": "delete"}],
    )


def score_cases(out: Path) -> None:
    """`vaekit score` (issue 15): data of another shape, a damaged or foreign RUN/threshold.json, --fpr outside
    (0, 1), -log p(x) asked of an autoencoder, a threshold asked of a run without a validation split."""
    sys.path.insert(0, str(ROOT / "src"))
    from vaekit.anomaly import COMPLEXITY, SCORE

    good, csv_out = "{corpus}/data/good.npz", "{tmp}/s.csv"
    on_mnist = ["score", "{run}", "--data", "mnist", "--limit", 5, "-o", csv_out]
    case(
        "score_data_wrong_shape",
        "score 8x8 images with a 28x28 model",
        ["score", "{run}", "--data", good, "-o", csv_out],
        ["good.npz", "shape"],
    )
    case(
        "score_calibrate_on_wrong_shape",
        "--calibrate-on 8x8 images for a 28x28 model",
        [*on_mnist, "--calibrate-on", good],
        ["--calibrate-on", "shape"],
    )
    for v in ("0", "1", "nan"):
        case(f"flag_score_fpr_{v}", f"score --fpr {v}", [*on_mnist, "--fpr", v], ["--fpr", "(0, 1)"])
    t = {"value": 12.5, "fpr": 0.05, "calibrated_on": "the validation split of mnist", "n": 3000}
    t |= {"model_sha256": "0" * 64, "score": SCORE, "complexity": COMPLEXITY, "binarize": "dynamic", "seed": 0}
    text = json.dumps(t, indent=2)
    thresholds = [
        ("truncated", "threshold.json cut in half", text[: len(text) // 2], "not a valid threshold file"),
        ("fpr", "threshold.json with fpr 1.5", json.dumps({**t, "fpr": 1.5}), "not a valid threshold file"),
        ("seed", 'threshold.json with seed "0" (was: a traceback)', json.dumps({**t, "seed": "0"}), "not a valid"),
        ("foreign", "threshold.json of another model (its fingerprint differs)", text, "another model"),
    ]
    for name, about, body, problem in thresholds:
        src = write(out, f"runs/threshold-{name}.json", body.encode())[len("{corpus}/") :]
        patch = [{"path": "threshold.json", "op": "copy", "src": src}]
        case(f"score_threshold_{name}", about, on_mnist, ["threshold.json", problem], patch=patch)
    for name, overrides, train in (("score-ae", {"model": "ae"}, {}), ("score-no-val", {}, {"val_fraction": 0.0})):
        cfg, w = tiny_model(**overrides)
        cfg["train"].update(train)
        write(out, f"models/{name}/config.json", json.dumps(cfg, indent=2).encode())
        write(out, f"models/{name}/model.safetensors", safetensors(w))
    case(
        "score_ae_iw_samples",
        "score --iw-samples 5 of an autoencoder (it has no density)",
        ["score", "{corpus}/models/score-ae", "--data", good, "--iw-samples", 5, "-o", csv_out],
        ["--iw-samples", "autoencoder"],
    )
    case(
        "score_no_validation_split",
        "score --fpr on a run trained with --val-fraction 0, without --calibrate-on",
        ["score", "{corpus}/models/score-no-val", "--data", good, "--fpr", "0.05", "-o", csv_out],
        ["score-no-val", "--val-fraction 0", "--calibrate-on"],
    )


def conditional_cases(out: Path) -> None:
    """Conditional models (issue 16): --conditional on data without labels (or labels of the wrong length),
    a conditional model's commands on data without labels or with a label beyond its classes, bad --label and
    --index values of sample/restyle, a config.json whose num_classes is out of range."""
    x = (np.arange(60 * 64) % 256).astype(np.uint8).reshape(60, 8, 8)
    nolabels = write(out, "data/nolabels.npy", npy_of(x))
    beyond = write(out, "data/labels-beyond.npz", npz({"x.npy": npy_of(x[:6]), "y.npy": npy_of(np.arange(6))}))
    case(
        "flag_conditional_no_labels",
        "train --conditional on a .npy (images only, no labels): no run folder left behind",
        [*train_new(nolabels), "--conditional"],
        ["--conditional", "needs labels", "has none"],
    )
    case(
        "flag_conditional_no_labels_overwrite",
        "train --conditional on a .npy with --overwrite on an existing run: the run is kept",
        [*train_over_run(nolabels), "--conditional"],
        ["--conditional", "needs labels"],
    )
    case(
        "npz_labels_mismatch_conditional",
        "train --conditional on 10 examples with 9 labels",
        [*train_new("{corpus}/data/labels-short.npz"), "--conditional"],
        ["labels-short.npz", "labels must have shape"],
    )
    config, weights = tiny_model(num_classes=3)
    config["train"]["conditional"] = True
    write(out, "models/conditional/config.json", json.dumps(config, indent=2).encode())
    write(out, "models/conditional/model.safetensors", safetensors(weights))
    m = "{corpus}/models/conditional"
    case(
        "model_conditional_data_without_labels",
        "eval a conditional model on a .npy (no labels to condition on)",
        ["eval", m, "--data", nolabels, "--iw-samples", 0],
        ["--data", "conditional (3 classes)", "labels"],
    )
    case(
        "model_conditional_label_beyond_classes",
        "encode with a conditional model of 3 classes data whose labels go up to 5",
        ["encode", m, "--data", beyond, "-o", "{tmp}/codes.npy"],
        ["labels-beyond.npz", "label 5 is outside", "classes 0..2"],
    )
    labelled = write(out, "data/labels-3.npz", npz({"x.npy": npy_of(x[:6]), "y.npy": npy_of(np.arange(6) % 3)}))
    good = "{corpus}/models/good"
    case(
        "flag_label_beyond_classes",
        "sample --label 3 from a conditional model of 3 classes",
        ["sample", m, "--label", 3, "-o", "{tmp}/s.png"],
        ["--label 3", "outside", "classes 0..2"],
    )
    case(
        "flag_label_not_a_label",
        "sample --label seven (neither an integer nor 'all')",
        ["sample", m, "--label", "seven", "-o", "{tmp}/s.npy"],
        ["--label", "expected a label"],
    )
    case(
        "flag_label_unconditional",
        "sample --label 0 from an unconditional model",
        ["sample", good, "--label", 0, "-o", "{tmp}/s.npy"],
        ["--label", "not conditional"],
    )
    case(
        "model_restyle_unconditional",
        "restyle with an unconditional model",
        ["restyle", good, "--index", 0, "--data", labelled, "-o", "{tmp}/r.png"],
        ["models/good", "not conditional"],
    )
    case(
        "flag_restyle_index_beyond",
        "restyle --index 6 of data with 6 examples",
        ["restyle", m, "--index", 0, 6, "--data", labelled, "-o", "{tmp}/r.npy"],
        ["--index 6", "outside the data", "0..5"],
    )
    case(
        "model_restyle_data_without_labels",
        "restyle with a conditional model on a .npy (no labels to encode with)",
        ["restyle", m, "--index", 0, "--data", nolabels, "-o", "{tmp}/r.png"],
        ["--data", "needs the examples' labels"],
    )
    cfg = json.loads(json.dumps(config))
    cfg["model"]["num_classes"] = -1
    write(out, "models/config-classes-negative/config.json", json.dumps(cfg, indent=2).encode())
    write(out, "models/config-classes-negative/model.safetensors", safetensors(weights))
    case(
        "model_config_classes_negative",
        "config.json with num_classes -1",
        ["sample", "{corpus}/models/config-classes-negative", "-n", 2, "-o", "{tmp}/s.png"],
        ["config-classes-negative/config.json", "num_classes must be an integer"],
    )


def build(out: Path) -> list[dict]:
    """Write every file of the corpus and cases.json into `out` (emptied first); return the cases."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    CASES.clear()
    data_cases(out)
    config_cases(out)
    flag_cases(out)
    model_cases(out)
    run_cases(out)
    score_cases(out)
    conditional_cases(out)
    (out / "cases.json").write_text(json.dumps(CASES, indent=1) + "\n")
    return list(CASES)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "tests" / "corpus"
    cases = build(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {len(cases)} cases, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
