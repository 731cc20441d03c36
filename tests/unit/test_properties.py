"""Property-based tests (issue 8): whatever bytes, arrays or mappings come in, the readers and the config
layer answer with a result or one VaekitError line -- never another exception, never a second line.

tests/test_data.py fuzzes IDX headers built field by field; here the bytes are arbitrary, a valid header
meets an arbitrary tail (and a body of the right size must come back bit for bit), arrays of every dtype
and shape go through the .npy/.npz loader, and arbitrary mappings go through the config layer.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaekit.config import LIKELIHOODS, ModelConfig, RunConfig, TrainConfig, from_dict, load_config_file, split_options
from vaekit.data import files, idx
from vaekit.errors import VaekitError
from vaekit.networks import ACTIVATIONS

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(e: VaekitError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and len(msg) < 2000, msg


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


# ------------------------------------------------------------------------------------------------- IDX


@SETTINGS
@given(data=st.binary(max_size=300), gz=st.booleans())
def test_read_idx_arbitrary_bytes(tmp_path, data, gz):
    path = write(tmp_path / "f", gzip.compress(data, mtime=0) if gz else data)
    try:
        x = idx.read_idx(path)
    except VaekitError as e:
        one_line(e)
    else:
        assert 1 <= x.ndim <= idx.MAX_NDIM and x.dtype.isnative and x.flags.writeable


@SETTINGS
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


# ------------------------------------------------------------------------------------------- .npy / .npz


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


@SETTINGS
@given(a=ARRAYS, fortran=st.booleans())
def test_npy_loader_arbitrary_arrays(tmp_path, a, fortran):
    path = tmp_path / "a.npy"
    np.save(path, np.asfortranarray(a) if fortran else a)
    loaded = load_or_clean_error(path)
    if loaded is not None:
        assert loaded[1] is None
        _check_examples(loaded[0], a)


@SETTINGS
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


@SETTINGS
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


@SETTINGS
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


# ----------------------------------------------------------------------------------------------- config


NAMES = sorted({f.name for c in (ModelConfig, TrainConfig) for f in dataclasses.fields(c)})
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
KEYS = (
    st.sampled_from(NAMES)
    | st.sampled_from([n.replace("_", "-") for n in NAMES])
    | st.text(max_size=10)
    | st.integers()
)


@SETTINGS
@given(d=st.dictionaries(KEYS, JSON_VALUES, max_size=6))
def test_split_options_and_validate_arbitrary_mappings(d):
    """Flat options (a config file, flags) -> RunConfig, validated; or one error line."""
    try:
        rc = split_options(d, "run.yaml")
        rc.model.validate()
        rc.train.validate(rc.model)
    except VaekitError as e:
        one_line(e)


@SETTINGS
@given(cls=st.sampled_from([ModelConfig, TrainConfig]), d=JSON_VALUES | st.dictionaries(KEYS, JSON_VALUES, max_size=6))
def test_from_dict_arbitrary_values(cls, d):
    try:
        cfg = from_dict(cls, d, "config.json: model")
        cfg.validate()
    except VaekitError as e:
        one_line(e)
    else:
        assert isinstance(cfg, cls)


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin1")))
def test_load_config_file_arbitrary_text(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        d = load_config_file(path)
    except VaekitError as e:
        one_line(e)
        assert "run.yaml" in str(e)
    else:
        assert isinstance(d, dict)


@SETTINGS
@given(
    doc=JSON_VALUES
    | st.fixed_dictionaries(
        {"model": st.dictionaries(KEYS, JSON_VALUES, max_size=4)},
        optional={"train": st.dictionaries(KEYS, JSON_VALUES, max_size=4)},
    )
)
def test_config_json_arbitrary_documents(tmp_path, doc):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    try:
        rc = RunConfig.from_json_file(path)
    except VaekitError as e:
        one_line(e)
        assert "config.json" in str(e)
    else:
        assert isinstance(rc.model, ModelConfig) and isinstance(rc.train, TrainConfig)


# ------------------------------------------------------------------------------------ RunConfig round trip


POS = st.integers(1, 512)
FLOATS = st.floats(0, 1e6, allow_nan=False)


@st.composite
def run_configs(draw) -> RunConfig:
    """Valid configurations: every field drawn, the cross-field rules respected."""
    arch = draw(st.sampled_from(["mlp", "conv"]))
    likelihood = draw(st.sampled_from(LIKELIHOODS))
    model_kw = dict(
        model=draw(st.sampled_from(["vae", "ae"])),
        arch=arch,
        latent_dim=draw(POS),
        input_shape=tuple(
            draw(st.lists(POS, min_size=3, max_size=3) if arch == "conv" else st.lists(POS, min_size=1, max_size=3))
        ),
        hidden=tuple(draw(st.lists(POS, max_size=3))),
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        likelihood=likelihood,
    )
    if arch == "conv":
        model_kw["channels"] = tuple(draw(st.lists(POS, min_size=1, max_size=3)))
    if likelihood == "gaussian":
        min_sigma = draw(st.floats(1e-6, 1e-2))
        model_kw.update(
            min_sigma=min_sigma,
            sigma=draw(st.floats(min_sigma * 1.01, 10.0)),
            learn_sigma=draw(st.sampled_from(["none", "global", "pixel"])),
        )
    model = ModelConfig(**model_kw)
    vae = model.model == "vae"
    iw_k = draw(st.integers(1, 50)) if vae else 1
    schedule = draw(st.sampled_from(["constant", "cosine", "step"]))
    train = TrainConfig(
        data=draw(st.text(min_size=1, max_size=20)),
        binarize=draw(st.sampled_from(["dynamic", "static", "none", "auto"])),
        val_fraction=draw(st.floats(0, 0.99)),
        epochs=draw(POS),
        batch_size=draw(POS),
        lr=draw(st.floats(1e-8, 10)),
        schedule=schedule,
        step_every=draw(POS) if schedule == "step" else 30,
        weight_decay=draw(FLOATS),
        clip=draw(FLOATS),
        beta=draw(FLOATS) if vae and iw_k == 1 else 1.0,
        kl_warmup=draw(FLOATS) if vae and iw_k == 1 else 0.0,
        free_bits=draw(FLOATS) if vae and iw_k == 1 else 0.0,
        iw_k=iw_k,
        seed=draw(st.integers(0, 2**32 - 1)),
        device=draw(st.sampled_from(["auto", "cuda"])),
        threads=draw(st.integers(0, 64)),
        checkpoint_every=draw(st.integers(0, 10**6)),
        patience=draw(st.integers(0, 10)),
        max_bad_steps=draw(POS),
        amp=draw(st.booleans()),
        quiet=draw(st.booleans()),
    )
    if train.patience and not train.val_fraction > 0:
        train = dataclasses.replace(train, patience=0)
    return RunConfig(model.validate(), train.validate(model))


@SETTINGS
@given(rc=run_configs())
def test_run_config_json_round_trip(tmp_path, rc):
    path = tmp_path / "config.json"
    path.write_text(rc.to_json())
    back = RunConfig.from_json_file(path)
    assert back == rc
    assert back.to_json() == rc.to_json()
    # and through the flat options of a config file
    flat = {**dataclasses.asdict(rc.model), **dataclasses.asdict(rc.train)}
    assert split_options(json.loads(json.dumps(flat)), "run.json") == rc


@pytest.mark.parametrize(
    "value", [[[[1] * 10] * 10] * 10, 10**5000, "x" * 10**6], ids=["nested", "long-int", "long-str"]
)
def test_error_messages_stay_short(value):
    """A huge or deeply nested value is shown cut short in the one error line (an alias bomb, a long int)."""
    with pytest.raises(VaekitError) as e:
        from_dict(TrainConfig, {"seed": value}).validate()
    one_line(e.value)
    assert len(str(e.value)) < 400
