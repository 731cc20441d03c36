"""The training loop: one tensor of data batched by index, checkpoints with exact resume, a NaN guard,
signals, metrics, and DistributedDataParallel under torchrun.

    run = vaekit.fit(model, train_ds, TrainConfig(epochs=10), out="runs/x", val=val_ds)

`train(run_config, out)` is what `vaekit train` calls: it loads the data, builds the
model and calls `fit`, so the CLI and Python share one code path.

Exact resume: the checkpoint holds the weights, Adam's state, the torch RNG state
(reparameterization noise), the data generators' states (order and binarization),
the current epoch's permutation, the step within it and the epoch's running sums.
Resuming on CPU with the same thread count replays the same arithmetic, so the final
weights are bit-identical to a run that was never interrupted. Under torchrun every
rank's RNG states are gathered into rank 0's checkpoint, so a resumed DDP run picks
up each rank's own noise stream.

DDP: every rank draws the same permutation; global batch s is perm[s*B:(s+1)*B] and
rank r takes the r-th of `world` equal slices of it, so the ranks together see exactly
the batches a single process would. DDP averages the gradients, which makes a step the
same mean over the global batch (only the noise and the summation order differ).
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
from vaekit.config import ModelConfig, RunConfig, TrainConfig, check_cpu_bf16
from vaekit.data import Dataset, split_validation
from vaekit.data import binarize as draw_binary
from vaekit.data import load as load_data
from vaekit.errors import VaekitError, is_compile_error
from vaekit.models import build_model
from vaekit.objectives import kl_weight

CKPT_DIR, CKPT_FILE = "checkpoint", "state.safetensors"
TIMING_KEYS = ("seconds", "epoch_seconds")  # the metrics fields that differ between identical runs


@dataclass
class Run:
    """What `fit` returns: where the run lives, the trained model and its per-epoch metrics."""

    out: Path | None
    model: torch.nn.Module
    metrics: list[dict] = field(default_factory=list)
    stopped: str = "finished"  # finished | early-stopped


class Interrupted(Exception):
    """Raised out of `fit` after SIGINT/SIGTERM, once the checkpoint is safely written
    (or at once, without a new checkpoint, on a second signal). The CLI exits 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Diverged(VaekitError):
    """cfg.max_bad_steps consecutive steps had a non-finite loss or gradient."""


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


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, epoch: int) -> float:
    """The schedule as a pure function of progress (nothing to checkpoint). `step` counts from 0."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    if cfg.schedule == "step":
        return cfg.lr * 0.5 ** (epoch // cfg.step_every)
    return cfg.lr


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one kernel for all parameters; torch 2.13 has it on CPU too, where it
    made opt.step() ~3x faster than foreach for the 784-400-20 MLP), foreach where fused is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def _as_dataset(data, what: str = "data") -> Dataset:
    """A Dataset from a Dataset, a dataset name or path, or an array/tensor (N, *shape) in [0, 1] or uint8."""
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_data(data, "train")
    if isinstance(data, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(data)
        if x.dtype != torch.uint8:
            x = x.float()
        return Dataset(x, None, what)
    raise VaekitError(f"{what}: expected a Dataset, a dataset name or path, or an array; got {type(data).__name__}")


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: Path, model, opt, state: dict, rngs: dict[str, torch.Tensor], perm: torch.Tensor) -> None:
    """One safetensors file, written atomically: weights, optimizer, RNG states, permutation; scalars as metadata.

    `rngs` maps a name (torch, binarize, order, cuda; with a `.r{rank}` suffix under DDP) to its state."""
    np_state = np.random.get_state()
    extra = {f"rng.{k}": v for k, v in rngs.items()}
    extra["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    extra["perm"] = perm
    meta = {**state, "numpy_pos": int(np_state[2]), "python_rng": list(random.getstate()[1])}
    io.save_training_state(path, model, opt, extra, meta)


def load_checkpoint(path: Path, model, opt) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """Restore the weights, optimizer, numpy and python RNGs; returns (scalar state, RNG states, permutation)."""
    tensors, meta = io.load_training_state(path, model, opt)
    try:
        np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), meta.pop("numpy_pos"), 0, 0.0))
        random.setstate((3, tuple(meta.pop("python_rng")), None))
        perm = tensors["perm"]
    except (KeyError, ValueError, TypeError) as e:
        raise VaekitError(f"{path}: checkpoint does not match this model ({str(e).splitlines()[0][:120]})") from None
    rngs = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.") and k != "rng.numpy"}
    return meta, rngs, perm


def _remove_stray_temps(out: Path) -> None:
    """A kill -9 during an atomic write (checkpoint, weights, config, metrics) leaves its temp file behind;
    the file it was replacing is intact. Remove those leftovers from the run folder and its checkpoint/."""
    for folder in (out, out / CKPT_DIR):
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- the loop


class _SignalFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps (never mid-update); a second signal
    raises KeyboardInterrupt at once, which `fit` turns into Interrupted."""

    def __init__(self):
        self.signum = None
        self.second = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.second = signum
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _progress(steps: int, initial: int, batch: int, disable: bool, desc: str):
    """The bar counts steps but shows examples (rate in examples/s) and the ETA."""
    from tqdm import tqdm

    return tqdm(
        total=steps,
        initial=initial,
        disable=disable,
        desc=desc,
        unit="ex",
        unit_scale=batch,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _agree(values: list[float], world: int, device) -> list[float]:
    """Under DDP, the max of each flag over ranks, so that every rank takes the same branch."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _rng_states(gens: dict[str, torch.Generator], rank: int, world: int, device) -> dict[str, torch.Tensor]:
    """Every RNG state the loop draws from; under DDP gathered from all ranks (rank r's keys end in .r{r})."""
    local = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in gens.items()}}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    if world == 1:
        return local
    import torch.distributed as dist

    out = {}
    for k, v in local.items():
        parts = [torch.empty_like(v, device=device) for _ in range(world)]
        dist.all_gather(parts, v.to(device))
        out.update({f"{k}.r{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def _set_rng_states(
    rngs: dict[str, torch.Tensor], gens: dict[str, torch.Generator], rank: int, world: int, device, seed: int, step: int
) -> None:
    """Put back this rank's RNG states; resumed with another number of processes, a rank gets fresh seeds."""
    suffix = f".r{rank}" if world > 1 else ""
    mine = {k: rngs.get(k + suffix) for k in ("torch", "cuda", *gens)}
    if mine["torch"] is None:
        torch.manual_seed(seed + rank + 7919 * step)
        mine = {k: rngs.get(k, rngs.get(k + ".r0")) for k in gens}  # data RNGs are the same on every rank
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


def _batch(
    ds: Dataset, global_idx: torch.Tensor, rank: int, world: int, gen: torch.Generator | None, device
) -> torch.Tensor:
    """This rank's slice of global batch `global_idx`, as float on `device`; with `gen`, dynamically binarized.

    The binarization is drawn for the whole global batch from a generator every rank shares, then sliced,
    so a step sees the same data whatever the number of processes (the bernoulli draw is cheap)."""
    parts = global_idx.tensor_split(world)
    if gen is None:
        return ds.batch(parts[rank], device)
    lo = sum(len(p) for p in parts[:rank])
    x = draw_binary(ds.batch(global_idx if world > 1 else parts[rank]), gen)  # CPU generator, CPU draw
    return x[lo : lo + len(parts[rank])].to(device, non_blocking=True)


def fit(
    model,
    data,
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    *,
    val=None,
    resume: bool = False,
    overwrite: bool = False,
    run_config: RunConfig | None = None,
) -> Run:
    """Train `model` on `data` as `cfg` says; write the run folder `out` (if given) on rank 0.

    Arguments:
        data, val: a Dataset, a dataset name or path, or an array (N, *shape) of pixels in [0, 1] (or uint8).
            `val` (optional) is the held-out set for early stopping and best-model keeping.
        out: the run folder; None trains in memory and writes nothing (no checkpoints, no resume).
    Returns a Run: the model (the best validation epoch's weights when `val` is given), per-epoch metrics
    (ELBO terms per example, in nats) and why it stopped. Raises Interrupted after SIGINT/SIGTERM
    (checkpoint written) and Diverged after cfg.max_bad_steps consecutive non-finite steps.
    """
    cfg = resolve_binarize(cfg or TrainConfig(), model.config).validate(model.config)
    train_ds, val = _as_dataset(data), _as_dataset(val, "val")
    for name, ds in (("data", train_ds), ("val", val)):
        if ds is not None and tuple(ds.shape) != tuple(model.config.input_shape):
            raise VaekitError(
                f"{name}: examples have shape {tuple(ds.shape)}, the model expects {tuple(model.config.input_shape)}"
            )
    if resume and out is None:
        raise VaekitError("resume=True needs the run folder `out` that holds the checkpoint")
    rank, world = dist_info()
    device = resolve_device(cfg.device)
    if cfg.amp and device.type == "cpu":
        check_cpu_bf16()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set from LOCAL_RANK in train()
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
        _remove_stray_temps(out)
    if world > 1 and out is not None:
        torch.distributed.barrier()

    torch.manual_seed(cfg.seed + rank)  # reparameterization noise, different per rank
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    gens = {
        "order": torch.Generator().manual_seed(cfg.seed),  # same on every rank
        "binarize": torch.Generator().manual_seed(cfg.seed * 1009 + 17),
    }
    model.to(device)
    opt = make_optimizer(model, cfg)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = _compiled(net)

    n = len(train_ds)
    if n < world:
        raise VaekitError(f"{n} training examples cannot be shared by {world} processes")
    bs = min(cfg.batch_size, n)  # global batch; the last partial batch of an epoch is dropped
    if bs // world < 1:
        raise VaekitError(f"--batch-size {cfg.batch_size} is smaller than the number of processes ({world})")
    steps_per_epoch = n // bs
    total_steps = steps_per_epoch * cfg.epochs
    ckpt_path = out / CKPT_DIR / CKPT_FILE if out is not None else None
    params = [p for p in model.parameters() if p.requires_grad]

    # sums: this rank's (loss, elbo, recon, kl, examples) over the good steps of the current epoch
    state = {
        "epoch": 0,
        "step_in_epoch": 0,
        "step": 0,
        "best_val": -math.inf,
        "bad_epochs": 0,
        "metrics_lines": 0,
        "seconds": 0.0,
        "sums": [0.0] * 5,
        "world": world,
    }
    perm, metrics, best = None, [], None
    if resume:
        state, rngs, perm = load_checkpoint(ckpt_path, model, opt)
        _set_rng_states(rngs, gens, rank, world, device, cfg.seed, state["step"])
        perm = perm if perm.numel() else None
        if rank != 0:  # the saved sums are the global ones; rank 0 carries them on
            state["sums"] = [0.0] * 5
        metrics = io.read_metrics(out)[: state["metrics_lines"]]
        if writer:
            _truncate_metrics(out / "metrics.jsonl", state["metrics_lines"])
        if val is not None and state["best_val"] > -math.inf and (out / io.WEIGHTS).is_file():
            best = io.load_tensors(out / io.WEIGHTS)
    if writer:
        io.atomic_write_text(out / "config.json", run_config.to_json() + "\n")
    tb = _tensorboard(out) if writer else None
    tty = sys.stderr.isatty() and not _in_ci()
    show_bar = rank == 0 and not cfg.quiet and tty
    line_log = rank == 0 and not cfg.quiet and not tty
    stopped, bad_steps, last_ckpt = "finished", 0, state["step"] if resume else None
    t_start = time.perf_counter() - state["seconds"]

    def checkpoint(perm_now: torch.Tensor, sums: torch.Tensor) -> None:
        """Called on every rank at the same points (RNG states and sums are collected across ranks)."""
        nonlocal last_ckpt
        if out is None:
            return
        rngs = _rng_states(gens, rank, world, device)
        if world > 1:
            sums = sums.clone()
            torch.distributed.all_reduce(sums)
        if writer:
            state["sums"], state["seconds"] = sums.tolist(), time.perf_counter() - t_start
            save_checkpoint(ckpt_path, model, opt, state, rngs, perm_now)
        last_ckpt = state["step"]

    def interrupted(signum: int, where: str) -> Interrupted:
        if out is None:
            return Interrupted(signum, f"interrupted {where}; nothing saved (fit was given no run folder)")
        how = f"vaekit train --out {out} --resume" + (" (under the same torchrun command)" if world > 1 else "")
        return Interrupted(
            signum,
            f"interrupted by {signal.Signals(signum).name} {where}; checkpoint saved in "
            f"{out / CKPT_DIR}. Resume with: {how}",
        )

    with _SignalFlag() as flag:
        try:
            while state["epoch"] < cfg.epochs:
                epoch = state["epoch"]
                if perm is None:
                    perm = torch.randperm(n, generator=gens["order"])
                sums = torch.tensor(state["sums"], dtype=torch.float64, device=device)
                model.train()
                bar = _progress(
                    steps_per_epoch, state["step_in_epoch"], bs, not show_bar, f"epoch {epoch + 1}/{cfg.epochs}"
                )
                t_epoch = time.perf_counter()
                for s in range(state["step_in_epoch"], steps_per_epoch):
                    x = _batch(
                        train_ds,
                        perm[s * bs : (s + 1) * bs],
                        rank,
                        world,
                        gens["binarize"] if dynamic else None,
                        device,
                    )  # (B/world, *shape)
                    lr = learning_rate(cfg, state["step"], total_steps, epoch)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    beta = kl_weight(cfg.beta, cfg.kl_warmup, epoch + s / steps_per_epoch)
                    loss_vec, terms, finite = _forward_backward(net, opt, params, x, cfg, beta, device)
                    if world == 1:  # the one sync per step (free on CPU)
                        bad, stop = not finite.item(), flag.signum is not None
                    else:
                        bad, stop = map(
                            bool, _agree([float(not finite.item()), float(flag.signum is not None)], world, device)
                        )
                    if bad:  # skip the update: weights and Adam's moments stay as they were
                        bad_steps += 1
                        if bad_steps >= cfg.max_bad_steps:
                            bar.close()
                            raise _diverged(cfg, epoch, state["step"] + 1, ckpt_path, last_ckpt)
                    else:
                        opt.step()
                        bad_steps = 0
                        with torch.no_grad():
                            sums += torch.stack(
                                [
                                    loss_vec.sum(),
                                    terms.elbo.sum(),
                                    terms.recon.sum(),
                                    terms.kl.sum(),
                                    loss_vec.new_tensor(float(len(x))),
                                ]
                            ).double()
                    state["step"] += 1
                    state["step_in_epoch"] = s + 1
                    if show_bar:
                        if s % 25 == 0:
                            v = (sums[:4] / sums[4].clamp(min=1)).tolist()
                            bar.set_postfix(elbo=f"{v[1]:.2f}", kl=f"{v[3]:.2f}")  # draws now: every 25 steps
                        bar.update(1)
                    if stop or (
                        cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and s + 1 < steps_per_epoch
                    ):
                        checkpoint(perm, sums)
                    if stop:
                        bar.close()
                        raise interrupted(flag.signum or signal.SIGTERM, f"at epoch {epoch + 1}, step {state['step']}")
                bar.close()

                if world > 1:
                    torch.distributed.all_reduce(sums)
                train_vals = (sums[:4] / sums[4].clamp(min=1)).tolist()
                row = {
                    "epoch": epoch + 1,
                    "step": state["step"],
                    "seconds": round(time.perf_counter() - t_start, 3),
                    "epoch_seconds": round(time.perf_counter() - t_epoch, 3),
                    "lr": learning_rate(cfg, state["step"] - 1, total_steps, epoch),
                    "train_loss": train_vals[0],
                    "train_elbo": train_vals[1],
                    "train_recon": train_vals[2],
                    "train_kl": train_vals[3],
                }
                improved = True
                if val is not None:
                    v = validate(model, val, cfg, device, rank, world)
                    row.update({"val_elbo": v[0], "val_recon": v[1], "val_kl": v[2]})
                    improved = v[0] > state["best_val"]
                    if improved:
                        state["best_val"], state["bad_epochs"] = v[0], 0
                        best = {k: t.detach().clone() for k, t in model.state_dict().items()}
                    else:
                        state["bad_epochs"] += 1
                metrics.append(row)
                if writer:
                    _write_epoch(out, row, model if improved else None, tb)
                if line_log:
                    _print_epoch(row, cfg.epochs)
                state.update(epoch=epoch + 1, step_in_epoch=0, metrics_lines=len(metrics), sums=[0.0] * 5)
                perm = None
                no_perm = torch.empty(0, dtype=torch.int64)
                checkpoint(no_perm, torch.zeros(5, dtype=torch.float64, device=device))
                if cfg.patience and state["bad_epochs"] >= cfg.patience:
                    stopped = "early-stopped"
                    if line_log:
                        print(f"early stop: no validation improvement for {cfg.patience} epochs", file=sys.stderr)
                    break
                # a signal during the last epoch's validation: nothing is left to resume, so it just finishes
                if state["epoch"] < cfg.epochs and _agree([float(flag.signum is not None)], world, device)[0]:
                    raise interrupted(flag.signum or signal.SIGTERM, f"after epoch {epoch + 1}")
        except KeyboardInterrupt:
            if flag.second is None:
                raise
            raise Interrupted(
                flag.second,
                f"stopped at once on a second {signal.Signals(flag.second).name}; "
                f"the last checkpoint (step {last_ckpt}) is kept"
                if last_ckpt is not None
                else f"stopped at once on a second {signal.Signals(flag.second).name}; no checkpoint was written yet",
            ) from None
        finally:
            if tb is not None:
                tb.close()

    if best is not None:
        model.load_state_dict(best)  # the best validation epoch's weights
    if not model.is_vae:
        _fit_ae_codes(model, train_ds, device)
    if writer:
        io.save_tensors(model.state_dict(), out / io.WEIGHTS)
    model.eval()
    return Run(out, model, metrics, stopped)


def _compiled(net):
    """torch.compile(net), with a one-line error if the backend cannot compile (no C++ compiler, ...).
    Shapes are fixed (the last partial batch is dropped) and the KL weight is a traced float, so it compiles
    once per run."""
    compiled = torch.compile(net)

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as e:
            if is_compile_error(e):
                raise VaekitError(
                    f"--compile: torch.compile failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); train without --compile"
                ) from None
            raise

    return call


def _forward_backward(net, opt, params, x, cfg: TrainConfig, beta: float, device):
    """Loss, gradients (clipped if cfg.clip) and whether both are finite, as a tensor (no sync here)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        loss_vec, terms = net(x, beta=beta, free_bits=cfg.free_bits, iw_k=cfg.iw_k)  # (B,), Terms
    loss = loss_vec.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return loss_vec, terms, torch.isfinite(loss) & torch.isfinite(norm)


def _write_epoch(out: Path, row: dict, model, tb) -> None:
    """Append the metrics row (and TensorBoard scalars); save the weights when this epoch is the best yet."""
    io.append_text(out / "metrics.jsonl", json.dumps(row) + "\n")
    if model is not None:
        io.save_tensors(model.state_dict(), out / io.WEIGHTS)
    if tb is not None:
        for k, value in row.items():
            if k not in ("epoch", "step"):
                tb.add_scalar(k, value, row["epoch"])


def _print_epoch(row: dict, epochs: int) -> None:
    """The one plain line per epoch shown instead of the bar when stderr is not a terminal."""
    msg = f"epoch {row['epoch']}/{epochs}  train elbo {row['train_elbo']:.2f}  kl {row['train_kl']:.2f}"
    if "val_elbo" in row:
        msg += f"  val elbo {row['val_elbo']:.2f}"
    print(msg + f"  ({row['epoch_seconds']:.1f}s)", file=sys.stderr, flush=True)


def _diverged(cfg: TrainConfig, epoch: int, step: int, ckpt_path: Path | None, last_ckpt: int | None) -> Diverged:
    kept = (
        f"the last good checkpoint (step {last_ckpt}) is intact in {ckpt_path.parent}; --resume from it or "
        f"start again with --overwrite"
        if last_ckpt is not None
        else "no checkpoint had been written yet"
    )
    return Diverged(
        f"training diverged: {cfg.max_bad_steps} consecutive steps with a non-finite loss or gradient, "
        f"the last at epoch {epoch + 1}, step {step}. Likely cause: the learning rate ({cfg.lr:g}) is too "
        f"high for this model and data, or the data has extreme values: try a lower --lr or --clip 1.0; "
        f"{kept}"
    )


@torch.inference_mode()
def validate(model, ds: Dataset, cfg: TrainConfig, device, rank: int = 0, world: int = 1) -> list[float]:
    """Mean (elbo, recon, kl) per example in nats on `ds`, binarized with a fixed seed so epochs are comparable."""
    from vaekit.evaluate import eval_batches
    from vaekit.objectives import elbo

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    state = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 12345 + rank)
    for x in eval_batches(ds, 1000, cfg.binarize, cfg.seed + 2, device):
        x = x[rank::world]  # this rank's share of a batch binarized as in a single process
        if not len(x):
            continue
        t = elbo(model, x)
        sums += torch.stack([t.elbo.sum(), t.recon.sum(), t.kl.sum(), t.elbo.new_tensor(float(len(x)))]).double()
    torch.set_rng_state(state)  # validation must not perturb the training noise (exact resume)
    if world > 1:
        torch.distributed.all_reduce(sums)
    model.train()
    return (sums[:3] / sums[3]).tolist()


@torch.inference_mode()
def _fit_ae_codes(model, ds: Dataset, device) -> None:
    """An AE generates from a Gaussian fitted to its training codes; fit it once training is done."""
    from vaekit.evaluate import posterior_means

    model.eval()
    model.fit_code_gaussian(posterior_means(model, ds, 1000, device))


def _truncate_metrics(path: Path, lines: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    kept = path.read_text().splitlines()[:lines]
    io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _tensorboard(out: Path):
    """A SummaryWriter when tensorboard is installed and works; otherwise None (it is an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(out / "tensorboard"))
    except Exception:  # not installed, or an incompatible install: never a reason to stop training
        return None


# ------------------------------------------------------------------------------------- the CLI's entry


def train(
    run_config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    given: set[str] | None = None,
) -> Run:
    """What `vaekit train` does: load data, build the model, fit, save. Returns the Run.

    `given` names the options the user set (flags or config file); on --resume only those are checked
    against the saved run (None: any value that differs from the default counts as given)."""
    out = Path(out)
    rank, world = dist_info()
    if resume:
        saved = _saved_run_config(out)
        run_config = RunConfig(
            _resume_model(saved.model, run_config.model, given),
            _resume_overrides(saved.train, run_config.train, given, saved.model),
        )
    cfg = run_config.train
    ds = load_data(cfg.data, "train")
    model_cfg = replace(run_config.model, input_shape=ds.shape) if not resume else run_config.model
    if tuple(model_cfg.input_shape) != ds.shape:
        raise VaekitError(
            f"--data {cfg.data}: examples have shape {ds.shape}, the run was built for {tuple(model_cfg.input_shape)}"
        )
    model_cfg.validate()
    io.check_fits_in_memory(model_cfg, f"--data {cfg.data}")
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
        torch.manual_seed(cfg.seed)  # the initial weights follow --seed (the same on every rank)
        model = build_model(model_cfg)
        return fit(model, train_ds, cfg, out, val=val_ds, resume=resume, overwrite=overwrite, run_config=run_config)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _saved_run_config(out: Path) -> RunConfig:
    if not (out / CKPT_DIR / CKPT_FILE).is_file():
        what = "does not exist" if not out.exists() else f"has no checkpoint ({CKPT_DIR}/{CKPT_FILE})"
        raise VaekitError(
            f"--resume: {out} {what}, so there is nothing to resume; start it without --resume (or with --overwrite)"
        )
    return RunConfig.from_json_file(out / io.CONFIG)


def _changed(name: str, new, old, default, given: set[str] | None) -> bool:
    if given is not None:
        return name in given and new != old
    return new != old and new != default


def _resume_model(saved: ModelConfig, new: ModelConfig, given: set[str] | None) -> ModelConfig:
    """The architecture cannot change on resume: the checkpoint's tensors are shaped by it."""
    defaults = ModelConfig()
    for name in ModelConfig.__dataclass_fields__:
        if name == "input_shape":
            continue
        n, o = getattr(new, name), getattr(saved, name)
        if _changed(name, n, o, getattr(defaults, name), given):
            raise VaekitError(
                f"--resume: --{name.replace('_', '-')} cannot change on resume (the run has "
                f"{_show(o)}, given {_show(n)}); start a new run with another --out instead"
            )
    return saved


# what may change on --resume: more epochs, how it runs, and lr/clip (the way on after a divergence)
_RESUMABLE = (
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


def _resume_overrides(
    saved: TrainConfig, given_cfg: TrainConfig, given: set[str] | None, model: ModelConfig
) -> TrainConfig:
    """On --resume the saved config rules; only a few harmless fields may change (e.g. more --epochs)."""
    defaults = TrainConfig()
    if given_cfg.binarize == "auto":  # unchanged unless it was given and resolves to something else
        auto = resolve_binarize(given_cfg, model).binarize
        given_cfg = replace(given_cfg, binarize=saved.binarize if given is None else auto)
    changes = {}
    for name in TrainConfig.__dataclass_fields__:
        new, old = getattr(given_cfg, name), getattr(saved, name)
        if not _changed(name, new, old, getattr(defaults, name), given):
            continue
        if name not in _RESUMABLE:
            raise VaekitError(
                f"--resume: --{name.replace('_', '-')} cannot change on resume "
                f"(the run has {_show(old)}, given {_show(new)})"
            )
        changes[name] = new
    return replace(saved, **changes)


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else repr(v)
