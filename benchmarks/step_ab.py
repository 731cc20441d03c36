"""What each training-step implementation contributes: seconds per epoch of the default model (784-400-20 MLP VAE,
batch 128, 60k MNIST digits, dynamic binarization) with each of vaekit's three steps, alternating, each run a fresh
process, so no run inherits another's threads, caches or compiled code.

    python benchmarks/step_ab.py [--rounds 4] [--epochs 2]

  autograd   steps.EagerStep: autograd + torch.optim.Adam (any model; what the default model took before
             mlp_step.py)
  by hand    mlp_step.MLPStep: the gradients written out (what an uncompiled run of the default model takes now)
  compiled   fused_step.FusedStep: the whole step torch.compile'd (--compile; its compile is in the first epoch)

each in float32 and in bf16 (--amp, where the CPU multiplies bf16 natively). Every run trains from the same
initial weights; the first epoch of each run is left out (the compile), the median of the rest is reported with
the ratio to autograd's in the same precision, and the last epoch's training loss (the steps compute the same
loss, so it should agree to rounding)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from common import append_results, run_json_lines

import vaekit
from vaekit import mlp_step
from vaekit.config import ModelConfig, TrainConfig, cpu_has_bf16
from vaekit.data import load

KINDS = ("autograd", "by hand", "compiled")


def run_once(kind: str, amp: bool, epochs: int) -> tuple[list[float], float]:
    """(seconds of each epoch after the first, the last epoch's training loss) for one fresh run, in this process."""
    supported = mlp_step.supported
    if kind == "autograd":
        mlp_step.supported = lambda *a: False  # make_step falls back to steps.EagerStep
    try:
        torch.manual_seed(0)
        cfg = TrainConfig(
            epochs=epochs, quiet=True, checkpoint_every=0, val_fraction=0, amp=amp, compile=kind == "compiled"
        )
        run = vaekit.fit(vaekit.build_model(ModelConfig()), load("mnist", "train"), cfg)
    finally:
        mlp_step.supported = supported
    return [m["epoch_seconds"] for m in run.metrics[1:]], run.metrics[-1]["train_loss"]


def in_subprocess(kind: str, amp: bool, epochs: int) -> tuple[list[float], float]:
    """run_once in a fresh Python process."""
    cmd = [sys.executable, __file__, "--one", kind, "--epochs", str(epochs), *(["--amp"] if amp else [])]
    out = run_json_lines(cmd)[0]
    return out["seconds"], out["loss"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is not timed)")
    ap.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)  # the child: one run, its JSON on stdout
    ap.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        secs, loss = run_once(args.one, args.amp, args.epochs)
        print(json.dumps({"seconds": secs, "loss": loss}))
        return
    precisions = [False, True] if cpu_has_bf16() else [False]
    times = {(k, a): [] for a in precisions for k in KINDS}
    loss = {}
    for r in range(args.rounds):
        for key in times:
            secs, loss[key] = in_subprocess(*key, args.epochs)
            times[key] += secs
            print(
                f"round {r + 1}: {key[0]:9s} {'bf16' if key[1] else 'fp32'}: {secs} s, loss {loss[key]:.3f}", flush=True
            )
    rows = ["| step | precision | median s/epoch | vs autograd | epochs timed | last training loss |", "|---" * 6 + "|"]
    for (kind, amp), t in times.items():
        med, ref = statistics.median(t), statistics.median(times[("autograd", amp)])
        prec = "bf16" if amp else "fp32"
        rows.append(f"| {kind} | {prec} | {med:.2f} | {ref / med:.2f}x | {len(t)} | {loss[(kind, amp)]:.3f} |")
    body = "\n".join(rows)
    print(body)
    append_results(
        "Training step implementations: seconds per epoch, 784-400-20 at batch 128",
        f"python benchmarks/step_ab.py --rounds {args.rounds} --epochs {args.epochs}",
        body,
    )


if __name__ == "__main__":
    main()
