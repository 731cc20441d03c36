"""What a training run tells the world: a progress bar or one plain line per epoch, metrics.jsonl, the
best weights so far, and TensorBoard scalars when the optional extra is installed.

    log = RunLog(out, rank=0, quiet=False, epochs=10)
    log.start_epoch(epoch, steps, first_step, batch)   # the bar (a terminal) or nothing
    log.step(s, sums)                                    # every step
    log.end_epoch(row, model_if_best)                    # metrics.jsonl, weights, TensorBoard, the plain line
    log.close()

Only rank 0 with a run folder writes files; only rank 0 prints.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from vaekit import io

BAR_EVERY = 25  # steps between updates of the bar's ELBO/KL (drawing it every step costs time)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class RunLog:
    def __init__(self, out: Path | None, rank: int, quiet: bool, epochs: int, what: str = "", bar: bool = True):
        """`bar`: a progress bar on a terminal instead of the plain lines (False: always the lines)."""
        self.out = Path(out) if out is not None and rank == 0 else None
        self.epochs, self.what = epochs, what
        tty = bar and sys.stderr.isatty() and not in_ci()
        self.show_bar = rank == 0 and not quiet and tty
        self.show_lines = rank == 0 and not quiet and not tty
        self.tb = _tensorboard(self.out) if self.out is not None else None
        self.bar = None

    def start_epoch(self, epoch: int, steps: int, first_step: int, batch: int) -> None:
        """The bar counts steps but shows examples (rate in examples/s) and the ETA."""
        from tqdm import tqdm

        self.bar = tqdm(
            total=steps,
            initial=first_step,
            disable=not self.show_bar,
            desc=f"{self.what}epoch {epoch + 1}/{self.epochs}",
            unit="ex",
            unit_scale=batch,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def step(self, s: int, sums: torch.Tensor) -> None:
        """sums: this rank's (loss, elbo, recon, kl, examples) so far in the epoch."""
        if not self.show_bar:
            return
        if s % BAR_EVERY == 0:
            v = (sums[:4] / sums[4].clamp(min=1)).tolist()
            self.bar.set_postfix(elbo=f"{v[1]:.2f}", kl=f"{v[3]:.2f}")
        self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, row: dict, best_model=None) -> None:
        """Append the metrics row (and TensorBoard scalars); save `best_model`'s weights when given; print
        the plain line."""
        self.close_bar()
        if self.out is not None:
            io.append_text(self.out / "metrics.jsonl", json.dumps(row) + "\n")
            if best_model is not None:
                io.save_tensors(best_model.state_dict(), self.out / io.WEIGHTS)
            if self.tb is not None:
                for k, value in row.items():
                    if k not in ("epoch", "step"):
                        self.tb.add_scalar(k, value, row["epoch"])
        if self.show_lines:
            self.say(_epoch_line(row, self.epochs, self.what))

    def say(self, msg: str) -> None:
        if self.show_lines:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.close_bar()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def truncate_metrics(out: Path, lines: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be written again)."""
    path = Path(out) / "metrics.jsonl"
    if path.exists():
        kept = path.read_text().splitlines()[:lines]
        io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _epoch_line(row: dict, epochs: int, what: str) -> str:
    """The one plain line per epoch shown instead of the bar when stderr is not a terminal."""
    if "train_elbo" not in row:  # the classifier's row
        acc = f"  test accuracy {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
        msg = f"{what}epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}{acc}"
    else:
        msg = f"{what}epoch {row['epoch']}/{epochs}  train elbo {row['train_elbo']:.2f}  kl {row['train_kl']:.2f}"
        if "val_elbo" in row:
            msg += f"  val elbo {row['val_elbo']:.2f}"
    return msg + f"  ({row['epoch_seconds']:.1f}s)"


def _tensorboard(out: Path):
    """A SummaryWriter when tensorboard is installed and works; otherwise None (it is an optional extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(out / "tensorboard"))
    except Exception:  # not installed, or an incompatible install: never a reason to stop training
        return None
