"""`--amp auto` and `--compile auto`: the fastest safe settings for this machine and run, decided by a fixed,
documented rule (not by timing at start-up), so a run and its resume decide the same way.

    resolve(cfg, model, device, batch, total_steps) -> (cfg with amp and compile True/False, what was chosen)

amp auto: bf16 autocast where the device multiplies bf16 natively (a CPU with AVX512-BF16 or AMX, a CUDA
GPU that supports bf16) and the step is big enough for bf16 matmuls to win: at least AMP_MIN_FLOPS of
matmul work per step. Measured on the dev CPU (AMD EPYC, AVX512-BF16, no AMX; eager steps, bf16 vs fp32,
benchmarks/RESULTS.md): bf16 was slower below ~150 MFLOP a step (0.66x at 2.5 MFLOP, 0.91x at 62 MFLOP,
0.96x at 125 MFLOP) and faster above it (1.19-1.21x at 250-500 MFLOP; the 784-400-20 VAE at batch 128 is
500 MFLOP). Tiny models, such as the tests', stay fp32.

compile auto: the whole step compiled (fused_step.py) when the run is long enough to repay the compile
(~10-30 s on the dev CPU; it saved ~1 ms of a ~5 ms autograd step, and against the default model's hand-written
step, mlp_step.py, 0.94-1.17x, within that machine's noise: benchmarks/RESULTS.md): at least COMPILE_MIN_STEPS
steps, or a --time-budget of at least COMPILE_MIN_BUDGET seconds; only where the compiled step applies (one process,
the standard estimator) and a compiler is there (a C++ compiler on CPU, Triton on CUDA).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import torch

from vaekit.config import TrainConfig, budget_seconds, cpu_has_bf16

AMP_MIN_FLOPS = 200e6  # matmul FLOPs per training step (forward + backward) from which bf16 is faster
COMPILE_MIN_STEPS = 30_000  # steps in the run from which compiling the whole step repays its compile
COMPILE_MIN_BUDGET = 600.0  # seconds of --time-budget from which it does


def step_flops(model: torch.nn.Module, batch: int) -> float:
    """Matmul FLOPs of one training step on `batch` examples: 6 per weight of each Linear layer per example
    (forward 2, backward 4); a convolution's weights count once per example (a lower bound)."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    return 6.0 * batch * weights


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile has its backend's compiler here (the C++ compiler on CPU, Triton on CUDA)."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def resolve(cfg: TrainConfig, model, device: torch.device, batch: int, total_steps: int, world: int = 1):
    """cfg with `amp` and `compile` True or False (an explicit choice is kept), and a line saying what "auto"
    chose and why (None when nothing was auto). batch: the examples of one process's step."""
    from vaekit.fused_step import supported

    said = []
    if cfg.amp == "auto":
        flops, native = step_flops(model, batch), native_bf16(device)
        amp = native and flops >= AMP_MIN_FLOPS
        why = f"{flops / 1e6:.0f} MFLOP a step, bf16 from {AMP_MIN_FLOPS / 1e6:.0f}" if native else "no native bf16"
        said.append(f"amp {'bf16' if amp else 'off'} ({why})")
        cfg = replace(cfg, amp=amp)
    if cfg.compile == "auto":
        budget = budget_seconds(cfg.time_budget)
        long = budget >= COMPILE_MIN_BUDGET if budget is not None else total_steps >= COMPILE_MIN_STEPS
        ok = supported(cfg, world) and can_compile(device)
        length = f"{budget:g} s budget" if budget is not None else f"{total_steps} steps"
        limit = f"{COMPILE_MIN_BUDGET:g} s" if budget is not None else f"{COMPILE_MIN_STEPS}"
        why = f"{length}, compile from {limit}" if ok else "the compiled step does not apply here"
        said.append(f"compile {'on' if long and ok else 'off'} ({why})")
        cfg = replace(cfg, compile=bool(long and ok))
    return cfg, ("auto: " + "; ".join(said)) if said else None
