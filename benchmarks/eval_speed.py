"""Importance-sampled NLL with k=5000 over the full 10k MNIST test set: seconds and roofline fraction.

    python benchmarks/eval_speed.py [--run RUN] [--k 5000] [--limit 10000] [--device cpu|cuda] [--train-limit N]

Without --run it trains the 784-400-20 MLP VAE for 2 epochs first (the weights do not change the
cost; --train-limit N: on the first N training digits only, a dry run). Target: under 4 minutes for k=5000 x 10k
digits. With --device cuda it trains and evaluates on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import ROOT, append_results, gpu, matmul_gflops, mnist_subset, vaekit_cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where it evaluates (default cpu)")
    ap.add_argument("--train-limit", type=int, default=0, help="without --run: train on the first N digits; 0 = all")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, "error: --device cuda: torch.cuda.is_available() is False on this machine\n")
    dev = ["--device", args.device]
    env = {"PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as d:
        run, data = args.run, []
        if run is None:
            run, data = Path(d) / "vae", ["--data", "mnist"]  # MNIST's test digits, whatever it trained on
            train = mnist_subset(args.train_limit, Path(d))[0] if args.train_limit else "mnist"
            subprocess.run(
                vaekit_cmd("train", "--data", train, "--epochs", 2, "--quiet", "--out", run, *dev),
                check=True,
                env={**os.environ, **env},
            )
        p = subprocess.run(
            vaekit_cmd("eval", run, *data, "--iw-samples", args.k, "--limit", args.limit, "--json", *dev),
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        if p.returncode != 0:
            sys.exit(p.stderr)
        res = json.loads(p.stdout)
    peak = matmul_gflops(device=args.device)
    # Decoder FLOPs per importance sample (20-400-784), the part that scales with k.
    flops = 2 * (20 * 400 + 400 * 784) * args.k * res["n"]
    roof = flops / (peak * 1e9)
    body = (
        f"| k | test digits | seconds | NLL (nats) | -ELBO (nats) | roofline s | fraction of roofline |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {args.k} | {res['n']} | {res['seconds']:.1f} | {res['nll']:.2f} | {-res['elbo']:.2f} | "
        f"{roof:.1f} | {roof / res['seconds']:.0%} |\n\n"
        f"Roofline: decoder matmuls only ({flops / 1e12:.1f} TFLOP) at the measured fp32 matmul peak of "
        f"{peak:.0f} GFLOP/s; the element-wise log-likelihood terms come on top.\n"
    )
    append_results(
        "Evaluation speed" + (f" on the GPU ({gpu()})" if args.device == "cuda" else "") + ": importance-sampled NLL",
        f"python benchmarks/eval_speed.py --k {args.k} --limit {args.limit}"
        + (f" --run {args.run}" if args.run else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --train-limit {args.train_limit}" if args.train_limit and not args.run else ""),
        body,
        args.device,
    )


if __name__ == "__main__":
    main()
