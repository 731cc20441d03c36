"""The training loop: one tensor of data batched by index, checkpoints with exact resume, a NaN guard,
signals, metrics, and DistributedDataParallel under torchrun.

    run = vaekit.fit(model, train_ds, TrainConfig(epochs=10), out="runs/x", val=val_ds)

`train(run_config, out)` is what `vaekit train` calls: it loads the data, builds the model and calls
`fit`, so the CLI and Python share one code path. The loop (`Loop.run_epoch`) reads top to bottom:
learning rate -> KL weight -> forward/backward -> finite check -> step -> log -> maybe checkpoint. Its
state is a `LoopState`; checkpoints and the resume policy live in checkpoint.py, ranks and sharding in
distributed.py, the bar/metrics/TensorBoard in runlog.py.

Exact resume: the checkpoint holds the weights, Adam's state, the torch RNG state (reparameterization
noise), the data generators' states (order and binarization), the current epoch's permutation, the step
within it and the epoch's running sums. Resuming on CPU with the same thread count replays the same
arithmetic, so the final weights are bit-identical to a run that was never interrupted. Under torchrun
the ranks share every random stream (each draws the global batch's noise and keeps its rows), so a DDP
run trains the weights one process does (up to summation order) and resumes from rank 0's states.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vaekit import checkpoint as ckpt
from vaekit import io, seeds, speed, steps
from vaekit.checkpoint import LoopState
from vaekit.config import RunConfig, TrainConfig, budget_seconds
from vaekit.data import load as load_data
from vaekit.data import split_validation
from vaekit.distributed import (
    agree,
    all_sum,
    barrier,
    dist_info,
    process_group,
    rank_rows,
    resolve_device,
    shard_batch,
    shard_labels,
    shard_noise,
    shard_weight,
    wrap,
)
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.objectives import kl_weight
from vaekit.priors import init_pseudo_inputs
from vaekit.runlog import RunLog, truncate_metrics
from vaekit.signals import SignalFlag
from vaekit.steps import fit_ae_codes, make_optimizer, make_step, resolve_binarize

__all__ = ["Diverged", "Interrupted", "LoopState", "Run", "dist_info", "fit", "resolve_device", "train"]
TIMING_KEYS = ("seconds", "epoch_seconds")  # the metrics fields that differ between identical runs


@dataclass
class Run:
    """What `fit` returns: where the run lives, the trained model and its per-epoch metrics."""

    out: Path | None
    model: torch.nn.Module
    metrics: list[dict] = field(default_factory=list)
    stopped: str = "finished"  # finished | early-stopped | time-budget (cfg.time_budget ran out)
    config: TrainConfig | None = None  # what it trained with (--amp/--compile auto resolved)


class Interrupted(Exception):
    """Raised out of `fit` after SIGINT/SIGTERM, once the checkpoint is safely written
    (or at once, without a new checkpoint, on a second signal). The CLI exits 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Diverged(VaekitError):
    """cfg.max_bad_steps consecutive steps had a non-finite loss or gradient."""


# -------------------------------------------------------------------------------------------- the loop


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
    on_epoch=None,
) -> Run:
    """Train `model` on `data` as `cfg` says; write the run folder `out` (if given) on rank 0.

    Arguments:
        data, val: a Dataset, a dataset name or path, or an array (N, *shape) of pixels in [0, 1] (or uint8).
            `val` (optional) is the held-out set for early stopping and best-model keeping.
        out: the run folder; None trains in memory and writes nothing (no checkpoints, no resume).
        on_epoch: called as on_epoch(model, epoch) on rank 0 before the first epoch (epoch 0) and after each
            one (epoch = epochs done), e.g. snapshots.LatentSnapshots; it must not draw random numbers.
    Returns a Run: the model (the best validation epoch's weights when `val` is given), per-epoch metrics
    (ELBO terms per example, in nats) and why it stopped. Raises Interrupted after SIGINT/SIGTERM
    (checkpoint written) and Diverged after cfg.max_bad_steps consecutive non-finite steps.
    """
    loop = Loop(model, data, cfg, out, val, resume, overwrite, run_config)
    loop.on_epoch = on_epoch if loop.rank == 0 else None
    if loop.on_epoch is not None and loop.state.epoch == 0 and loop.state.step == 0:
        loop.on_epoch(loop.model, 0)
    with SignalFlag() as flag, loop.log:
        try:
            stopped = "finished"
            while not loop.done():
                if loop.end_epoch(loop.run_epoch(flag)):
                    stopped = "early-stopped"
                    break
                # a signal during the last epoch's validation: nothing is left to resume, so it just finishes
                if not loop.done() and agree([float(flag.signum is not None)], *loop.sync)[0]:
                    raise loop.interrupted(flag.signum or signal.SIGTERM, f"after epoch {loop.state.epoch}")
        except KeyboardInterrupt:
            if flag.second is None:  # the user's own Ctrl-C outside a training step: pass it on
                raise
            raise loop.stopped_at_once(flag.second) from None
    return loop.finish("time-budget" if loop.budget is not None and stopped == "finished" else stopped)


