"""Checkpoints and the one resume policy, for the VAE trainer, the classifier and the demo.

    prepare_out(out, resume, overwrite)      refuse to clobber a run; create the folder
    save(path, model, opt, meta, rngs, ...)  one safetensors file, written atomically
    load(path, model, opt) -> (meta, rngs, extra tensors)
    resume_config(saved, given_cfg, given)   what a resumed run may change (RESUMABLE) and what it may not
    after_restart(out, resume, overwrite)    under torchrun, a checkpoint of this torchrun run resumes by itself
    Spacing(every, rank)                     when the loop checkpoints mid-epoch: every N steps or T seconds

A checkpoint holds the weights (`model.*`), Adam's state (`optim.{param}.{name}`), every RNG state the
loop draws from (`rng.*`: torch, the data generators, numpy; python's in the metadata), any extra tensors
(the epoch's permutation), and the loop's scalar state as JSON metadata. Exact resume restores all of it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vaekit import io
from vaekit.config import ModelConfig, RunConfig, TrainConfig, checkpoint_seconds
from vaekit.distributed import gather_states
from vaekit.errors import VaekitError

CKPT_DIR, CKPT_FILE = "checkpoint", "state.safetensors"
ELASTIC_RUN = "elastic_run"  # metadata key: the torchrun run id (TORCHELASTIC_RUN_ID) the checkpoint was written under
# What may change on --resume: more epochs, how it runs, and lr/clip (the way on after a divergence).
NEW_RUN = "; start a new run with another --out instead"
RESUMABLE = (
    "epochs",
    "quiet",
    "device",
    "threads",
    "checkpoint_every",
    "max_bad_steps",
    "patience",
    "lr",
    "clip",
    "amp",
    "compile",
)


def path(out: Path) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(out) / CKPT_DIR / CKPT_FILE


def exists(out: Path) -> bool:
    return path(out).is_file()


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless told to; create the folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out}: exists and is not a folder")
    has_run = out.is_dir() and any(out.iterdir())
    if resume:
        if not exists(out):
            raise VaekitError(
                f"--resume: {out} has no checkpoint ({CKPT_DIR}/{CKPT_FILE}) to resume from; "
                f"start it again with --overwrite"
            )
        return
    if has_run and not overwrite:
        raise VaekitError(
            f"--out {out}: a run folder already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if has_run and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def remove_stray_temps(out: Path) -> None:
    """A kill -9 during an atomic write (checkpoint, weights, config, metrics) leaves its temp file behind;
    the file it was replacing is intact. Remove those leftovers from the run folder and its checkpoint/."""
    for folder in (Path(out), Path(out) / CKPT_DIR):
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


@dataclass
class LoopState:
    """Where the training loop is; saved as the checkpoint's metadata (the field names are its JSON keys).

    sums: this rank's (loss, elbo, recon, kl, examples) over the good steps of the current epoch."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    best_val: float = -math.inf
    bad_epochs: int = 0
    metrics_lines: int = 0
    seconds: float = 0.0
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)
    world: int = 1

    def to_meta(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict, file: Path) -> LoopState:
        try:
            return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls)})
        except KeyError as e:
            raise VaekitError(f"{file}: checkpoint does not match this model (no {e.args[0]!r})") from None


# ------------------------------------------------------------------------------------------ save / load


