"""Model folders: config.json + model.safetensors. No pickle anywhere.

Every file is written atomically (a temp file in the same folder, fsync, rename),
so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vaekit.config import RunConfig
from vaekit.errors import VaekitError
from vaekit.models import build_model

CONFIG, WEIGHTS = "config.json", "model.safetensors"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp over `path`. The temp file is removed on any failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def save(model, folder: Path, config: RunConfig) -> None:
    """Write config.json and model.safetensors into `folder` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
    model = build_model(cfg.model)
    state = load_tensors(folder / WEIGHTS)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise VaekitError(f"{folder / WEIGHTS}: does not match {CONFIG} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise VaekitError(f"{folder / WEIGHTS}: {k} has shape {tuple(v.shape)}, "
                              f"{CONFIG} implies {tuple(expected[k].shape)}")
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
