"""What a mixture prior (VampPrior, MoG) costs in evaluation: MixtureNormal.log_prob on real codes, before (the
float64 table and torch.logsumexp, as at 13ed350) and now (float32 rows where provably within 1e-4 nats, no
subnormals in the logsumexp), alternating in one process; and how far each is from float64's exact value.

    PYTHONPATH=src python benchmarks/mixture_eval.py RUN [--digits 200] [--codes 1000] [--rounds 3] [--threads N]
        [--compiled] [--append]

RUN is a trained model folder with --prior vamp or mog (runs/bench-quality). The codes are draws of q(z|x) for
the first `digits` test digits (dynamically binarized, seed 0), `codes` each: what `vaekit eval` scores.
--compiled also times evaluate.log_likelihood compiled (as `vaekit eval` runs on the full test set), before and
now in turn (MixtureNormal.log_prob swapped), 100 digits x 530 codes, best of 4 calls after the compile.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import append_results

from vaekit import data, evaluate, io
from vaekit.distributions import MixtureNormal


def before(mix: MixtureNormal, z: torch.Tensor) -> torch.Tensor:
    """MixtureNormal.log_prob as it was at 13ed350 (the float64 table, torch.logsumexp), for the comparison."""
    lead, k = z.shape[:-1], mix.mu.shape[0]
    c = mix.mu.detach().double().mean(0)
    mu, logvar = mix.mu.double() - c, mix.logvar.double()
    prec = torch.exp(-logvar)
    const = -0.5 * (mix.dim * math.log(2 * math.pi) + logvar.sum(-1) + (mu**2 * prec).sum(-1))
    coef = torch.cat([prec, -2 * mu * prec], -1)
    flat = z.reshape(-1, mix.dim).double() - c
    out, dtype = [], torch.promote_types(z.dtype, torch.float32)
    for zc in flat.split(max(1, mix.CHUNK // k)):
        out.append(torch.logsumexp(torch.addmm(const, torch.cat([zc**2, zc], -1), coef.T, alpha=-0.5).to(dtype), -1))
    return (torch.cat(out) - math.log(k)).reshape(lead)


def exact(mix: MixtureNormal, z: torch.Tensor) -> torch.Tensor:
    """log p(z) (n,) from the squared differences themselves in float64: no expansion, no cancellation."""
    mu, logvar = mix.mu.double(), mix.logvar.double()
    out = []
    for zz in z.double().split(200):
        sq = ((zz[:, None] - mu) ** 2 * torch.exp(-logvar)).sum(-1)  # (n, K)
        log_pk = -0.5 * (mix.dim * math.log(2 * math.pi) + logvar.sum(-1) + sq)
        out.append(torch.logsumexp(log_pk, -1) - math.log(len(mu)))
    return torch.cat(out)


def codes(model, digits: int, per: int) -> torch.Tensor:
    ds = data.load("mnist", "test")
    x = torch.bernoulli(ds.x[:digits].float() / 255, generator=torch.Generator().manual_seed(0))
    q = model.encode(x)
    torch.manual_seed(0)
    return q.rsample(per).reshape(-1, q.mu.shape[-1])  # (digits * per, D) float32


def compiled_rounds(model, rounds: int) -> str:
    """Rows of a table: evaluate.log_likelihood compiled, with the old and the new MixtureNormal.log_prob."""
    x = torch.bernoulli(data.load("mnist", "test").x[:100].float() / 255, generator=torch.Generator().manual_seed(0))
    now, rows = MixtureNormal.log_prob, []
    try:
        for _ in range(rounds):
            for name, f in (("before", before), ("now", now)):
                MixtureNormal.log_prob = f
                torch._dynamo.reset()
                evaluate._compiled.clear()
                evaluate.log_likelihood(model, x, 53, compile=True)  # the compile
                ts = []
                for _ in range(4):
                    t = time.perf_counter()
                    ll = evaluate.log_likelihood(
                        model, x, 530, generator=torch.Generator().manual_seed(1), compile=True
                    )
                    ts.append(time.perf_counter() - t)
                rows.append(f"| {name} | {min(ts):.2f} | {-ll.double().mean().item():.6f} |")
    finally:
        MixtureNormal.log_prob = now
    return "\n".join(rows)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--digits", type=int, default=200)
    ap.add_argument("--codes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--compiled", action="store_true", help="also time the compiled log_likelihood (~1 min)")
    ap.add_argument("--append", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = io.load(a.run)
    mix = model.prior.mixture()
    z = codes(model, a.digits, a.codes)
    times, vals = {"before": [], "now": []}, {}
    for _ in range(a.rounds):
        for name, f in (("before", before), ("now", MixtureNormal.log_prob)):
            t = time.perf_counter()
            vals[name] = f(mix, z)
            times[name].append(time.perf_counter() - t)
    sub = torch.arange(0, len(z), max(1, len(z) // 5000))  # ~5000 rows against the exact value
    ref = exact(mix, z[sub])
    err = {n: (v[sub].double() - ref).abs().max().item() for n, v in vals.items()}
    rows = "\n".join(f"| {n} | {', '.join(f'{t:.2f}' for t in ts)} | {err[n]:.1e} |" for n, ts in times.items())
    body = (
        f"Model {a.run}: K={len(mix.mu)} components in D={mix.dim}; z ({len(z)}, {mix.dim}) float32, draws of q(z|x) "
        f"for {a.digits} test digits, {torch.get_num_threads()} threads. Rounds alternate before/now.\n\n"
        f"| log_prob | seconds per round | max abs error vs exact float64 (nats, {len(sub)} rows) |\n"
        f"|---|---|---|\n{rows}"
    )
    if a.compiled:
        body += (
            "\n\nevaluate.log_likelihood compiled (as `vaekit eval` on 10k digits), 100 test digits x 530 codes, "
            "rounds alternate:\n\n| log_prob | seconds (best of 4) | NLL (nats) |\n|---|---|---|\n"
            + compiled_rounds(model, a.rounds)
        )
    flags = (f" --threads {a.threads}" if a.threads else "") + (" --compiled" if a.compiled else "")
    if a.append:
        append_results(
            "Mixture prior: log p(z) in evaluation", f"python benchmarks/mixture_eval.py {a.run}{flags}", body
        )
    else:
        print(body)


if __name__ == "__main__":
    main()
