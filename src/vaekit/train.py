"""The training loop: one tensor of data batched by index, checkpoints with exact resume, a NaN guard,
signals, metrics, and DistributedDataParallel under torchrun.

    run = vaekit.fit(model, train_ds, TrainConfig(epochs=10), out="runs/x", val=val_ds)

`train(run_config, out)` is what `vaekit train` calls: it loads the data, builds the
model and calls `fit`, so the CLI and Python share one code path.

Exact resume: the checkpoint holds the weights, Adam's state, the torch RNG state
(reparameterization noise), the data generators' states (order and binarization),
the current epoch's permutation and the step within it. Resuming on CPU with the
same thread count replays the same arithmetic, so the final weights are bit-identical
to a run that was never interrupted.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vaekit import io
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.data import Dataset, binarize as draw_binary, load as load_data, split_validation
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.objectives import kl_weight

CKPT_DIR, CKPT_FILE = "checkpoint", "state.safetensors"


@dataclass
class Run:
    """What `fit` returns: where the run lives, the trained model and its per-epoch metrics."""

    out: Path | None
    model: torch.nn.Module
    metrics: list[dict] = field(default_factory=list)
    stopped: str = "finished"   # finished | early-stopped | interrupted | diverged


class Interrupted(Exception):
    """Raised inside the loop after SIGINT/SIGTERM, once the checkpoint is safely written."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Diverged(VaekitError):
    pass


# ---------------------------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaekitError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    return torch.device(name)


def resolve_binarize(cfg: TrainConfig, model_cfg: ModelConfig) -> TrainConfig:
    """`auto` binarizes dynamically for a Bernoulli likelihood and not otherwise."""
    if cfg.binarize == "auto":
        return replace(cfg, binarize="dynamic" if model_cfg.likelihood == "bernoulli" else "none")
    return cfg


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless told to; create the folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out}: exists and is not a folder")
    has_run = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / CKPT_DIR / CKPT_FILE).is_file():
            raise VaekitError(f"--resume: {out} has no checkpoint ({CKPT_DIR}/{CKPT_FILE}) to resume from")
        return
    if has_run and not overwrite:
        raise VaekitError(f"--out {out}: a run folder already exists; pass --resume to continue it "
                          f"or --overwrite to replace it")
    if has_run and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, epoch: int) -> float:
    """The schedule as a pure function of progress (nothing to checkpoint)."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    if cfg.schedule == "step":
        return cfg.lr * 0.5 ** (epoch // cfg.step_every)
    return cfg.lr


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused where torch has the fused kernel for this device (one kernel for all parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


# ------------------------------------------------------------------------------------------ checkpoints


def _rng_tensor(state) -> torch.Tensor:
    return state.clone() if isinstance(state, torch.Tensor) else torch.tensor(state)


def save_checkpoint(path: Path, model, opt, state: dict, gens: dict[str, torch.Generator], perm: torch.Tensor) -> None:
    """One safetensors file, written atomically: weights, optimizer, RNGs, permutation; scalars as metadata."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, s in osd["state"].items():
        for k, v in s.items():
            tensors[f"optim.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for name, g in gens.items():
        tensors[f"rng.{name}"] = g.get_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    tensors["perm"] = perm
    groups = [{k: v for k, v in g.items()} for g in osd["param_groups"]]
    meta = {**state, "param_groups": groups, "numpy_pos": int(np_state[2]),
            "python_rng": json.dumps(random.getstate()[1])}
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save_tensors(tensors, path, metadata={"state": json.dumps(meta)})


def load_checkpoint(path: Path, model, opt, gens: dict[str, torch.Generator]) -> tuple[dict, torch.Tensor]:
    """Restore everything save_checkpoint wrote; returns (scalar state, permutation)."""
    from safetensors import safe_open
    tensors = io.load_tensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["state"])
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
    except (KeyError, ValueError, RuntimeError, TypeError, json.JSONDecodeError) as e:
        raise VaekitError(f"{path}: checkpoint does not match this model ({str(e).splitlines()[0][:120]})") from None
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for name, g in gens.items():
        g.set_state(tensors[f"rng.{name}"])
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), meta.pop("numpy_pos"), 0, 0.0))
    py = tuple(json.loads(meta.pop("python_rng")))
    random.setstate((3, py, None))
    return meta, tensors["perm"]


