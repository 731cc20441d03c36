"""Wall-clock training time until vaekit reaches the reference's 10-epoch test loss.

    python benchmarks/time_to_quality.py [--ref-epochs 10] [--flags "--batch-size 80 ..."] [--flags ...]

The loss is the reference's: BCE on grey (un-binarized) pixels + analytic KL, per test example, one
posterior sample (vaekit: `--binarize none`, the test -ELBO of `vaekit eval --iw-samples 0`). The
reference trains with its own settings (Adam 1e-3, batch 128). vaekit trains with each `--flags` set
for N = 1, 2, ... epochs, each N a fresh run from scratch (the learning-rate schedule spans the run, so
a shorter run is not a prefix of a longer one); the first N whose test loss reaches the target counts.
Only training seconds count (each trainer's own per-epoch timing, compile time included); start-up
and test evaluation are excluded for both.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from common import REFERENCE, append_results, mnist_dir, run_json_lines, vaekit_cmd

from vaekit.config import cpu_has_bf16
from vaekit.io import read_metrics

AMP = ["--amp"] if cpu_has_bf16() else []
FAST = ["--batch-size", "80", "--lr", "5e-3", "--schedule", "cosine"]
DEFAULT_FLAGS = [shlex.join(FAST + AMP), shlex.join(FAST + AMP + ["--activation", "silu"])]


def vaekit_run(flags: list[str], epochs: int) -> tuple[float, float]:
    """Train `epochs` epochs from scratch; (training seconds, test loss)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        run_json_lines(
            vaekit_cmd(
                "train",
                "--data",
                "mnist",
                "--binarize",
                "none",
                "--val-fraction",
                0,
                "--quiet",
                "--checkpoint-every",
                0,
                "--epochs",
                epochs,
                "--out",
                out,
                *flags,
            )
        )
        rows = read_metrics(out)
        res = run_json_lines(vaekit_cmd("eval", out, "--iw-samples", 0, "--json"))[0]
    return sum(r["epoch_seconds"] for r in rows), -res["elbo"]


def vaekit_until(target: float, flags: list[str], max_epochs: int) -> tuple[int, float, float]:
    """The fewest epochs whose run reaches `target`: (epochs, seconds, loss); the last try if none does."""
    for epochs in range(1, max_epochs + 1):
        secs, loss = vaekit_run(flags, epochs)
        print(f"vaekit {shlex.join(flags)}, {epochs} epochs: test loss {loss:.2f} after {secs:.1f}s", flush=True)
        if loss <= target:
            break
    return epochs, secs, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-epochs", type=int, default=10)
    ap.add_argument(
        "--flags",
        action="append",
        help="vaekit train flags (repeatable: one table row each); "
        f"default: {' and '.join(repr(f) for f in DEFAULT_FLAGS)}",
    )
    ap.add_argument("--max-epochs", type=int, default=10)
    args = ap.parse_args()
    flag_sets = args.flags or DEFAULT_FLAGS
    ref = run_json_lines(
        [sys.executable, str(REFERENCE), "--idx-dir", str(mnist_dir()), "--epochs", str(args.ref_epochs)]
    )
    target = ref[-1]["test_loss"]
    ref_secs = sum(r["train_seconds"] for r in ref)
    print(f"reference: test loss {target:.2f} after {args.ref_epochs} epochs, {ref_secs:.1f}s of training", flush=True)
    rows = [
        f"| reference (PyTorch example) | Adam 1e-3, batch 128, ReLU | {args.ref_epochs} | {ref_secs:.1f} | "
        f"{target:.2f} | 1.00x |"
    ]
    for flags in flag_sets:
        epochs, secs, loss = vaekit_until(target, shlex.split(flags), args.max_epochs)
        speed = f"{ref_secs / secs:.2f}x" if loss <= target else f"not reached in {args.max_epochs} epochs"
        rows.append(f"| vaekit | `{flags}` | {epochs} | {secs:.1f} | {loss:.2f} | {speed} |")
    body = (
        "| trainer | settings | epochs | training seconds | final test loss (nats) | faster than reference |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Target: the reference's {args.ref_epochs}-epoch test loss, {target:.2f} nats (784-400-20 MLP VAE, "
        "BCE on grey pixels + KL). vaekit rows: the fewest epochs, each a fresh run, that reach it.\n"
    )
    cmd = f"python benchmarks/time_to_quality.py --ref-epochs {args.ref_epochs}"
    if args.flags:
        cmd += "".join(f' --flags "{f}"' for f in args.flags)
    append_results("Time to the reference's quality", cmd, body)


if __name__ == "__main__":
    main()
