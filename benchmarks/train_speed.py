"""Seconds per training epoch: vaekit vs the PyTorch-examples reference, same model, batch and data.

    python benchmarks/train_speed.py [--rounds 3] [--epochs 3] [--device cpu|cuda] [--limit N]

Every trainer runs as a fresh subprocess, alternating (vaekit, reference, vaekit --amp, ...), so machine
noise hits all alike. The model is the 784-400-20 MLP VAE at batch 128 on the 60k MNIST training images
with the reference's objective (BCE on grey pixels + analytic KL: vaekit `--binarize none`); vaekit's
default dynamic binarization is timed as well. The "defaults" rows pass neither --amp nor --compile: what
`--amp auto --compile auto` choose for this run (printed by vaekit; a 3-epoch run is too short to compile).
The first epoch of every run is left out of the median
(it holds torch.compile's one-off compile; its length is reported separately). The roofline is the FLOPs
of an epoch over the fp32 matmul throughput measured here (the issue's definition); bf16 rows also
give the fraction of the bf16 roofline. With --device cuda everything runs on the GPU, the reference as the
example does there (DataLoader with one worker and pinned memory), and the peaks are the GPU's. --limit N trains
both on the first N digits only (a dry run of the script: benchmarks/gpu_check.sh --quick).
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
    gpu,
    matmul_gflops,
    mlp_vae_flops_per_example,
    mnist_dir,
    mnist_subset,
    run_json_lines,
    vaekit_cmd,
)

from vaekit.config import cpu_has_bf16
from vaekit.io import read_metrics


def vaekit_epochs(epochs: int, batch: int, flags: list[str], data="mnist") -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        run_json_lines(
            vaekit_cmd(
                "train",
                "--data",
                data,
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


def reference_epochs(epochs: int, batch: int, device: str = "cpu", idx_dir: Path | None = None) -> list[float]:
    rows = run_json_lines(
        [
            sys.executable,
            str(REFERENCE),
            "--idx-dir",
            str(idx_dir or mnist_dir()),
            "--epochs",
            str(epochs),
            "--batch-size",
            str(batch),
            "--device",
            device,
        ]
    )
    return [r["train_seconds"] for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where everything trains (default cpu)")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N digits only; 0 = all 60000")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, "error: --device cuda: torch.cuda.is_available() is False on this machine\n")
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the first epoch of each run is not timed)")
    data, idx_dir, n = "mnist", mnist_dir(), 60000
    if args.limit:
        tmp = tempfile.TemporaryDirectory()  # removed at exit
        (data, idx_dir), n = mnist_subset(args.limit, Path(tmp.name)), args.limit
    grey = ["--binarize", "none", "--device", args.device]
    fp32 = ["--amp", "off"]
    trainers = {  # the defaults are --amp auto --compile auto (vaekit.speed): the rows spell out the rest
        "vaekit defaults (auto)": grey,
        "vaekit defaults (auto), dynamic binarization": ["--binarize", "dynamic", "--device", args.device],
        "vaekit (fp32)": grey + fp32 + ["--compile", "off"],
        "vaekit --compile (fp32)": grey + fp32 + ["--compile"],
    }
    bf16 = torch.cuda.is_bf16_supported() if args.device == "cuda" else cpu_has_bf16()
    if bf16:
        trainers.update(
            {
                "vaekit --amp (bf16)": grey + ["--amp", "--compile", "off"],
                "vaekit --amp --compile (bf16)": grey + ["--amp", "--compile"],
            }
        )
    times = {name: [] for name in ["reference", *trainers]}
    first = {name: [] for name in times}
    failed = {}  # a trainer that cannot run here (--compile without a C compiler, say): its row says why
    for r in range(args.rounds):
        for name in [n for n in times if n not in failed]:
            try:
                ts = (
                    reference_epochs(args.epochs, args.batch_size, args.device, idx_dir)
                    if name == "reference"
                    else vaekit_epochs(args.epochs, args.batch_size, trainers[name], data)
                )
            except SystemExit as e:
                failed[name] = (str(e).strip().splitlines() or ["?"])[-1][:160].replace("|", "/")
                print(f"{name} failed: {failed[name]}", flush=True)
                continue
            first[name].append(ts[0])
            times[name] += ts[1:]
        done = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if k not in failed)
        print(f"round {r + 1}/{args.rounds}: {done}", flush=True)
    if "reference" in failed:
        raise SystemExit(f"the reference failed: {failed['reference']}")
    peak = matmul_gflops(device=args.device)
    peak_bf16 = matmul_gflops(dtype=torch.bfloat16, device=args.device) if bf16 else None
    flops = mlp_vae_flops_per_example() * n
    roof_s = flops / (peak * 1e9)
    ref = statistics.median(times["reference"])
    lines = [
        "| trainer | median s/epoch | epochs timed | first epoch s (median) | speed-up vs reference | "
        "fraction of fp32 roofline | fraction of bf16 roofline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        if name in failed:
            lines.append(f"| {name} | failed: {failed[name]} | - | - | - | - | - |")
            continue
        med = statistics.median(ts)
        bf16_row = peak_bf16 and name != "reference" and "fp32" not in name
        bf = f"{flops / (peak_bf16 * 1e9) / med:.0%}" if bf16_row else "-"
        lines.append(
            f"| {name} | {med:.2f} | {len(ts)} | {statistics.median(first[name]):.2f} | {ref / med:.2f}x | "
            f"{roof_s / med:.0%} | {bf} |"
        )
    body = "\n".join(lines) + (
        f"\n\nRoofline: {flops / 1e9:.0f} GFLOP per epoch (784-400-20 MLP VAE, {n} examples, forward + backward) "
        f"at the measured fp32 matmul peak of {peak:.0f} GFLOP/s = {roof_s:.2f} s/epoch"
        + (f"; bf16 peak {peak_bf16:.0f} GFLOP/s = {flops / (peak_bf16 * 1e9):.2f} s/epoch" if peak_bf16 else "")
        + ".\n"
    )
    on = f" on the GPU ({gpu()})" if args.device == "cuda" else ""
    append_results(
        f"Training speed{on}: seconds per epoch, batch {args.batch_size}",
        f"python benchmarks/train_speed.py --rounds {args.rounds} --epochs {args.epochs}"
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --limit {args.limit}" if args.limit else ""),
        body,
        args.device,
    )


if __name__ == "__main__":
    main()
