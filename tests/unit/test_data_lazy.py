"""data.lazy: data bigger than memory. A .npy, a folder of .npy shards and a folder of images read from disk
give the very batches the in-memory path gives (any dtype and layout, any indices, subsets of subsets), the
validation split reads nothing, training on them ends with bit-identical weights, and damaged shards are one
line naming the file. Small synthetic files under tmp_path; the threshold is tested with a faked memory size."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import one_line

import vaekit.data
from vaekit.config import ModelConfig, TrainConfig
from vaekit.data import Rows, lazy, split_validation
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate
from vaekit.models import build_model
from vaekit.train import fit


def both(path, **kw):
    """The same file loaded into memory and kept on disk."""
    mem, disk = vaekit.data.load(path, in_memory="yes", **kw), vaekit.data.load(path, in_memory="no", **kw)
    assert not mem.on_disk and disk.on_disk and isinstance(disk.x, Rows)
    assert disk.shape == mem.shape and len(disk) == len(mem) and disk.x.dtype == mem.x.dtype
    return mem, disk


def same_batches(mem, disk, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(mem)
    for idx in (
        torch.randperm(n, generator=g)[: min(n, 37)],  # a training batch: random order
        torch.randperm(n, generator=g),  # everything, shuffled
        slice(0, n),
        slice(3, n - 2, 3),
        [n - 1, 0, n - 1, -1, -n],  # repeats and negative indices
        torch.arange(n) % 2 == 0,  # a mask
        torch.empty(0, dtype=torch.int64),
    ):
        a, b = mem.batch(idx), disk.batch(idx)
        assert torch.equal(a, b) and a.dtype == b.dtype == torch.float32, idx


def pixels(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    return rng.integers(0, 256, shape).astype(dtype)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((50, 7, 5), np.uint8),  # (N, H, W): grey images
        ((50, 3, 6, 5), np.float32),  # (N, C, H, W)
        ((50, 6, 5, 3), np.uint8),  # channels last, transposed per batch
        ((50, 12), np.float64),  # vectors, converted to float32 per batch
        ((50, 7, 5), np.int16),  # integers in 0..255
        ((50, 4, 4), np.bool_),
        ((50, 9), ">f4"),  # big-endian
    ],
)
def test_a_npy_on_disk_gives_the_in_memory_batches(tmp_path, shape, dtype):
    np.save(tmp_path / "x.npy", pixels(shape, np.dtype(dtype)))
    mem, disk = both(tmp_path / "x.npy")
    same_batches(mem, disk)
    idx = torch.tensor([9, 4, 30, 2, 41, 11, 0])
    sub_m, sub_d = mem.subset(idx), disk.subset(idx)  # a view of a view
    assert sub_d.on_disk
    same_batches(sub_m.subset(slice(1, 6)), sub_d.subset(slice(1, 6)), seed=1)
    assert torch.equal(torch.from_numpy(disk.x.read_all()), mem.x)


def test_shards_are_one_dataset_in_file_name_order(tmp_path):
    parts = [pixels((n, 4, 5), np.uint8, seed=n) for n in (7, 1, 12, 5)]
    for name, p in zip(["b.npy", "a.npy", "d.npy", "c.npy"], parts):
        np.save(tmp_path / name, p)
    (tmp_path / "notes.txt").write_text("not a shard")
    want = np.concatenate([parts[1], parts[0], parts[3], parts[2]])[:, None]  # a, b, c, d
    mem, disk = both(tmp_path)
    assert torch.equal(mem.x, torch.from_numpy(want)) and disk.x.shape == (25, 1, 4, 5) and mem.y is None
    same_batches(mem, disk)
    assert torch.equal(disk.batch(slice(5, 22)), torch.from_numpy(want[5:22]).float() / 255)  # runs across shards


def test_a_folder_with_images_is_still_an_image_folder(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "stray.npy", np.zeros((3, 4, 4), np.uint8))
    assert vaekit.data.load(tmp_path, in_memory="yes").shape == (1, 4, 4)


def test_float_shards_and_their_bad_values_name_the_shard(tmp_path):
    np.save(tmp_path / "0.npy", pixels((6, 3, 3), np.float32))
    bad = pixels((6, 3, 3), np.float32, seed=1)
    bad[4, 1, 1] = np.nan
    np.save(tmp_path / "1.npy", bad)
    with pytest.raises(VaekitError) as e:
        vaekit.data.load(tmp_path, in_memory="no")  # scanned once when opened, not mid-training
    assert "1.npy" in one_line(e) and "NaN" in one_line(e)
    np.save(tmp_path / "1.npy", np.nan_to_num(bad) * 2)
    with pytest.raises(VaekitError, match=r"1\.npy: float values") as e:
        vaekit.data.load(tmp_path, in_memory="yes")
    one_line(e)


def test_damaged_and_mismatched_shards_are_one_line_naming_them(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", pixels((5, 4, 4), np.uint8, seed=i))
    whole = (tmp_path / "1.npy").read_bytes()
    (tmp_path / "1.npy").write_bytes(whole[:-30])  # truncated
    for mode in ("no", "yes", "auto"):
        with pytest.raises(VaekitError, match=r"1\.npy: corrupt or truncated") as e:
            vaekit.data.load(tmp_path, in_memory=mode)
        one_line(e)
    (tmp_path / "1.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(VaekitError, match=r"1\.npy") as e:
        vaekit.data.load(tmp_path, in_memory="no")
    one_line(e)
    np.save(tmp_path / "1.npy", pixels((5, 4, 5), np.uint8))
    with pytest.raises(VaekitError, match=r"shard 1\.npy holds rows of shape \(4, 5\) uint8, 0\.npy") as e:
        vaekit.data.load(tmp_path, in_memory="no")
    one_line(e)
    np.save(tmp_path / "1.npy", pixels((5, 4, 4), np.float32))
    with pytest.raises(VaekitError, match="one shape and dtype"):
        vaekit.data.load(tmp_path, in_memory="yes")
    np.save(tmp_path / "1.npy", np.asfortranarray(pixels((5, 4, 4), np.uint8)))
    with pytest.raises(VaekitError, match=r"1\.npy: stored in Fortran order"):
        vaekit.data.load(tmp_path, in_memory="no")
    np.save(tmp_path / "1.npy", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(VaekitError, match=r"1\.npy: no data"):
        vaekit.data.load(tmp_path, in_memory="no")


def test_a_file_cut_short_while_in_use_is_one_line_naming_it(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, pixels((40, 5, 5), np.uint8))
    ds = vaekit.data.load(path, in_memory="no")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    assert ds.batch(torch.tensor([0, 1])).shape == (2, 1, 5, 5)  # rows before the cut still read
    with pytest.raises(VaekitError, match=r"x\.npy: truncated") as e:
        ds.batch(torch.tensor([3, 39]))
    one_line(e)


def test_auto_keeps_small_data_in_memory_and_big_data_on_disk(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", pixels((64, 4, 4), np.uint8))  # 1024 bytes in memory
    monkeypatch.delenv(lazy.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(lazy, "available_memory", lambda: 8 * 1024)
    assert not vaekit.data.load(tmp_path / "x.npy").on_disk  # exactly 1/8 of the memory available
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this node: each loads its own copy
    assert vaekit.data.load(tmp_path / "x.npy").on_disk
    monkeypatch.setenv(lazy.ENV, "yes")
    assert not vaekit.data.load(tmp_path / "x.npy").on_disk
    monkeypatch.setenv(lazy.ENV, "no")
    assert vaekit.data.load(tmp_path / "x.npy").on_disk
    assert not vaekit.data.load(tmp_path / "x.npy", in_memory="yes").on_disk  # the argument wins
    monkeypatch.setenv(lazy.ENV, "maybe")
    with pytest.raises(VaekitError, match="VAEKIT_IN_MEMORY must be auto, yes or no, got 'maybe'") as e:
        vaekit.data.load(tmp_path / "x.npy")
    one_line(e)
    np.savez(tmp_path / "x.npz", x=pixels((64, 4, 4), np.uint8))
    monkeypatch.setenv(lazy.ENV, "no")
    assert not vaekit.data.load(tmp_path / "x.npz").on_disk  # .npz, IDX and built-ins: always in memory


def test_a_validation_split_of_data_on_disk_reads_nothing_and_matches(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", pixels((200, 3, 4), np.uint8))
    mem, disk = both(tmp_path / "x.npy")
    reads = []
    monkeypatch.setattr(os, "pread", lambda *a: reads.append(a) or pytest.fail("read"))
    train_d, val_d = split_validation(disk, 0.1, seed=4)
    assert train_d.on_disk and val_d.on_disk and not reads
    monkeypatch.undo()
    train_m, val_m = split_validation(mem, 0.1, seed=4)
    same_batches(train_m, train_d)
    same_batches(val_m, val_d)


def test_static_binarization_is_refused_in_one_line_on_disk(tmp_path):
    np.save(tmp_path / "x.npy", pixels((20, 4, 4), np.uint8))
    with pytest.raises(VaekitError, match="--binarize static .* read from disk .* use --binarize dynamic") as e:
        vaekit.data.load(tmp_path / "x.npy", in_memory="no").binarized(0)
    assert e.value.option == "binarize"
    one_line(e)


def test_rows_survive_pickling(tmp_path):
    """A DataLoader worker started by spawn receives the dataset pickled: it opens the files itself."""
    np.save(tmp_path / "x.npy", pixels((30, 4, 4), np.uint8))
    ds = vaekit.data.load(tmp_path / "x.npy", in_memory="no")
    ds.batch(slice(0, 2))  # the file is open
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy.batch(torch.tensor([7, 2, 29])), ds.batch(torch.tensor([7, 2, 29])))


def test_an_image_folder_on_disk_gives_the_in_memory_batches(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(6):
            if i % 3:
                im = Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8))  # grey
            else:
                im = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))  # colour: promotes all
            im.save(tmp_path / label / f"{i}.png")
    mem, disk = both(tmp_path)
    assert disk.shape == (3, 5, 7) and torch.equal(disk.y, mem.y) and disk.y.tolist() == [0] * 6 + [1] * 6
    same_batches(mem, disk)
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / "dog" / "9.png")
    with pytest.raises(VaekitError, match=r"mixed image sizes: .*cat.0\.png is 7x5, .*9\.png is 7x6") as e:
        vaekit.data.load(tmp_path, in_memory="no")  # headers are read at once: refused before training
    one_line(e)


def tiny(model="vae"):
    torch.manual_seed(0)
    return build_model(ModelConfig(model=model, input_shape=(1, 6, 6), hidden=(16,), latent_dim=2))


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_training_and_evaluation_on_disk_equal_in_memory(tmp_path, model):
    """Same seed, same permutations, same batches: bit-identical weights after a short training (with a
    validation split) and the same evaluation."""
    np.save(tmp_path / "x.npy", pixels((300, 6, 6), np.uint8))
    runs = {}
    for mode in ("yes", "no"):
        train_ds, val_ds = split_validation(vaekit.data.load(tmp_path / "x.npy", in_memory=mode), 0.1, 0)
        cfg = TrainConfig(epochs=2, batch_size=32, seed=3, threads=1, quiet=True)
        runs[mode] = fit(tiny(model), train_ds, cfg, val=val_ds)
        res = evaluate(runs[mode].model, val_ds, iw_samples=8 if model == "vae" else 0, seed=1)
        runs[mode].eval = {k: v for k, v in res.items() if k != "seconds"}
    a, b = runs["yes"].model.state_dict(), runs["no"].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs["yes"].eval == runs["no"].eval
    assert [r["val_elbo"] for r in runs["yes"].metrics] == [r["val_elbo"] for r in runs["no"].metrics]


def test_indices_out_of_range_raise_like_a_tensor(tmp_path):
    np.save(tmp_path / "x.npy", pixels((10, 2, 2), np.uint8))
    rows = vaekit.data.load(tmp_path / "x.npy", in_memory="no").x
    for bad in ([10], [-11], torch.tensor([0, 12])):
        with pytest.raises(IndexError):
            rows.read(bad)
    with pytest.raises(IndexError):
        rows.read(torch.tensor([0.5]))