# ------------------------------------------------------------------------------------------- the loop


class _SignalFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps (never mid-update)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _progress(total: int, initial: int, disable: bool, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=disable, desc=desc, unit="step", leave=False,
                dynamic_ncols=True, file=sys.stderr)


def fit(model, train_ds: Dataset, cfg: TrainConfig, out: str | Path | None = None, *, val: Dataset | None = None,
        resume: bool = False, overwrite: bool = False, run_config: RunConfig | None = None) -> Run:
    """Train `model` on `train_ds` as `cfg` says; write the run folder `out` (if given) on rank 0.

    Returns a Run. Raises Interrupted after a signal (checkpoint written) and Diverged after
    cfg.max_bad_steps consecutive non-finite steps (last good checkpoint kept).
    """
    cfg.validate(model.config)
    rank, world = dist_info()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.binarize == "static":
        train_ds = train_ds.binarized(cfg.seed)
        val = val.binarized(cfg.seed + 1) if val is not None else None
    dynamic = cfg.binarize == "dynamic"
    out = Path(out) if out is not None else None
    writer = rank == 0 and out is not None
    run_config = run_config or RunConfig(model.config, cfg)
    if writer:
        prepare_out(out, resume, overwrite)
    if world > 1 and out is not None:
        torch.distributed.barrier()

    torch.manual_seed(cfg.seed + rank)  # reparameterization noise, different per rank
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    gens = {"order": torch.Generator().manual_seed(cfg.seed),                  # same on every rank
            "binarize": torch.Generator().manual_seed(cfg.seed * 1009 + 17 + rank)}
    model.to(device)
    opt = make_optimizer(model, cfg, device)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    n = len(train_ds)
    local_bs = cfg.batch_size // world
    if local_bs < 1:
        raise VaekitError(f"--batch-size {cfg.batch_size} is smaller than the number of processes ({world})")
    steps_per_epoch = n // cfg.batch_size if n >= cfg.batch_size else 1
    total_steps = steps_per_epoch * cfg.epochs
    ckpt_path = out / CKPT_DIR / CKPT_FILE if out is not None else None

    state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best_val": -math.inf, "bad_epochs": 0,
             "metrics_lines": 0, "seconds": 0.0, "sums": [0.0, 0.0, 0.0, 0.0]}
    perm = None
    if resume:
        state, perm = load_checkpoint(ckpt_path, model, opt, gens)
        _truncate_metrics(out / "metrics.jsonl", state["metrics_lines"])
    if writer:
        io.atomic_write_text(out / "config.json", run_config.to_json() + "\n")
    metrics = io.read_metrics(out) if (resume and out is not None) else []
    tb = _tensorboard(out) if writer else None
    quiet = cfg.quiet or rank != 0 or not sys.stderr.isatty() or os.environ.get("CI")
    line_log = rank == 0 and not cfg.quiet and not sys.stderr.isatty()
    bad_steps, stopped = 0, "finished"
    params = [p for p in model.parameters() if p.requires_grad]
    t_start = time.perf_counter() - state["seconds"]

    def checkpoint(perm_now):
        if writer:
            state["seconds"] = time.perf_counter() - t_start
            save_checkpoint(ckpt_path, model, opt, state, gens, perm_now)

    with _SignalFlag() as flag:
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            if perm is None:
                perm = torch.randperm(n, generator=gens["order"])
            if state["step_in_epoch"] == 0:
                state["sums"] = [0.0, 0.0, 0.0, 0.0]
            sums = torch.tensor(state["sums"], dtype=torch.float64, device=device)  # loss, elbo, recon, kl
            model.train()
            bar = _progress(steps_per_epoch, state["step_in_epoch"], bool(quiet), f"epoch {epoch + 1}/{cfg.epochs}")
            t_epoch = time.perf_counter()
            steps_done = 0
            for s in range(state["step_in_epoch"], steps_per_epoch):
                lo = s * cfg.batch_size + rank * local_bs
                idx = perm[lo:lo + local_bs]
                x = train_ds.batch(idx, device)
                if dynamic:
                    x = draw_binary(x.cpu(), gens["binarize"]).to(device) if device.type != "cpu" else draw_binary(x, gens["binarize"])
                lr = learning_rate(cfg, state["step"], total_steps, epoch)
                for g in opt.param_groups:
                    g["lr"] = lr
                beta = kl_weight(cfg.beta, cfg.kl_warmup, epoch + s / steps_per_epoch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                    loss_vec, terms = net(x, beta=beta, free_bits=cfg.free_bits, iw_k=cfg.iw_k)
                loss = loss_vec.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else math.inf)
                ok = bool((torch.isfinite(loss) & torch.isfinite(norm)).item())  # one sync; free on CPU
                if ok:
                    opt.step()
                    bad_steps = 0
                    with torch.no_grad():
                        sums += torch.stack([loss_vec.sum(), terms.elbo.sum(), terms.recon.sum(), terms.kl.sum()]).double()
                else:
                    bad_steps += 1
                    if bad_steps >= cfg.max_bad_steps:
                        stopped = "diverged"
                        break
                state["step"] += 1
                state["step_in_epoch"] = s + 1
                steps_done += 1
                if s % 25 == 0 and not quiet:
                    k = max(1, state["step_in_epoch"]) * cfg.batch_size
                    vals = (sums / k).tolist()
                    bar.set_postfix(elbo=f"{vals[1]:.2f}", kl=f"{vals[3]:.2f}",
                                    ex_s=f"{steps_done * cfg.batch_size / (time.perf_counter() - t_epoch):.0f}")
                bar.update(1)
                if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and s + 1 < steps_per_epoch:
                    state["sums"] = sums.tolist()
                    checkpoint(perm)
                if flag.signum is not None:
                    state["sums"] = sums.tolist()
                    checkpoint(perm)
                    bar.close()
                    where = f"epoch {epoch + 1}, step {state['step']}"
                    how = f"vaekit train --out {out} --resume" if out is not None else "fit(..., resume=True)"
                    raise Interrupted(flag.signum, f"interrupted at {where}; checkpoint saved. Resume with: {how}")
            bar.close()
            if stopped == "diverged":
                where = f"epoch {epoch + 1}, step {state['step']}"
                raise Diverged(f"training diverged: {cfg.max_bad_steps} consecutive steps with a non-finite loss or "
                               f"gradient at {where} (likely cause: learning rate {cfg.lr:g} too high or data with "
                               f"extreme values; try a lower --lr or --clip 1.0). Last good checkpoint: "
                               f"{ckpt_path if ckpt_path else 'none'}")
            if world > 1:
                import torch.distributed as dist
                dist.all_reduce(sums)
            n_seen = steps_per_epoch * cfg.batch_size if n >= cfg.batch_size else n
            train_vals = (sums / n_seen).tolist()
            row = {"epoch": epoch + 1, "step": state["step"], "seconds": round(time.perf_counter() - t_start, 3),
                   "epoch_seconds": round(time.perf_counter() - t_epoch, 3), "lr": lr,
                   "train_loss": train_vals[0], "train_elbo": train_vals[1], "train_recon": train_vals[2],
                   "train_kl": train_vals[3]}
            improved = True
            if val is not None:
                v = validate(model, val, cfg, device, rank, world)
                row.update({"val_elbo": v[0], "val_recon": v[1], "val_kl": v[2]})
                improved = v[0] > state["best_val"]
                if improved:
                    state["best_val"], state["bad_epochs"] = v[0], 0
                else:
                    state["bad_epochs"] += 1
            metrics.append(row)
            if writer:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if improved:
                    io.save_tensors(model.state_dict(), out / io.WEIGHTS)
                if tb is not None:
                    for k, v in row.items():
                        if k not in ("epoch", "step"):
                            tb.add_scalar(k, v, epoch + 1)
            if line_log:
                msg = f"epoch {epoch + 1}/{cfg.epochs}  train elbo {row['train_elbo']:.2f}  kl {row['train_kl']:.2f}"
                if "val_elbo" in row:
                    msg += f"  val elbo {row['val_elbo']:.2f}"
                print(msg + f"  ({row['epoch_seconds']:.1f}s)", file=sys.stderr, flush=True)
            state.update(epoch=epoch + 1, step_in_epoch=0, metrics_lines=len(metrics), sums=[0.0, 0.0, 0.0, 0.0])
            perm = None
            if cfg.patience and state["bad_epochs"] >= cfg.patience:
                stopped = "early-stopped"
                checkpoint(torch.empty(0, dtype=torch.int64))
                break
            checkpoint(torch.empty(0, dtype=torch.int64))
            if flag.signum is not None:
                how = f"vaekit train --out {out} --resume" if out is not None else "fit(..., resume=True)"
                raise Interrupted(flag.signum, f"interrupted after epoch {epoch + 1}; checkpoint saved. Resume with: {how}")
    if tb is not None:
        tb.close()
    if out is not None and val is not None and (out / io.WEIGHTS).exists():
        best = io.load_tensors(out / io.WEIGHTS)   # the best validation epoch's weights
        model.load_state_dict(best)
    elif writer:
        io.save_tensors(model.state_dict(), out / io.WEIGHTS)
    if writer and not model.is_vae:
        _fit_ae_codes(model, train_ds, device)
        io.save_tensors(model.state_dict(), out / io.WEIGHTS)
    model.eval()
    return Run(out, model, metrics, stopped)