def save(
    file: Path,
    model,
    opt,
    meta: dict,
    rngs: dict[str, torch.Tensor],
    extra: dict[str, torch.Tensor] | None = None,
    host_rngs: bool = True,
) -> None:
    """One safetensors file, written atomically: weights, optimizer, RNG states, `extra`; `meta` as metadata.

    `rngs` maps a name (torch, binarize, order, cuda; with a `.r{rank}` suffix under DDP) to its state;
    with `host_rngs`, numpy's and python's global states are saved too."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, s in osd["state"].items():
        for k, v in s.items():
            tensors[f"optim.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    tensors.update({f"rng.{k}": v for k, v in rngs.items()})
    meta = dict(meta)
    if host_rngs:
        np_state = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
        meta.update(numpy_pos=int(np_state[2]), python_rng=list(random.getstate()[1]))
    tensors.update(extra or {})
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    io.save_tensors(tensors, file, metadata={"state": json.dumps({**meta, "param_groups": osd["param_groups"]})})


def load(file: Path, model, opt, what: str = "model") -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Restore the weights, the optimizer and (when saved) numpy's and python's RNGs from `file`.

    Returns (scalar meta, RNG states by name without the `rng.` prefix, the other extra tensors)."""
    from safetensors import safe_open

    tensors = io.load_tensors(file)
    try:
        with safe_open(str(file), "pt") as f:
            meta = json.loads(f.metadata()["state"])
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
        if "rng.numpy" in tensors:
            state = tensors["rng.numpy"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", state, meta.pop("numpy_pos"), 0, 0.0))
            random.setstate((3, tuple(meta.pop("python_rng")), None))
    except (KeyError, ValueError, RuntimeError, TypeError, json.JSONDecodeError) as e:
        raise VaekitError(f"{file}: checkpoint does not match this {what} ({str(e).splitlines()[0][:120]})") from None
    rngs = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.") and k != "rng.numpy"}
    extra = {k: v for k, v in tensors.items() if not k.startswith(("model.", "optim.", "rng."))}
    return meta, rngs, extra


def restore_generators(rngs: dict[str, torch.Tensor], gens: dict[str, torch.Generator], file: Path, what: str):
    """Set each generator in `gens` to its saved state (a one-line error if one is missing or malformed)."""
    try:
        for k, g in gens.items():
            g.set_state(rngs[k])
    except (KeyError, RuntimeError) as e:
        raise VaekitError(f"{file}: checkpoint does not match this {what} ({str(e).splitlines()[0][:120]})") from None


def capture_rngs(gens: dict[str, torch.Generator], world: int, device) -> dict[str, torch.Tensor]:
    """Every RNG state the loop draws from (torch, cuda, the data generators); under DDP gathered from all
    ranks, rank r's keys ending in `.r{r}` (a collective: every rank calls it)."""
    local = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in gens.items()}}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    return gather_states(local, world, device)


def rank_state(rngs: dict[str, torch.Tensor], rank: int, world: int) -> torch.Tensor | None:
    """This rank's saved torch RNG state; None when the run was saved by another number of processes."""
    return rngs.get("torch" + (f".r{rank}" if world > 1 else ""))


def restore_rngs(rngs: dict[str, torch.Tensor], gens: dict[str, torch.Generator], rank: int, world: int, device):
    """Put back this rank's RNG states. A rank without a saved state of its own (the run is resumed with
    another number of processes) gets the data generators' states only (they are the same on every rank);
    the caller reseeds its noise."""
    suffix = f".r{rank}" if world > 1 else ""
    mine = {k: rngs.get(k + suffix) for k in ("torch", "cuda", *gens)}
    if mine["torch"] is None:
        mine = {k: rngs.get(k, rngs.get(k + ".r0")) for k in gens}
    for k, v in mine.items():
        if v is None:
            continue
        if k == "torch":
            torch.set_rng_state(v)
        elif k == "cuda":
            if device.type == "cuda":
                torch.cuda.set_rng_state(v, device)
        else:
            gens[k].set_state(v)


# ------------------------------------------------------------------------------------------ the policy


def resume_config(out: Path, run_config: RunConfig, given: set[str] | None) -> RunConfig:
    """The configuration a resumed run continues with: the saved one, with the few RESUMABLE changes.

    `given` names the options the user set (flags or config file); only those are checked against the
    saved run (None: any value that differs from the default counts as given)."""
    out = Path(out)
    if not exists(out):
        what = "does not exist" if not out.exists() else f"has no checkpoint ({CKPT_DIR}/{CKPT_FILE})"
        raise VaekitError(
            f"--resume: {out} {what}, so there is nothing to resume; start it without --resume (or with --overwrite)"
        )
    saved = RunConfig.from_json_file(out / io.CONFIG)
    return RunConfig(
        # the architecture cannot change on resume: the checkpoint's tensors are shaped by it
        merge_on_resume(saved.model, run_config.model, given, skip=("input_shape",), hint=NEW_RUN),
        _resume_train(saved.train, run_config.train, given, saved.model),
    )


