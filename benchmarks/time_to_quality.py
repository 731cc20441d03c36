"""Wall-clock training time until vaekit reaches the reference's 10-epoch test loss.

    python benchmarks/time_to_quality.py [--ref-epochs 10] [--flags "--batch-size 256 --lr 2e-3"]

The loss is the reference's: BCE on grey (un-binarized) pixels + analytic KL, per test example, one
posterior sample (vaekit: `--binarize none`, the test -ELBO). The reference trains with its own
settings; vaekit with `--flags`. Only training seconds count (from each trainer's own per-epoch
timing); test evaluation between epochs is excluded for both.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REFERENCE, ROOT, append_results, mnist_dir, run_json_lines, vaekit_cmd

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def vaekit_until(target: float, flags: list[str], max_epochs: int) -> tuple[list[float], list[float]]:
    """Train one epoch at a time (--resume), evaluating the test loss after each; stop at the target."""
    secs, losses = [], []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        for epoch in range(1, max_epochs + 1):
            extra = ["--resume"] if epoch > 1 else flags
            subprocess.run(vaekit_cmd("train", "--data", "mnist", "--binarize", "none", "--val-fraction", 0,
                                      "--quiet", "--epochs", epoch, "--out", out, *extra),
                           check=True, env=ENV, capture_output=True)
            row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            secs.append(row["epoch_seconds"])
            res = run_json_lines(vaekit_cmd("eval", out, "--iw-samples", 0, "--json"))[0]
            losses.append(-res["elbo"])
            print(f"vaekit epoch {epoch}: test loss {losses[-1]:.2f} after {sum(secs):.1f}s", flush=True)
            if losses[-1] <= target:
                break
    return secs, losses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-epochs", type=int, default=10)
    ap.add_argument("--flags", default="--batch-size 128 --lr 2e-3",
                    help="vaekit train flags to reach the target fastest")
    ap.add_argument("--max-epochs", type=int, default=30)
    args = ap.parse_args()
    ref = run_json_lines([sys.executable, str(REFERENCE), "--idx-dir", str(mnist_dir()),
                          "--epochs", str(args.ref_epochs)])
    target = ref[-1]["test_loss"]
    ref_secs = sum(r["train_seconds"] for r in ref)
    print(f"reference: test loss {target:.2f} after {args.ref_epochs} epochs, {ref_secs:.1f}s of training", flush=True)
    secs, losses = vaekit_until(target, shlex.split(args.flags), args.max_epochs)
    reached = losses[-1] <= target
    v_secs = sum(secs)
    body = ("| trainer | settings | epochs | training seconds | final test loss (nats) |\n|---|---|---|---|---|\n"
            f"| reference | Adam 1e-3, batch 128 | {args.ref_epochs} | {ref_secs:.1f} | {target:.2f} |\n"
            f"| vaekit | `{args.flags}` | {len(secs)} | {v_secs:.1f} | {losses[-1]:.2f} |\n\n"
            + (f"vaekit reached the reference's {args.ref_epochs}-epoch test loss {ref_secs / v_secs:.2f}x faster.\n"
               if reached else f"vaekit did NOT reach {target:.2f} within {args.max_epochs} epochs.\n"))
    append_results("Time to the reference's quality",
                   f"python benchmarks/time_to_quality.py --ref-epochs {args.ref_epochs} --flags \"{args.flags}\"", body)


if __name__ == "__main__":
    main()
