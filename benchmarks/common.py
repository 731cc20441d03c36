"""Shared by the benchmarks: the machine's description, its measured matmul peak, the reference script,
and appending a section to RESULTS.md."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("VAEKIT_RESULTS") or ROOT / "benchmarks" / "RESULTS.md")  # a dry run writes elsewhere
REFERENCE = ROOT / "benchmarks" / "reference.py"  # the PyTorch examples VAE, re-implemented


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def cpu_flags() -> str:
    """The CPU's ISA flags that decide its matmul speed: AVX512-BF16 (bf16 dot products), AMX (bf16 tiles),
    AVX512F, AVX2; and whether torch sees native bf16 (vaekit.config.cpu_has_bf16)."""
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        flags = set()
    names = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "amx_tile": "AMX-TILE", "avx512f": "AVX512F"}
    names["avx2"] = "AVX2"
    have = [label for flag, label in names.items() if flag in flags]
    lacks = [label for flag, label in names.items() if flag not in flags and flag in ("avx512_bf16", "amx_bf16")]
    from vaekit.config import cpu_has_bf16

    return (
        (", ".join(have) or "none of AVX2/AVX512/AMX")
        + (f"; no {', no '.join(lacks)}" if lacks else "")
        + f"; torch {torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if cpu_has_bf16() else 'no'}"
    )


def matmul_gflops(
    n: int = 1024, seconds: float = 2.0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """Measured matmul throughput of this machine (of its GPU with device="cuda": n x 4), GFLOP/s (best of
    repeated n x n products)."""
    cuda = torch.device(device).type == "cuda"
    n = n * 4 if cuda else n
    sync = torch.cuda.synchronize if cuda else lambda: None
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def gpu() -> str:
    """The CUDA device torch sees: name, memory, CUDA version ("" without one)."""
    if not torch.cuda.is_available():
        return ""
    p = torch.cuda.get_device_properties(0)
    mem = p.total_memory / 2**30
    return f"{p.name} ({mem:.0f} GiB, compute capability {p.major}.{p.minor}), CUDA {torch.version.cuda}"


def mlp_vae_flops_per_example(d_in: int = 784, h: int = 400, d: int = 20) -> float:
    """Training FLOPs per example of the 784-400-20 MLP VAE: forward 2*MACs; backward 2x that, less the
    gradient with respect to the input, which nobody needs."""
    macs = d_in * h + h * 2 * d + d * h + h * d_in
    return 2 * macs + 4 * macs - 2 * d_in * h


def mnist_dir() -> Path:
    from vaekit.data import fetch

    return fetch("mnist", quiet=True)


def mnist_subset(n: int, folder: Path) -> tuple[Path, Path]:
    """The first n MNIST training digits (and the first min(n, 10000) test digits), for a short run: as an .npz
    (x uint8 (n, 28, 28), y) for vaekit --data, and as the four IDX files for the reference's --idx-dir.
    Returns (the .npz, the IDX folder)."""
    import numpy as np

    from vaekit.data import load
    from vaekit.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    train, test = load("mnist", "train"), load("mnist", "test")
    npz = folder / f"mnist-{n}.npz"
    np.savez(npz, x=train.x[:n, 0].numpy(), y=train.y[:n].numpy())
    for prefix, ds in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", ds.x[:n, 0].numpy())
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", ds.y[:n].numpy().astype(np.uint8))
    return npz, folder


def vaekit_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vaekit", *map(str, args)]


def run_json_lines(cmd: list[str], env: dict | None = None) -> list[dict]:
    """Run a command and parse the JSON objects it prints one per line on stdout."""
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def append_results(title: str, command: str, body: str, device: str = "cpu") -> None:
    """Append a section to RESULTS.md ($VAEKIT_RESULTS if set): title, command, date, machine, its ISA flags (and the
    GPU), body."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    where = f"- GPU: {gpu()}\n" if torch.device(device).type == "cuda" else ""
    head = f"\n## {title}\n\n- command: `{command}`\n- date: {stamp}\n- machine: {machine()}\n- ISA: {cpu_flags()}\n"
    text = f"{head}{where}\n{body.rstrip()}\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the script it names.\n")
    with open(RESULTS, "a") as f:
        f.write(text)
    print(text)


def mnist_validation_split(folder: Path, n_val: int = 10000) -> tuple[Path, Path, Path]:
    """MNIST's training set split for choosing a recipe without the test set: its first 60000 - n_val digits to
    train on, its last n_val as the validation set. Returns (train .npz, validation .npz, IDX folder whose
    train-* files are the training part and t10k-* files the validation part, for the reference's --idx-dir)."""
    import numpy as np

    from vaekit.data import load
    from vaekit.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    train = load("mnist", "train")
    x, y = train.x[:, 0].numpy(), train.y.numpy()
    cut = len(x) - n_val
    paths = folder / "train.npz", folder / "val.npz"
    np.savez(paths[0], x=x[:cut], y=y[:cut])
    np.savez(paths[1], x=x[cut:], y=y[cut:])
    for prefix, part in (("train", slice(0, cut)), ("t10k", slice(cut, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x[part])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y[part].astype(np.uint8))
    return paths[0], paths[1], folder
