"""What a learned prior costs per training step: one step (forward, backward, Adam) of the 784-400-20 MLP VAE at
batch 128 with --prior standard, vamp and mog (K components), with the ELBO and with the IWAE bound (--iw-k 8).
Timed in interleaved rounds, best of each (the dev machine is shared; the minimum is the least disturbed).

    PYTHONPATH=src python benchmarks/prior_step.py [--threads 1] [--components 500] [--append]
"""

from __future__ import annotations

import argparse
import timeit

import torch
from common import append_results, machine

from vaekit.config import ModelConfig
from vaekit.models import build_model

PRIORS = ("standard", "vamp", "mog")


def stepper(prior: str, k: int, iw_k: int, x: torch.Tensor):
    torch.manual_seed(0)
    m = build_model(ModelConfig(prior=prior, prior_components=k if prior != "standard" else 500))
    opt = torch.optim.Adam(m.parameters(), 1e-3)

    def step():
        loss, _ = m(x, iw_k=iw_k)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()

    for _ in range(5):
        step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--components", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.rand(128, 1, 28, 28, generator=torch.Generator().manual_seed(0)).bernoulli()
    rows = []
    for iw_k in (1, 8):
        steps = {p: stepper(p, a.components, iw_k, x) for p in PRIORS}
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(a.rounds):
            for p, f in steps.items():
                best[p] = min(best[p], timeit.timeit(f, number=10) / 10 * 1e3)
        ratios = " | ".join(f"{best[p] / best['standard']:.2f}x" for p in PRIORS[1:])
        rows.append(f"| {iw_k} | " + " | ".join(f"{best[p]:.1f}" for p in PRIORS) + f" | {ratios} |")
    body = (
        f"{machine()}; K = {a.components}, batch 128, milliseconds per step (best of {a.rounds} rounds of 10)\n\n"
        "| iw_k | standard | vamp | mog | vamp / standard | mog / standard |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    print(body)
    if a.append:
        append_results("A learned prior's cost per training step", "python benchmarks/prior_step.py", body)


if __name__ == "__main__":
    main()
