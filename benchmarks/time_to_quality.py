"""Wall-clock training time until vaekit reaches the reference's 10-epoch test loss, honestly measured.

    python benchmarks/time_to_quality.py [--seeds 3] [--ref-epochs 10] [--flags "..."] [--epochs N]

The loss is the reference's: BCE on grey (un-binarized) pixels + analytic KL, per test example, one
posterior sample (vaekit: `--binarize none`, the test -ELBO of `vaekit eval --iw-samples 0`). For each seed
the reference (its own settings: Adam 1e-3, batch 128, ReLU) and vaekit train one after the other in this
run, each from scratch with that seed; the reference's 10-epoch test loss is the target, and vaekit trains
its recipe (RECIPE for EPOCHS epochs unless --flags/--epochs) once: the recipe was chosen on a validation
split of the training set by benchmarks/select_recipe.py, never on the test loss, and is not re-tuned here.
The figure is the median over the seeds of the reference's training seconds over vaekit's (a seed whose
vaekit run misses its target counts as 0x). Only training seconds count (each trainer's own per-epoch
timing, compile time included); start-up and test evaluation are excluded for both.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from common import REFERENCE, append_results, mnist_dir, run_json_lines, vaekit_cmd

from vaekit.config import cpu_has_bf16
from vaekit.io import read_metrics

AMP = ["--amp"] if cpu_has_bf16() else []
# The recipe benchmarks/select_recipe.py chose on the validation split (RESULTS.md, "Time to quality: the
# recipe chosen on a validation split").
RECIPE = ["--batch-size", "112", "--lr", "7e-3", "--schedule", "cosine", *AMP, "--activation", "silu"]
EPOCHS = 3


def reference_run(idx_dir: Path, epochs: int, seed: int) -> tuple[float, float]:
    """The reference for `epochs` epochs from scratch: (training seconds, loss on its t10k files)."""
    rows = run_json_lines(
        [sys.executable, str(REFERENCE), "--idx-dir", str(idx_dir), "--epochs", str(epochs), "--seed", str(seed)]
    )
    return sum(r["train_seconds"] for r in rows), rows[-1]["test_loss"]


def vaekit_run(flags: list[str], epochs: int, seed: int, data="mnist", eval_data=None) -> tuple[float, float]:
    """vaekit for `epochs` epochs from scratch on `data`: (training seconds, -ELBO on `eval_data`, default
    the data's test split)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        run_json_lines(
            vaekit_cmd(
                *("train", "--data", data, "--binarize", "none", "--val-fraction", 0, "--quiet"),
                *("--checkpoint-every", 0, "--epochs", epochs, "--seed", seed, "--out", out, *flags),
            )
        )
        rows = read_metrics(out)
        data_args = ["--data", eval_data] if eval_data else []
        res = run_json_lines(vaekit_cmd("eval", out, *data_args, "--iw-samples", 0, "--json"))[0]
    return sum(r["epoch_seconds"] for r in rows), -res["elbo"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 1..N, the reference then vaekit for each")
    ap.add_argument("--ref-epochs", type=int, default=10)
    ap.add_argument("--flags", help=f"vaekit train flags (default: {shlex.join(RECIPE)!r})")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help=f"vaekit's epochs (default {EPOCHS})")
    args = ap.parse_args()
    flags = shlex.split(args.flags) if args.flags is not None else RECIPE
    rows, speeds = [], []
    for seed in range(1, args.seeds + 1):
        ref_secs, target = reference_run(mnist_dir(), args.ref_epochs, seed)
        secs, loss = vaekit_run(flags, args.epochs, seed)
        speeds.append(ref_secs / secs if loss <= target else 0.0)
        print(f"seed {seed}: reference {target:.2f} in {ref_secs:.1f}s, vaekit {loss:.2f} in {secs:.1f}s", flush=True)
        reached = f"{ref_secs / secs:.2f}x" if loss <= target else "not reached (0x)"
        rows.append(f"| {seed} | {ref_secs:.1f} | {target:.2f} | {secs:.1f} | {loss:.2f} | {reached} |")
    body = (
        f"vaekit: `{shlex.join(flags)}`, {args.epochs} epochs (chosen on validation: benchmarks/select_recipe.py); "
        f"the reference: the PyTorch example, {args.ref_epochs} epochs. One seed per row, the reference then "
        "vaekit.\n\n"
        "| seed | reference s | reference test loss = target (nats) | vaekit s | vaekit test loss | faster |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"**Median over {len(speeds)} seeds: {statistics.median(speeds):.2f}x** faster to the reference's "
        f"{args.ref_epochs}-epoch test loss (784-400-20 MLP VAE, BCE on grey pixels + KL); target met on "
        f"{sum(s > 0 for s in speeds)}/{len(speeds)} seeds.\n"
    )
    cmd = f"python benchmarks/time_to_quality.py --seeds {args.seeds} --ref-epochs {args.ref_epochs}"
    if args.flags is not None or args.epochs != EPOCHS:
        cmd += f' --flags "{shlex.join(flags)}" --epochs {args.epochs}'
    append_results("Time to the reference's quality", cmd, body)


if __name__ == "__main__":
    main()
