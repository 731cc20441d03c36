"""Importance-sampled NLL with k=5000 over the full 10k MNIST test set: seconds, beside the limit model and
where the time goes.

    python benchmarks/eval_speed.py [--run RUN] [--k 5000] [--limit 10000] [--device cpu|cuda] [--train-limit N]
                                    [--amp]

Without --run it trains the 784-400-20 MLP VAE for 2 epochs first (the weights do not change the cost;
--train-limit N: on the first N training digits only, a dry run). Target: under 90 s for k=5000 x 10k digits
(issue 17). With --amp it also times `vaekit eval --amp` (bf16 decoder products, opt-in), right after the
float32 default, and reports its NLL's difference from float32's in nats. On the CPU it prints the limit model
(benchmarks/eval_limit.py: the decoder's products at the rate measured at their shapes + the fused
element-wise pass at its measured throughput) and a torch.profiler attribution of one 100-digit batch at
k=500. With --device cuda it trains and evaluates on the GPU.
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
from common import ROOT, append_results, cpu_flags, gpu, machine, matmul_gflops, mnist_subset, vaekit_cmd
from eval_limit import attribution, limit_model


def eval_json(run: Path, args, data: list[str], dev: list[str], amp: bool) -> dict:
    p = subprocess.run(
        vaekit_cmd("eval", run, *data, "--iw-samples", args.k, "--limit", args.limit, "--json", *dev)
        + (["--amp"] if amp else []),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    if p.returncode != 0:
        sys.exit(p.stderr)
    return json.loads(p.stdout)


def profile_lines(run: Path, amp: bool) -> tuple[dict, list[str]]:
    """The limit model for the full evaluation and the profile of a slice, as table rows."""
    import vaekit
    from vaekit.data import load

    model = vaekit.load(run)
    x = torch.bernoulli(load("mnist", "test").batch(slice(0, 100)), generator=torch.Generator().manual_seed(0))
    rows = []
    for bf16 in [False, True] if amp else [False]:
        share = attribution(model, x, 500, bf16=bf16)
        name = "bf16" if bf16 else "fp32"
        rows.append(f"| {name} | " + ", ".join(f"`{op}` {s:.0%}" for op, s in share) + " |")
    return model, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where it evaluates (default cpu)")
    ap.add_argument("--train-limit", type=int, default=0, help="without --run: train on the first N digits; 0 = all")
    ap.add_argument("--amp", action="store_true", help="also time `vaekit eval --amp` (bf16 decoder products)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, "error: --device cuda: torch.cuda.is_available() is False on this machine\n")
    dev = ["--device", args.device]
    env = {"PYTHONPATH": str(ROOT / "src")}
    print(f"{machine()}; ISA: {cpu_flags()}", flush=True)
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
        res = [eval_json(run, args, data, dev, amp) for amp in ([False, True] if args.amp else [False])]
        print(f"eval: {[r['seconds'] for r in res]} s", flush=True)
        if args.device == "cpu":
            model, prof = profile_lines(run, args.amp)
            limits = [limit_model(model, args.k, res[0]["n"], bf16=b) for b in ([False, True] if args.amp else [False])]
    peak = matmul_gflops(device=args.device)
    flops = 2 * (20 * 400 + 400 * 784) * args.k * res[0]["n"]  # decoder FLOPs (20-400-784), the part that scales with k
    body = (
        "| precision | k | test digits | seconds | NLL (nats) | NLL minus fp32's | -ELBO (nats) | limit s "
        "| fraction of limit |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    for i, r in enumerate(res):
        lim = limits[i]["total"] if args.device == "cpu" else flops / (peak * 1e9)
        shift = f"{r['nll'] - res[0]['nll']:+.4f}" if i else "-"
        body += (
            f"| {'bf16 (--amp)' if i else 'fp32 (default)'} | {args.k} | {r['n']} | {r['seconds']:.1f} | "
            f"{r['nll']:.3f} | {shift} | {-r['elbo']:.2f} | {lim:.1f} | {lim / r['seconds']:.0%} |\n"
        )
    body += f"\nISA: {cpu_flags()}. Square fp32 matmul peak: {peak:.0f} GFLOP/s; decoder {flops / 1e12:.1f} TFLOP.\n"
    if args.device == "cpu":
        body += (
            "\nLimit model, seconds for the whole evaluation (benchmarks/eval_limit.py):\n\n"
            "| precision | decoder last product | its rate GFLOP/s | hidden layers | element-wise pass | its rate "
            "G elem/s | limit | compiled log-weights measured alone |\n|---|---|---|---|---|---|---|---|\n"
        )
        for name, m in zip(["fp32", "bf16"], limits):
            body += (
                f"| {name} | {m['matmul']:.1f} | {m['gflops']:.0f} | {m['hidden']:.1f} | {m['elementwise']:.1f} | "
                f"{m['gelems']:.2f} | {m['total']:.1f} | {m['log_weights']:.1f} |\n"
            )
        body += "\nWhere the time goes (torch.profiler, self CPU time, 100 digits at k=500, compiled):\n\n"
        body += "| precision | operations |\n|---|---|\n" + "\n".join(prof) + "\n"
    append_results(
        "Evaluation speed" + (f" on the GPU ({gpu()})" if args.device == "cuda" else "") + ": importance-sampled NLL",
        f"python benchmarks/eval_speed.py --k {args.k} --limit {args.limit}"
        + (f" --run {args.run}" if args.run else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --train-limit {args.train_limit}" if args.train_limit and not args.run else "")
        + (" --amp" if args.amp else ""),
        body,
        args.device,
    )


if __name__ == "__main__":
    main()