@torch.inference_mode()
def validate(model, ds: Dataset, cfg: TrainConfig, device, rank: int = 0, world: int = 1) -> list[float]:
    """Mean (elbo, recon, kl) on `ds`, binarized with a fixed seed so epochs are comparable."""
    from vaekit.evaluate import eval_batches
    from vaekit.objectives import elbo
    model.eval()
    shard = ds.subset(torch.arange(rank, len(ds), world)) if world > 1 else ds
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    state = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 12345)
    for x in eval_batches(shard, 1000, cfg.binarize, cfg.seed + 2, device):
        t = elbo(model, x)
        sums += torch.stack([t.elbo.sum(), t.recon.sum(), t.kl.sum(), torch.tensor(float(len(x)), device=device)]).double()
    torch.set_rng_state(state)  # validation must not perturb the training noise (exact resume)
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(sums)
    model.train()
    return (sums[:3] / sums[3]).tolist()


@torch.inference_mode()
def _fit_ae_codes(model, ds: Dataset, device) -> None:
    """An AE generates from a Gaussian fitted to its training codes; fit it once training is done."""
    model.eval()
    codes = torch.cat([model.encode(ds.batch(slice(i, i + 1000), device)).mean for i in range(0, len(ds), 1000)])
    model.fit_code_gaussian(codes)


