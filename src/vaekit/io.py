"""Model folders: config.json + model.safetensors. No pickle anywhere.

Every file is written atomically (a temp file in the same folder, fsync, rename),
so a crash leaves either the old file or the new one, never half of one; a failed
write (a full disk, a read-only folder) is a VaekitError naming the file, and the
old file stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vaekit.config import RunConfig
from vaekit.errors import VaekitError
from vaekit.models import build_model

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def write_error(path: Path, e: Exception) -> VaekitError:
    """`path: cannot write (no space left on device)` from an OSError, or from safetensors' own error."""
    if isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:  # safetensors: "... IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })"
        text = (str(e).splitlines() or [type(e).__name__])[0]
        m = re.search(r'message: "([^"]+)"', text)
        why = m.group(1) if m else text
    return VaekitError(f"{path}: cannot write ({why.lower()})")


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp over `path`. The temp file is removed on any failure;
    an OS error becomes a VaekitError naming `path` (the old file is untouched)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, SafetensorError)):
            raise write_error(path, e) from None
        raise


def append_text(path: Path, text: str) -> None:
    """Append `text` to `path` (metrics.jsonl); an OS error becomes a VaekitError naming `path`."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        raise write_error(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise VaekitError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise VaekitError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a safetensors file, from its header alone (nothing is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except FileNotFoundError:
        raise VaekitError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise VaekitError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def check_fits_in_memory(cfg, where: str, option: str | None = None) -> None:
    """Refuse a model whose training state (weights, gradients, Adam's two moments: 16 bytes a parameter)
    is larger than this machine's memory, before allocating it: an 80 kB PNG of 9000x9000 pixels makes
    an MLP of 65 billion parameters, which would end in an allocation error's traceback."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on this platform: nothing to compare with
        return
    with torch.device("meta"):
        n = sum(p.numel() for p in build_model(cfg).parameters())
    if 16 * n > memory:
        kind = "an MLP" if cfg.arch == "mlp" else "a conv"
        raise VaekitError(
            f"{where}: {kind} model for examples of shape {tuple(cfg.input_shape)} has {n:,} "
            f"parameters, {16 * n / 2**30:,.0f} GiB to train, more than this machine's "
            f"{memory / 2**30:,.0f} GiB; use smaller examples or a smaller --hidden",
            option=option,
        )


def save(model, folder: Path, config: RunConfig) -> None:
    """Write config.json and model.safetensors into `folder` (created if needed)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) from None
    save_tensors(model.state_dict(), folder / WEIGHTS)
    atomic_write_text(folder / CONFIG, config.to_json() + "\n")


def load_config(folder: Path) -> RunConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise VaekitError(f"{folder}: not a model folder (no such directory)")
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise VaekitError(f"{folder}: not a model folder (needs {CONFIG} and {WEIGHTS})")
    return RunConfig.from_json_file(folder / CONFIG)


def load(folder: str | Path, device: str | torch.device = "cpu"):
    """The trained model in a model folder (a run folder is one), in eval mode on `device`."""
    folder = Path(folder)
    cfg = load_config(folder)
    shapes = tensor_shapes(folder / WEIGHTS)
    with torch.device("meta"):  # the model config.json describes, allocated only once the weights match it
        expected = {k: tuple(v.shape) for k, v in build_model(cfg.model).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise VaekitError(
            f"{folder / WEIGHTS}: does not match {CONFIG} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, shape in shapes.items():
        if shape != expected[k]:
            raise VaekitError(f"{folder / WEIGHTS}: {k} has shape {shape}, {CONFIG} implies {expected[k]}")
    model = build_model(cfg.model)
    state = load_tensors(folder / WEIGHTS)
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise VaekitError(f"{folder / WEIGHTS}: {k} holds NaN or inf")
    model.load_state_dict(state)
    model.run_config = cfg
    return model.to(device).eval()


def read_metrics(folder: Path) -> list[dict]:
    """metrics.jsonl as a list of dicts (lines that do not parse are skipped: a crash may cut the last)."""
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def run_names(runs: list[str | Path]) -> list[str]:
    """Short unique names for run folders, in order (the report's and the explorer's): each folder's own
    name, with as many parent folders as it takes to tell apart different folders of the same name
    (runs/a/vae, runs/b/vae -> a/vae, b/vae; x/a/vae, y/a/vae -> x/a/vae, y/a/vae); the same folder
    given again gets a ' per repeat (vae, vae'). Paths are resolved first, so "." is named by its folder."""
    full = [Path(r).resolve() for r in runs]
    out = []
    for p in full:
        twins = {q for q in full if q != p and q.name == p.name}
        top = max(len(p.parts) - 1, 1)  # never the root ("/") itself
        depth = min(2 if twins else 1, top)
        while depth < top and any(q.parts[-depth:] == p.parts[-depth:] for q in twins):
            depth += 1
        name = "/".join(p.parts[-depth:]) or str(p)
        while name in out:
            name += "'"
        out.append(name)
    return out
