"""The limit model and the profile of `vaekit eval`'s importance-sampled NLL, for benchmarks/eval_speed.py.

limit(k, n) = the decoder's matrix products at the rate this machine reaches at their shapes (fp32, or bf16
with --amp) + the element-wise log-likelihood (one fused pass over the k x n x pixels logits) at the
throughput measured for that kernel alone. attribution(...) runs a slice of the real evaluation under
torch.profiler and returns each operation's share of its CPU time.
"""

from __future__ import annotations

import time

import torch


def _best(fn, seconds: float = 2.0, calls: int = 5) -> float:
    """The fastest of repeated calls of fn (at least `calls`, for at least `seconds`), seconds, after a warm-up."""
    fn()
    best, end, i = float("inf"), time.perf_counter() + seconds, 0
    while time.perf_counter() < end or i < calls:
        i += 1
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def limit_model(model, k: int, n: int, batch: int = 100, bf16: bool = False) -> dict:
    """Seconds the NLL of n examples with k samples needs at best on this machine, by part: "matmul" (the
    decoder's last product, rows = one chunk of samples x batch, at its measured rate "gflops"), "hidden" (the
    decoder's other layers), "elementwise" (the fused log-likelihood pass alone, at "gelems" G elements/s),
    "total"; and "log_weights": the compiled fused_log_weights for the same work, all of it (z, prior, q)."""
    from vaekit.evaluate import _group, _mlp_bernoulli, fused_log_weights

    hidden, last, _ = _mlp_bernoulli(model)
    p, h = last.weight.shape
    d = model.latent_dim
    chunk = max(1, min(k, (1 << 22) // (batch * p)))  # evaluate.log_likelihood's default
    rows, dtype = chunk * batch, torch.bfloat16 if bf16 else torch.float32
    a, w = torch.rand(rows, h, dtype=dtype), last.weight.detach().to(dtype)
    mm = _best(lambda: a @ w.T)
    gflops = 2 * rows * h * p / mm / 1e9
    z = torch.randn(rows, d)
    g = _group(p)
    soft = torch.compile(lambda logits, b: _softplus_sum(logits.view(rows, p // g, g) + b.view(-1, g)))
    logits, bias = torch.randn(rows, p) * 4, last.bias.detach()
    with torch.inference_mode():
        hid = _best(lambda: hidden(z))
        elem = _best(lambda: soft(logits, bias))
        xs = torch.bernoulli(torch.full((batch, *model.shape), 0.2))
        q, eps = model.encode(xs), torch.randn(chunk, batch, d)
        fused = torch.compile(fused_log_weights)
        call = _best(lambda: fused(model, xs, chunk, eps, q, bf16=bf16))
    calls = k * n / rows
    out = {"matmul": mm * calls, "hidden": hid * calls, "elementwise": elem * calls}
    out["total"] = sum(out.values())
    out.update(gflops=gflops, gelems=rows * p / elem / 1e9, chunk=chunk, log_weights=call * calls)
    return out


def _softplus_sum(a: torch.Tensor) -> torch.Tensor:
    """sum of softplus(a) over the last two dims, a (rows, groups, g): fused_log_weights' per-pixel pass."""
    return (a.clamp(min=0).sum(-1) + torch.log((1 + torch.exp(-a.abs())).prod(-1))).sum(-1)


def attribution(model, x: torch.Tensor, k: int, bf16: bool = False, top: int = 8) -> list[tuple[str, float]]:
    """(operation, share of CPU time) for log_likelihood(model, x, k) as `vaekit eval` runs it (compiled), under
    torch.profiler after a warm-up call; the `top` largest and the rest as "other"."""
    import torch._inductor.config
    from torch.profiler import ProfilerActivity, profile

    from vaekit.evaluate import log_likelihood

    torch._inductor.config.cpp.enable_kernel_profile = True  # each inductor kernel by name, not one "graph" event
    run = lambda: log_likelihood(model, x, k, compile=True, amp=bf16)  # noqa: E731
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    rows = [(e.key[:60], e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    total = sum(t for _, t in rows)
    head = [(name, t / total) for name, t in rows[:top]]
    return head + [("other", sum(t for _, t in rows[top:]) / total)]