class Loop:
    """One training run's moving parts, set up by the constructor (data, device, model, optimizer, RNGs,
    the restored checkpoint) and driven by `fit`: run_epoch -> end_epoch, repeated; finish."""

    def __init__(self, model, data, cfg, out, val, resume: bool, overwrite: bool, run_config: RunConfig | None):
        self.cfg = cfg = steps.with_conditional(resolve_binarize(cfg or TrainConfig(), model.config), model)
        self.train_ds, self.val = steps.datasets(model, data, val, cfg)
        if resume and out is None:
            raise VaekitError("resume=True needs the run folder `out` that holds the checkpoint")
        self.rank, self.world = dist_info()
        self.device = steps.device_for(self.cfg)
        self.out = Path(out) if out is not None else None
        self.writer = self.rank == 0 and self.out is not None
        if self.writer:
            ckpt.prepare_out(self.out, resume, overwrite)
            ckpt.remove_stray_temps(self.out)
        if self.out is not None:
            barrier(self.world)
            if agree([float(resume), float(not resume)], self.world, self.device) == [1.0, 1.0]:
                raise VaekitError(f"{out}: some processes see its checkpoint and some do not: put it where all can")
        torch.manual_seed(seeds.noise(cfg.seed))  # one noise stream: each rank keeps its rows (distributed.py)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.gens = {
            "order": torch.Generator().manual_seed(seeds.order(cfg.seed)),
            "binarize": torch.Generator().manual_seed(seeds.binarize(cfg.seed)),
        }
        self.model = model.to(self.device)
        self.opt = make_optimizer(model, cfg)
        self._shape_steps()
        self.cfg, said = speed.resolve(cfg, model, self.device, self.batch // self.world, self.total_steps, self.world)
        cfg = self.cfg
        net = wrap(model, self.device, self.world)
        self.step = make_step(model, net, self.opt, cfg, self.device, self.world, self.weight)
        self.state, self.perm, self.metrics, self.best = LoopState(world=self.world), None, [], None
        self.on_epoch = None  # fit's per-epoch callback (rank 0 only)
        self.last_ckpt = self._restore() if resume else None
        if self.writer:
            run_config = run_config or RunConfig(model.config, cfg)  # amp and compile as resolved, for --resume
            run_config = RunConfig(run_config.model, replace(run_config.train, amp=cfg.amp, compile=cfg.compile))
            io.atomic_write_text(self.out / io.CONFIG, run_config.to_json() + "\n")
        self.budget = budget_seconds(cfg.time_budget)  # seconds, or None: the epochs end the run
        self.log = RunLog(self.out, self.rank, cfg.quiet, cfg.epochs if self.budget is None else "?")
        if said is not None:
            self.log.say(said)
        self.bad_steps, self.t_start = 0, time.perf_counter() - self.state.seconds
        self.elapsed = self.lr_at = self.state.seconds  # rank 0's clock, as all ranks agreed at the last step
        self.spacing = ckpt.Spacing(cfg.checkpoint_every, self.rank)
        if self.last_ckpt is None and ckpt.restarts_possible():  # a restart always finds this run's checkpoint
            self.save_checkpoint(torch.zeros(5, dtype=torch.float64, device=self.device))

    def done(self) -> bool:
        """Whether training is over: the time budget spent (by the clock all ranks agreed on) and the epoch it
        ended in recorded (end_epoch), or without a budget the epochs done."""
        if self.budget is None:
            return self.state.epoch >= self.cfg.epochs
        return self.elapsed >= self.budget and self.state.step_in_epoch == 0

    @property
    def sync(self) -> tuple[int, torch.device]:
        return self.world, self.device

    @property
    def dist(self) -> tuple[int, int]:
        return self.rank, self.world

    def _shape_steps(self) -> None:
        """Global batch size, steps per epoch and in all; the last partial batch of an epoch is dropped."""
        self.n = n = len(self.train_ds)
        if n < self.world:
            raise VaekitError(f"{n} training examples cannot be shared by {self.world} processes")
        self.batch = min(self.cfg.batch_size, n)
        if self.batch // self.world < 1:
            raise VaekitError(
                f"--batch-size {self.cfg.batch_size} is smaller than the number of processes ({self.world})",
                option="batch_size",
            )
        self.steps_per_epoch = n // self.batch
        self.rows, self.weight = rank_rows(self.batch, self.rank, self.world), shard_weight(self.batch, *self.dist)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs

    def run_epoch(self, flag: SignalFlag) -> torch.Tensor:
        """Train one epoch (or its rest, after a resume); returns the epoch's sums over all ranks."""
        cfg, st, epoch = self.cfg, self.state, self.state.epoch
        if self.perm is None:
            self.perm = torch.randperm(self.n, generator=self.gens["order"])
        sums = torch.tensor(st.sums, dtype=torch.float64, device=self.device)
        self.model.train()
        self.log.start_epoch(epoch, self.steps_per_epoch, st.step_in_epoch, self.batch)
        self.t_epoch = time.perf_counter()
        for s in range(st.step_in_epoch, self.steps_per_epoch):
            if self.budget is not None and self.elapsed >= self.budget:  # the rest of the epoch is out of time
                break
            x, y, eps = self._batch(s)  # (B/world, *shape), labels (B/world,) or None, noise or None
            self.lr_at = self.elapsed
            lr = steps.learning_rate(cfg, st.step, self.total_steps, epoch, self.elapsed)
            beta = kl_weight(cfg.beta, cfg.kl_warmup, epoch + s / self.steps_per_epoch)
            bad = self.step(x, y, eps, lr, beta)  # loss and gradients (fused: the update too, unless bad)
            votes = [float(bad.item()), float(flag.signum is not None), self.spacing.vote(st.step + 1)]
            clock = time.perf_counter() - self.t_start if self.rank == 0 else 0.0  # rank 0's clock decides
            *votes, self.elapsed = agree([*votes, clock], *self.sync)
            bad, stop, due = map(bool, votes)
            over = self.budget is not None and self.elapsed >= self.budget  # end_epoch checkpoints
            if bad:  # skip the update: weights and Adam's moments stay as they were
                self._bad_step(epoch, st.step + 1)
            else:
                self.step.commit(sums)  # the optimizer's step; the batch's terms added to the epoch's sums
                self.bad_steps = 0
            st.step, st.step_in_epoch = st.step + 1, s + 1
            self.log.step(s, sums)
            if stop or (due and s + 1 < self.steps_per_epoch and not over):
                self.save_checkpoint(sums)
            if stop:
                raise self.interrupted(flag.signum or signal.SIGTERM, f"at epoch {epoch + 1}, step {st.step}")
        self.log.close_bar()
        return all_sum(sums, self.world)

    def _batch(self, s: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's examples of global batch s, their labels when the model is conditional, and under DDP
        its rows of the batch's reparameterization noise (None: the model draws it, as one process does)."""
        global_idx = self.perm[s * self.batch : (s + 1) * self.batch]
        gen = self.gens["binarize"] if self.cfg.binarize == "dynamic" else None
        x = shard_batch(self.train_ds, global_idx, self.rank, self.world, gen, self.device)
        y = (
            shard_labels(self.train_ds, global_idx, self.rank, self.world, self.device)
            if self.cfg.conditional
            else None
        )
        eps = None
        if self.model.is_vae:
            dtype = torch.bfloat16 if self.cfg.amp else torch.float32  # what the model would draw (its mu's dtype)
            eps = shard_noise(
                self.batch, self.model.latent_dim, self.cfg.iw_k, self.rows, self.world, dtype, self.device
            )
        return x, y, eps

    def end_epoch(self, sums: torch.Tensor) -> bool:
        """Validate, keep the best weights, write the metrics row, checkpoint; True to stop early."""
        st, cfg = self.state, self.cfg
        v = (sums[:4] / sums[4].clamp(min=1)).tolist()
        now = time.perf_counter()
        row = {"epoch": st.epoch + 1, "step": st.step, "seconds": round(now - self.t_start, 3)}
        row["epoch_seconds"] = round(now - self.t_epoch, 3)
        row["lr"] = steps.learning_rate(cfg, st.step - 1, self.total_steps, st.epoch, self.lr_at)
        if st.step_in_epoch < self.steps_per_epoch:  # the time budget ran out mid-epoch: the model as it is then
            row["partial_epoch"] = round(st.step_in_epoch / self.steps_per_epoch, 4)
        row.update(train_loss=v[0], train_elbo=v[1], train_recon=v[2], train_kl=v[3])
        improved = True
        if self.val is not None:
            val_elbo, val_recon, val_kl = steps.validate(self.model, self.val, cfg, self.device, self.rank, self.world)
            row.update(val_elbo=val_elbo, val_recon=val_recon, val_kl=val_kl)
            improved = val_elbo > st.best_val
            if improved:
                st.best_val, st.bad_epochs = val_elbo, 0
                self.best = {k: t.detach().clone() for k, t in self.model.state_dict().items()}
            else:
                st.bad_epochs += 1
        self.metrics.append(row)
        self.log.end_epoch(row, self.model if improved else None)
        st.epoch, st.step_in_epoch, st.metrics_lines, st.sums = st.epoch + 1, 0, len(self.metrics), [0.0] * 5
        self.perm = None
        self.save_checkpoint(torch.zeros(5, dtype=torch.float64, device=self.device))
        if self.on_epoch is not None:
            self.on_epoch(self.model, st.epoch)
        if cfg.patience and st.bad_epochs >= cfg.patience:
            self.log.say(f"early stop: no validation improvement for {cfg.patience} epochs")
            return True
        return False

    def finish(self, stopped: str) -> Run:
        """The best validation epoch's weights, the AE's code Gaussian, the final weights file."""
        if self.best is not None:
            self.model.load_state_dict(self.best)
        if not self.model.is_vae:
            fit_ae_codes(self.model, self.train_ds, self.device)
        if self.writer:
            io.save_tensors(self.model.state_dict(), self.out / io.WEIGHTS)
        self.model.eval()
        return Run(self.out, self.model, self.metrics, stopped, self.cfg)

    # ------------------------------------------------------------------------------ checkpoints, stops

    def save_checkpoint(self, sums: torch.Tensor) -> None:
        """Called on every rank at the same points (RNG states and sums are collected across ranks)."""
        if self.out is None:
            return
        rngs = ckpt.capture_rngs(self.gens, self.world, self.device)
        if self.world > 1:
            sums = all_sum(sums.clone(), self.world)
        if self.writer:
            self.state.sums, self.state.seconds = sums.tolist(), time.perf_counter() - self.t_start
            perm = self.perm if self.perm is not None else torch.empty(0, dtype=torch.int64)
            meta = {**self.state.to_meta(), ckpt.ELASTIC_RUN: os.environ.get("TORCHELASTIC_RUN_ID")}
            ckpt.save(ckpt.path(self.out), self.model, self.opt, meta, rngs, {"perm": perm})
        self.last_ckpt = self.state.step
        self.spacing.saved()

    def _restore(self) -> int:
        """Load the checkpoint into the model, optimizer, RNGs and loop state; returns its step."""
        file = ckpt.path(self.out)
        meta, rngs, extra = ckpt.load(file, self.model, self.opt)
        self.state = LoopState.from_meta(meta, file)
        if "perm" not in extra:
            raise VaekitError(f"{file}: checkpoint does not match this model (no 'perm')")
        self.perm = extra["perm"] if extra["perm"].numel() else None
        saved_world, self.state.world = self.state.world, self.world
        # every stream is shared by the ranks: rank 0's saved states continue them on any number of processes
        ckpt.restore_rngs(rngs, self.gens, 0, saved_world, self.device)
        if self.rank != 0:  # the saved sums are the global ones; rank 0 carries them on
            self.state.sums = [0.0] * 5
        self.metrics = io.read_metrics(self.out)[: self.state.metrics_lines]
        if self.writer:
            truncate_metrics(self.out, self.state.metrics_lines)
        if self.val is not None and self.state.best_val > -math.inf and (self.out / io.WEIGHTS).is_file():
            self.best = io.load_tensors(self.out / io.WEIGHTS)
        return self.state.step

    def _bad_step(self, epoch: int, step: int) -> None:
        self.bad_steps += 1
        if self.bad_steps < self.cfg.max_bad_steps:
            return
        self.log.close_bar()
        cfg, last = self.cfg, self.last_ckpt
        kept = (
            f"the last good checkpoint (step {last}) is intact in {ckpt.path(self.out).parent}; --resume from it "
            f"or start again with --overwrite"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise Diverged(
            f"training diverged: {cfg.max_bad_steps} consecutive steps with a non-finite loss or gradient, "
            f"the last at epoch {epoch + 1}, step {step}. Likely cause: the learning rate ({cfg.lr:g}) is too "
            f"high for this model and data, or the data has extreme values: try a lower --lr or --clip 1.0; {kept}"
        )

    def interrupted(self, signum: int, where: str) -> Interrupted:
        self.log.close_bar()
        if self.out is None:
            return Interrupted(signum, f"interrupted {where}; nothing saved (fit was given no run folder)")
        how = f"vaekit train --out {self.out} --resume" + (
            " (under the same torchrun command)" if self.world > 1 else ""
        )
        return Interrupted(
            signum,
            f"interrupted by {signal.Signals(signum).name} {where}; checkpoint saved in "
            f"{self.out / ckpt.CKPT_DIR}. Resume with: {how}",
        )

    def stopped_at_once(self, signum: int) -> Interrupted:
        """A second signal: stop now, keeping the last checkpoint."""
        name = signal.Signals(signum).name
        if self.last_ckpt is None:
            return Interrupted(signum, f"stopped at once on a second {name}; no checkpoint was written yet")
        return Interrupted(
            signum, f"stopped at once on a second {name}; the last checkpoint (step {self.last_ckpt}) is kept"
        )


# ------------------------------------------------------------------------------------- the CLI's entry


def train(
    run_config: RunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False, given=None, on_epoch=None
) -> Run:
    """What `vaekit train` does: load data, build the model, fit, save. Returns the Run. `on_epoch`: as in fit.

    `given` names the options the user set (flags or config file); on --resume only those are checked
    against the saved run (None: any value that differs from the default counts as given)."""
    out = Path(out)
    resume, overwrite = ckpt.after_restart(out, resume, overwrite)  # e.g. torchrun's agent restarted the group
    if resume:
        run_config = ckpt.resume_config(out, run_config, given)
    cfg = run_config.train
    ds = load_data(cfg.data, "train")
    model_cfg = replace(run_config.model, input_shape=ds.shape) if not resume else run_config.model
    if cfg.conditional and not resume:  # the classes come from the data: a one-line error if it has no labels
        model_cfg = steps.conditional_classes(model_cfg, ds, cfg.data)
    model_cfg.validate()
    io.check_fits_in_memory(model_cfg, f"--data {cfg.data}", option="data")
    cfg = resolve_binarize(cfg, model_cfg).validate(model_cfg)
    run_config = RunConfig(model_cfg, cfg)
    with process_group(cfg.device, dist_info()[1]) as device:
        cfg = replace(cfg, device=device)
        train_ds, val_ds = split_validation(ds, cfg.val_fraction, seeds.weights(cfg.seed))
        torch.manual_seed(seeds.weights(cfg.seed))  # the initial weights follow --seed (the same on every rank)
        model = build_model(model_cfg)
        if not resume:  # a VampPrior starts from training examples (resume restores its pseudo-inputs)
            init_pseudo_inputs(model, train_ds, seeds.pseudo_inputs(cfg.seed))
        return fit(
            model,
            train_ds,
            cfg,
            out,
            val=val_ds,
            resume=resume,
            overwrite=overwrite,
            run_config=run_config,
            on_epoch=on_epoch,
        )
