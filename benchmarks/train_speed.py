"""Seconds per training epoch: vaekit vs the PyTorch-examples reference, same model, batch and data.

    python benchmarks/train_speed.py [--rounds 3] [--epochs 2]

Both run as fresh subprocesses, alternating (vaekit, reference, vaekit, ...), so machine noise hits
both alike. The model is the 784-400-20 MLP VAE at batch 128 on the 60k MNIST training images with
the reference's objective (BCE on grey pixels + analytic KL: vaekit `--binarize none`); vaekit's
default dynamic binarization is timed as well. The roofline is the FLOPs of an epoch over the fp32
matmul throughput measured here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import (REFERENCE, append_results, matmul_gflops, mlp_vae_flops_per_example, mnist_dir,
                    run_json_lines, vaekit_cmd)


def vaekit_epochs(epochs: int, binarize: str, batch: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        run_json_lines(vaekit_cmd("train", "--data", "mnist", "--epochs", epochs, "--batch-size", batch,
                                  "--val-fraction", 0, "--binarize", binarize, "--quiet", "--checkpoint-every", 0,
                                  "--out", Path(d) / "run"))
        rows = [json.loads(line) for line in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch_seconds"] for r in rows]


def reference_epochs(epochs: int, batch: int) -> list[float]:
    import sys
    rows = run_json_lines([sys.executable, str(REFERENCE), "--idx-dir", str(mnist_dir()), "--epochs", str(epochs),
                           "--batch-size", str(batch)])
    return [r["train_seconds"] for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    if not REFERENCE.exists():
        raise SystemExit(f"reference script not found: {REFERENCE}")
    mnist_dir()
    times = {"vaekit": [], "vaekit (dynamic binarization)": [], "reference": []}
    for r in range(args.rounds):
        times["vaekit"] += vaekit_epochs(args.epochs, "none", args.batch_size)
        times["reference"] += reference_epochs(args.epochs, args.batch_size)
        times["vaekit (dynamic binarization)"] += vaekit_epochs(args.epochs, "dynamic", args.batch_size)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    peak = matmul_gflops()
    flops = mlp_vae_flops_per_example() * 60000
    roof_s = flops / (peak * 1e9)
    ref = statistics.median(times["reference"])
    lines = ["| trainer | median s/epoch | epochs timed | speed-up vs reference | fraction of roofline |",
             "|---|---|---|---|---|"]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {med:.2f} | {len(ts)} | {ref / med:.2f}x | {roof_s / med:.0%} |")
    body = "\n".join(lines) + (
        f"\n\nRoofline: {flops / 1e9:.0f} GFLOP per epoch (784-400-20 MLP VAE, 60k examples, forward + backward) "
        f"at the measured fp32 matmul peak of {peak:.0f} GFLOP/s = {roof_s:.2f} s/epoch.\n")
    append_results("Training speed: seconds per epoch, batch 128",
                   f"python benchmarks/train_speed.py --rounds {args.rounds} --epochs {args.epochs}", body)


if __name__ == "__main__":
    main()
