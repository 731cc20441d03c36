"""The limit a training step can reach on this machine, and where a real vaekit step's time goes.

    python benchmarks/limit.py [--hidden 400] [--latent-dim 20] [--batch-size 128] [--steps 200]
                               [--settings default,fp32,amp,best] [--threads N] [--binarize none]

The limit model: the step's matmuls (forward, and backward less the first layer's input gradient), each
timed alone at its own shapes in fp32 and in bf16 (best of repeats, so the rate measured on this machine at
those shapes), plus Adam's memory traffic (28 bytes per parameter: read weight, gradient and two moments,
write weight and moments) at the bandwidth measured over a working set of the same size. Limit step time =
matmuls + Adam.

The attribution: a real vaekit step (vaekit.fit on synthetic images of the model's size, --binarize none as
the reference trains) for each setting, its second epoch timed (the first holds any compile), its third under
torch.profiler, each op's self time grouped: matmuls, element-wise (aten kernels and inductor's fused ones),
optimizer (torch.optim's step and zero_grad; in the compiled step, its fused Adam kernels), data (the batch
gather, Loop._batch), loop extras (the finite check's norms and .item(), the epoch sums) and the rest:
autograd, dispatch and Python (the step's wall time less everything else). The profiled step is slower
than the unprofiled one (the profiler's own cost): the µs column is scaled to the unprofiled time.

The CPU model and its ISA flags (AVX512-BF16, AMX) are printed with every result.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import torch
from common import append_results, cpu_flags, machine

MATMUL = ("mm", "addmm", "bmm", "baddbmm", "linear", "mkldnn", "mkl_linear", "_weight_int8pack_mm", "cpp_mm")
VIEWS = (
    "view", "reshape", "_unsafe_view", "t", "transpose", "as_strided", "expand", "slice", "select", "detach",
    "alias", "unsqueeze", "squeeze", "permute", "empty", "empty_strided", "empty_like", "resolve_conj",
    "resolve_neg", "lift_fresh", "_reshape_alias", "contiguous", "numpy_T", "unbind", "split", "chunk",
)  # fmt: skip
EXTRAS = ("linalg_vector_norm", "_foreach_norm", "isfinite", "_local_scalar_dense", "item", "stack", "bitwise_and")
PRECISIONS = ("float32", "bfloat16")
SETTINGS = {  # name -> TrainConfig fields (binarize none, as the reference trains)
    "default": {},
    "fp32": {"amp": False, "compile": False},
    "amp": {"amp": True, "compile": False},
    "best": {"amp": True, "compile": True},
}


# ----------------------------------------------------------------------------------------- the limit model


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of the model's Linear layers in the order they run (encoder then decoder)."""
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def best_us(fn, seconds: float) -> float:
    """The fastest call of fn, in µs, over `seconds` of repeats (after a warm-up)."""
    for _ in range(3):
        fn()
    best, end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def matmul_rows(shapes, batch: int, dtype, seconds: float) -> list[tuple[str, float, float]]:
    """(what, µs, GFLOP/s) for every matmul of a training step in `dtype`: per layer the forward (B, in) x
    (in, out), the weight gradient (out, B) x (B, in) and, except for the first layer, the input gradient."""
    rows = []
    for i, (k, n) in enumerate(shapes):
        x, w = torch.randn(batch, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        b, g = torch.randn(n, dtype=dtype), torch.randn(batch, n, dtype=dtype)
        ops = [("fwd", lambda x=x, w=w, b=b: torch.addmm(b, x, w.t())), ("dW", lambda g=g, x=x: g.t() @ x)]
        if i > 0:
            ops.append(("dX", lambda g=g, w=w: g @ w))
        for what, fn in ops:
            us = best_us(fn, seconds)
            rows.append((f"{what} {k}x{n}", us, 2 * batch * k * n / us / 1e3))
    return rows


def bandwidth_gbs(n_floats: int, seconds: float) -> float:
    """Memory bandwidth for a working set like Adam's (c = a + b over arrays of n_floats fp32), GB/s."""
    a, b, c = torch.randn(n_floats), torch.randn(n_floats), torch.empty(n_floats)
    us = best_us(lambda: torch.add(a, b, out=c), seconds)
    return 12 * n_floats / us / 1e3


def limit_model(model, batch: int, seconds: float) -> dict:
    """The limit step time per precision: matmuls at their measured rate + Adam's traffic at measured bandwidth."""
    shapes, n_params = linear_shapes(model), sum(p.numel() for p in model.parameters())
    bw = bandwidth_gbs(n_params, seconds)
    adam_us = 28 * n_params / bw / 1e3
    out = {"params": n_params, "bandwidth": bw, "adam_us": adam_us}
    dtypes = [torch.float32] + ([torch.bfloat16] if _bf16() else [])
    for dt in dtypes:
        rows = matmul_rows(shapes, batch, dt, seconds)
        out[str(dt).split(".")[1]] = {"rows": rows, "matmul_us": sum(r[1] for r in rows)}
    return out


def _bf16() -> bool:
    from vaekit.config import cpu_has_bf16

    return cpu_has_bf16()


# ----------------------------------------------------------------------------------------- the attribution


def category(name: str) -> str | None:
    """The group of a leaf event by its name; None for regions and wrappers (accounted for otherwise)."""
    op = name.split("::")[-1]
    if name.startswith("graph_") or "cpp_fused" in name:  # inductor's kernels
        return "optimizer" if "lerp" in name else "element-wise"
    if not name.startswith("aten::"):
        return None
    if op in MATMUL or op.startswith("mkldnn_"):
        return "matmul"
    if op in VIEWS:
        return None
    if op.startswith("_fused_adam"):
        return "optimizer"
    if op in EXTRAS:
        return "loop extras"
    return "element-wise"


def attribute(events, t_wall_us: float, steps: int) -> dict[str, float]:
    """µs per step by group from the profiler's events (self times), the rest = autograd/dispatch/Python."""
    out, regions = defaultdict(float), {"data": "vaekit.data", "optimizer": "Optimizer."}
    region_of = []  # (start, end, group) of the region events
    for e in events:
        for group, prefix in regions.items():
            if e.name.startswith(prefix):
                region_of.append((e.time_range.start, e.time_range.end, group))
                out[group] += e.cpu_time_total
    for e in events:
        inside = any(s <= e.time_range.start and e.time_range.end <= t for s, t, _ in region_of)
        group = category(e.name)
        if group is not None and not inside:
            out[group] += e.self_cpu_time_total
    out = {k: v / steps for k, v in out.items()}
    out["autograd/dispatch/Python"] = max(0.0, t_wall_us / steps - sum(out.values()))
    return out


def profile_setting(fields: dict, model_cfg, batch: int, steps: int, binarize: str):
    """(the resolved TrainConfig, unprofiled µs per step, {group: µs per step} scaled to it)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    import vaekit.train as train
    from vaekit.config import TrainConfig
    from vaekit.models import build_model

    torch.manual_seed(0)
    x = (torch.rand(batch * steps, *model_cfg.input_shape) * 255).to(torch.uint8)
    cfg = TrainConfig(epochs=3, quiet=True, checkpoint_every=0, val_fraction=0, binarize=binarize, **fields)
    prof, marks = profile(activities=[ProfilerActivity.CPU]), {}

    def on_epoch(model, epoch):
        marks[epoch] = time.perf_counter()
        if epoch == 2:
            prof.start()
        if epoch == 3:
            prof.stop()

    plain = train.Loop._batch

    def labelled(self, s):
        with record_function("vaekit.data"):
            return plain(self, s)

    train.Loop._batch = labelled
    try:
        run = train.fit(build_model(model_cfg), x, cfg, on_epoch=on_epoch)
    finally:
        train.Loop._batch = plain
    step_us = run.metrics[1]["epoch_seconds"] / steps * 1e6
    wall = (marks[3] - marks[2]) * 1e6
    groups = attribute(prof.events(), wall, steps)
    scale = step_us / (wall / steps)
    return run, step_us, {k: v * scale for k, v in groups.items()}, wall / steps


# ----------------------------------------------------------------------------------------------- report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--latent-dim", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200, help="steps per epoch of the attribution runs")
    ap.add_argument("--settings", default="default,fp32,amp,best", help=f"comma-separated: {', '.join(SETTINGS)}")
    ap.add_argument("--binarize", default="none", help="the attribution runs' --binarize (default none)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's default")
    ap.add_argument("--seconds", type=float, default=0.5, help="repeats per matmul shape (seconds)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vaekit.config import ModelConfig
    from vaekit.models import build_model

    model_cfg = ModelConfig(hidden=(args.hidden,), latent_dim=args.latent_dim)
    lim = limit_model(build_model(model_cfg), args.batch_size, args.seconds)
    epoch_steps = 60000 // args.batch_size
    lines = [f"CPU: {machine()}; ISA: {cpu_flags()}", "", "**Limit model** (µs per step)", ""]
    lines += ["| matmul | " + " | ".join(k for k in ("float32", "bfloat16") if k in lim) + " |", "|---|---|---|"]
    names = [r[0] for r in lim["float32"]["rows"]]
    for i, name in enumerate(names):
        cells = [f"{lim[k]['rows'][i][1]:.0f} ({lim[k]['rows'][i][2]:.0f} GFLOP/s)" for k in PRECISIONS if k in lim]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    limits = {}
    for k in ("float32", "bfloat16"):
        if k in lim:
            limits[k] = lim[k]["matmul_us"] + lim["adam_us"]
    lines.append("| all matmuls | " + " | ".join(f"{lim[k]['matmul_us']:.0f}" for k in limits) + " |")
    lines.append(
        f"| Adam: {lim['params']} parameters x 28 B at {lim['bandwidth']:.0f} GB/s | "
        + " | ".join(f"{lim['adam_us']:.0f}" for _ in limits)
        + " |"
    )
    lines.append(
        "| **limit step** (s/epoch of 60k) | "
        + " | ".join(f"**{v:.0f}** ({v * epoch_steps / 1e6:.2f})" for v in limits.values())
        + " |"
    )
    print("\n".join(lines), flush=True)
    lines += ["", "**Measured steps** (µs per step; groups from torch.profiler, scaled to the unprofiled step)", ""]
    groups = ["matmul", "element-wise", "optimizer", "autograd/dispatch/Python", "data", "loop extras"]
    lines += ["| setting | resolved | step | vs limit | " + " | ".join(groups) + " |", "|---" * (4 + len(groups)) + "|"]
    sizes = (args.batch_size, args.steps, args.binarize)
    for name in args.settings.split(","):
        run, step_us, g, prof_us = profile_setting(SETTINGS[name], model_cfg, *sizes)
        resolved = ("bf16" if run.config.amp else "fp32") + (" compiled" if run.config.compile else "")
        ref = limits["bfloat16" if run.config.amp else "float32"]
        row = f"| {name} | {resolved} | {step_us:.0f} | {step_us / ref:.2f}x | " + " | ".join(
            f"{g.get(k, 0):.0f}" for k in groups
        )
        lines.append(row + " |")
        print(row + f" |  (profiled step {prof_us:.0f} µs)", flush=True)
    append_results(
        f"Limit model and attribution: {28 * 28}-{args.hidden}-{args.latent_dim} at batch {args.batch_size}",
        f"python benchmarks/limit.py --settings {args.settings}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "\n".join(lines[2:]),
    )


if __name__ == "__main__":
    main()