def _truncate_metrics(path: Path, lines: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    kept = path.read_text().splitlines()[:lines]
    io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(run_config: RunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False) -> Run:
    """What `vaekit train` does: load data, build the model, fit, save. Returns the Run."""
    out = Path(out)
    rank, world = dist_info()
    if resume:
        saved = io.load_config(out)
        run_config = RunConfig(saved.model, _resume_overrides(saved.train, run_config.train))
    cfg = run_config.train
    ds = load_data(cfg.data, "train")
    model_cfg = replace(run_config.model, input_shape=ds.shape) if not resume else run_config.model
    if tuple(model_cfg.input_shape) != ds.shape:
        raise VaekitError(f"--data {cfg.data}: examples have shape {ds.shape}, the run was built for "
                          f"{tuple(model_cfg.input_shape)}")
    model_cfg.validate()
    cfg = resolve_binarize(cfg, model_cfg).validate(model_cfg)
    run_config = RunConfig(model_cfg, cfg)
    if world > 1:
        import torch.distributed as dist
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            cfg = replace(cfg, device="cuda")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        train_ds, val_ds = split_validation(ds, cfg.val_fraction, cfg.seed)
        model = build_model(model_cfg)
        return fit(model, train_ds, cfg, out, val=val_ds, resume=resume, overwrite=overwrite, run_config=run_config)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


_RESUMABLE = ("epochs", "quiet", "device", "threads", "checkpoint_every")


def _resume_overrides(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """On --resume the saved config rules; only a few harmless fields may change (e.g. more --epochs)."""
    defaults = TrainConfig()
    changes = {}
    for name in TrainConfig.__dataclass_fields__:
        new, old = getattr(given, name), getattr(saved, name)
        if new == old or new == getattr(defaults, name):
            continue
        if name not in _RESUMABLE:
            raise VaekitError(f"--resume: --{name.replace('_', '-')} cannot change on resume "
                              f"(run has {old!r}, given {new!r})")
        changes[name] = new
    return replace(saved, **changes)