def changed(name: str, new, old, default, given: set[str] | None) -> bool:
    """Whether option `name` was asked to change: given and different (or, with given=None, not default)."""
    if given is not None:
        return name in given and new != old
    return new != old and new != default


def merge_on_resume(saved, wanted, given: set[str] | None, resumable=(), skip=(), hint: str = ""):
    """`saved` (a config dataclass) with the fields of `wanted` that were asked to change; a one-line error
    for a change to a field outside `resumable`. Fields in `skip` are not compared."""
    defaults = type(saved)()
    changes = {}
    for f in dataclasses.fields(saved):
        name = f.name
        new, old = getattr(wanted, name), getattr(saved, name)
        if name in skip or not changed(name, new, old, getattr(defaults, name), given):
            continue
        if name not in resumable:
            raise VaekitError(
                f"--resume: --{name.replace('_', '-')} cannot change on resume "
                f"(the run has {_show(old)}, given {_show(new)}){hint}"
            )
        changes[name] = new
    return replace(saved, **changes)


def _resume_train(saved: TrainConfig, wanted: TrainConfig, given: set[str] | None, model: ModelConfig):
    """On --resume the saved config rules; only the RESUMABLE fields may change (e.g. more --epochs)."""
    from vaekit.steps import resolve_binarize

    if wanted.binarize == "auto":  # unchanged unless it was given and resolves to something else
        auto = resolve_binarize(wanted, model).binarize
        wanted = replace(wanted, binarize=saved.binarize if given is None else auto)
    return merge_on_resume(saved, wanted, given, RESUMABLE)


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else repr(v)


def after_restart(out: Path, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for this process. Under torchrun a run folder whose checkpoint was written under
    this torchrun run's id (TORCHELASTIC_RUN_ID: a fresh one per --standalone launch, else the --rdzv-id) is
    continued by itself: the elastic agent has restarted the group after a failure (`--max-restarts N`), on
    this node or another (the restart count is each node's own, the id is everyone's), or the same job id
    was launched again. Otherwise, and outside torchrun or under its default id "none", as asked."""
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    if resume or run in (None, "", "none") or not exists(out):
        return resume, overwrite
    meta = saved_meta(path(out))
    if meta.get(ELASTIC_RUN) != run:
        return resume, overwrite
    if int(os.environ.get("RANK") or 0) == 0:
        where = f"epoch {meta.get('epoch', 0) + 1}, step {meta.get('step')}"
        print(f"torchrun run {run}: resuming {out} from its checkpoint ({where})", file=sys.stderr, flush=True)
    return True, False


def restarts_possible() -> bool:
    """Whether torchrun's agent may restart this group (--max-restarts > 0): the loop then writes a checkpoint
    before its first step, so that a failure at any point is resumed, never refused as a run folder in the way."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS") or 0) > 0


def saved_meta(file: Path) -> dict:
    """A checkpoint's scalar metadata (LoopState's fields, the run id), without loading its tensors; {} for
    a file that is not a readable checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            return json.loads(f.metadata()["state"])
    except Exception:  # a damaged or foreign file: the resume proper reports it in one line
        return {}


class Spacing:
    """When the loop writes a mid-epoch checkpoint: every `every` steps (an int; 0: never), or once a time
    (`every` "30s", "5m", "1h") has passed since the last checkpoint by rank 0's clock. `vote(step)` is this
    rank's say for the step just taken (1.0: checkpoint now); the loop takes the max over ranks
    (distributed.agree), so under torchrun rank 0 decides and every rank checkpoints at the same step."""

    def __init__(self, every: int | str, rank: int):
        self.seconds = checkpoint_seconds(every)
        self.steps = every if self.seconds is None else 0
        self.rank = rank
        self.saved()

    def saved(self) -> None:
        """A checkpoint was just written (mid-epoch or at an epoch's end): the time counts from now."""
        self.last = time.monotonic()

    def vote(self, step: int) -> float:
        if self.seconds is None:
            return float(self.steps > 0 and step % self.steps == 0)
        return float(self.rank == 0 and time.monotonic() - self.last >= self.seconds)
