"""Seconds per training epoch: vaekit vs the PyTorch-examples reference, same model, batch and data.

    python benchmarks/train_speed.py [--rounds 3] [--epochs 3]

Every trainer runs as a fresh subprocess, alternating (vaekit, reference, vaekit --amp, ...), so machine
noise hits all alike. The model is the 784-400-20 MLP VAE at batch 128 on the 60k MNIST training images
with the reference's objective (BCE on grey pixels + analytic KL: vaekit `--binarize none`); vaekit's
default dynamic binarization is timed as well. The first epoch of every run is left out of the median
(it holds torch.compile's one-off compile; its length is reported separately). The roofline is the FLOPs
of an epoch over the fp32 matmul throughput measured here (the issue's definition); bf16 rows also
give the fraction of the bf16 roofline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import (
    REFERENCE,
    append_results,
    matmul_gflops,
    mlp_vae_flops_per_example,
    mnist_dir,
    run_json_lines,
    vaekit_cmd,
)

from vaekit.config import cpu_has_bf16
from vaekit.io import read_metrics


def vaekit_epochs(epochs: int, batch: int, flags: list[str]) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        run_json_lines(
            vaekit_cmd(
                "train",
                "--data",
                "mnist",
                "--epochs",
                epochs,
                "--batch-size",
                batch,
                "--val-fraction",
                0,
                "--quiet",
                "--checkpoint-every",
                0,
                "--out",
                Path(d) / "run",
                *flags,
            )
        )
        rows = read_metrics(Path(d) / "run")
    return [r["epoch_seconds"] for r in rows]


def reference_epochs(epochs: int, batch: int) -> list[float]:
    rows = run_json_lines(
        [
            sys.executable,
            str(REFERENCE),
            "--idx-dir",
            str(mnist_dir()),
            "--epochs",
            str(epochs),
            "--batch-size",
            str(batch),
        ]
    )
    return [r["train_seconds"] for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the first epoch of each run is not timed)")
    mnist_dir()
    grey = ["--binarize", "none"]
    trainers = {
        "vaekit (fp32)": grey,
        "vaekit (dynamic binarization, fp32)": ["--binarize", "dynamic"],
        "vaekit --compile (fp32)": grey + ["--compile"],
    }
    if cpu_has_bf16():
        trainers.update(
            {"vaekit --amp (bf16)": grey + ["--amp"], "vaekit --amp --compile (bf16)": grey + ["--amp", "--compile"]}
        )
    times = {name: [] for name in ["reference", *trainers]}
    first = {name: [] for name in times}
    for r in range(args.rounds):
        for name in times:
            ts = (
                reference_epochs(args.epochs, args.batch_size)
                if name == "reference"
                else vaekit_epochs(args.epochs, args.batch_size, trainers[name])
            )
            first[name].append(ts[0])
            times[name] += ts[1:]
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    peak = matmul_gflops()
    peak_bf16 = matmul_gflops(dtype=torch.bfloat16) if cpu_has_bf16() else None
    flops = mlp_vae_flops_per_example() * 60000
    roof_s = flops / (peak * 1e9)
    ref = statistics.median(times["reference"])
    lines = [
        "| trainer | median s/epoch | epochs timed | first epoch s (median) | speed-up vs reference | "
        "fraction of fp32 roofline | fraction of bf16 roofline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        bf = f"{flops / (peak_bf16 * 1e9) / med:.0%}" if "bf16" in name else "-"
        lines.append(
            f"| {name} | {med:.2f} | {len(ts)} | {statistics.median(first[name]):.2f} | {ref / med:.2f}x | "
            f"{roof_s / med:.0%} | {bf} |"
        )
    body = "\n".join(lines) + (
        f"\n\nRoofline: {flops / 1e9:.0f} GFLOP per epoch (784-400-20 MLP VAE, 60k examples, forward + backward) "
        f"at the measured fp32 matmul peak of {peak:.0f} GFLOP/s = {roof_s:.2f} s/epoch"
        + (f"; bf16 peak {peak_bf16:.0f} GFLOP/s = {flops / (peak_bf16 * 1e9):.2f} s/epoch" if peak_bf16 else "")
        + ".\n"
    )
    append_results(
        "Training speed: seconds per epoch, batch 128",
        f"python benchmarks/train_speed.py --rounds {args.rounds} --epochs {args.epochs}",
        body,
    )


if __name__ == "__main__":
    main()
