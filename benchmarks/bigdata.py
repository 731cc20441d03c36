"""Data bigger than memory: peak RSS and speed of training on a .npy read from disk (src/vaekit/data/lazy.py).

    python benchmarks/bigdata.py [--rounds 3] [--epochs 2] [--big-rows 5400000] [--big-batch 128] [--skip-big]

1. Readers: one pass over a .npy in shuffled batches of 128, each reader in a fresh subprocess: microseconds
   per batch and the process's peak RSS (ru_maxrss, from wait4): in memory, vaekit's pread, a plain
   np.memmap, and np.memmap with madvise(MADV_DONTNEED) every 16 batches and after every batch. On the 60k
   MNIST training images and, unless --skip-big, on the big file.
2. Speed on MNIST-sized data: `vaekit train` on the 60k MNIST training images saved as a .npy, in memory
   (VAEKIT_IN_MEMORY=yes) and read from disk (VAEKIT_IN_MEMORY=no), alternating, --rounds times; median
   seconds per epoch and their ratio (target: from disk at least 70% as fast).
3. The big run: `vaekit train` (the default 784-400-20 MLP VAE, VAEKIT_IN_MEMORY unset: auto) on a uint8
   .npy of --big-rows MNIST-shaped rows (5.4M: 4.2 GB; MNIST tiled 90 times, each tile shifted by its own
   (dy, dx)), stopped by SIGTERM --big-seconds after its first checkpoint (vaekit checkpoints and exits 143;
   a full epoch of shuffled rows is bound by the disk's random reads when the file is not in the page
   cache: hours on a slow virtual disk); its peak RSS (ru_maxrss; target: under 1.5 GB) and VmRSS over
   the run. The file is written to /tmp once and deleted at the end (--keep keeps it for a later run).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, append_results, cpu_flags, machine, vaekit_cmd

import vaekit.data
from vaekit.io import read_metrics

BIG = Path(tempfile.gettempdir()) / "vaekit-bigdata" / "mnist-tiled.npy"
READERS = ("memory", "pread", "memmap", "memmap+madvise/16", "memmap+madvise/1")


def measured(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run `cmd`; its stdout, wall seconds and peak RSS in GiB (ru_maxrss of that process alone)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=e, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{err.read()[-3000:]}")
        return out.read(), seconds, usage.ru_maxrss / 2**20  # KiB -> GiB


def write_tiled(path: Path, rows: int) -> None:
    """MNIST's training images tiled to `rows` rows (uint8 (rows, 28, 28)), tile k shifted by its own
    (dy, dx) in -5..4 x -4..4, written in pieces (this process never holds the file)."""
    x = vaekit.data.load("mnist", "train", in_memory="yes").x.numpy()[:, 0]  # (60000, 28, 28)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    header = np.lib.format.header_data_from_array_1_0(x[:1])
    header["shape"] = (rows, 28, 28)
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for k, start in enumerate(range(0, rows, len(x))):
            dy, dx = k // 9 % 10 - 5, k % 9 - 4
            f.write(np.roll(x, (dy, dx), axis=(1, 2))[: rows - start].tobytes())
    os.replace(tmp, path)


def read_pass(file: str, reader: str, batch: int, max_batches: int) -> dict:
    """The child of `readers`: a pass over `file` in shuffled batches (at most max_batches); seconds per batch."""
    torch.set_num_threads(1)  # as the trainings below
    # each reader its own rows: none of them finds rows another one has just brought into the page cache
    g = torch.Generator().manual_seed(READERS.index(reader))
    perm = torch.randperm(np.load(file, mmap_mode="r").shape[0], generator=g)
    if reader in ("memory", "pread"):
        ds = vaekit.data.load(file, in_memory="yes" if reader == "memory" else "no")
        get = ds.batch
    else:
        mm = np.load(file, mmap_mode="r")

        def get(idx):
            return torch.from_numpy(mm[idx.numpy()][:, None]).float().div_(255.0)

    steps = min(len(perm) // batch, max_batches)
    t0 = time.perf_counter()
    for s in range(steps):
        get(perm[s * batch : (s + 1) * batch])
        if reader.startswith("memmap+madvise/") and (s + 1) % int(reader.split("/")[1]) == 0:
            mm._mmap.madvise(mmap.MADV_DONTNEED)  # drop the touched pages from this process (the cache keeps them)
    return {"us_per_batch": (time.perf_counter() - t0) / steps * 1e6, "steps": steps}


def readers(file: Path, batch: int, max_batches: int) -> dict[str, tuple[float, float]]:
    out = {}
    for reader in READERS:
        if reader == "memory" and file.stat().st_size > 2**30:
            continue
        cmd = [sys.executable, __file__, "--child", str(file), reader, str(batch), str(max_batches)]
        text, _, rss = measured(cmd)
        out[reader] = (json.loads(text)["us_per_batch"], rss)
        print(f"  {file.name} {reader}: {out[reader][0]:.0f} us/batch, peak RSS {rss:.2f} GiB", flush=True)
    return out


def train(data: Path, out: Path, epochs: int, batch: int, env: dict) -> tuple[list[dict], float, float]:
    """`vaekit train` on `data`: its metrics rows, wall seconds and peak RSS (GiB)."""
    cmd = vaekit_cmd("train", "--data", data, "--epochs", epochs, "--batch-size", batch, "--threads", 1)
    cmd += ["--quiet", "--out", str(out), "--overwrite"]
    _, seconds, rss = measured(cmd, env)
    return read_metrics(out), seconds, rss


def big_run(data: Path, out: Path, batch: int, seconds: float) -> dict:
    """`vaekit train` on `data` (VAEKIT_IN_MEMORY unset) stopped by SIGTERM `seconds` after its first
    checkpoint (vaekit then writes one more and exits 143): steps done, its VmRSS sampled every 0.5 s, its
    ru_maxrss (GiB)."""
    cmd = vaekit_cmd("train", "--data", data, "--epochs", 1, "--batch-size", batch, "--threads", 1, "--quiet")
    cmd += ["--checkpoint-every", 50, "--out", out, "--overwrite"]
    env = {k: v for k, v in os.environ.items() if k != "VAEKIT_IN_MEMORY"}
    p = subprocess.Popen(list(map(str, cmd)), env={**env, "PYTHONPATH": str(ROOT / "src")}, stderr=subprocess.PIPE)
    samples, t_first, stopped, t0 = [], None, False, time.perf_counter()
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        try:
            lines = Path(f"/proc/{p.pid}/status").read_text().splitlines()
        except OSError:
            lines = []
        rss = {k: int(v.split()[0]) / 2**20 for k, v in (ln.split(":", 1) for ln in lines) if k in ("VmRSS", "RssFile")}
        samples.append((time.perf_counter() - t0, rss.get("VmRSS", 0.0), rss.get("RssFile", 0.0)))
        if t_first is None and (out / "checkpoint" / "state.safetensors").exists():
            t_first, step_first = time.perf_counter(), checkpoint_step(out)
        if t_first is not None and not stopped and time.perf_counter() - t_first > seconds:
            p.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.5)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 128 + signal.SIGTERM) or t_first is None:
        raise SystemExit(f"{' '.join(map(str, cmd))} ended with {code}:\n{p.stderr.read().decode()[-3000:]}")
    t_end, step_end = time.perf_counter(), checkpoint_step(out)
    return {
        "steps": step_end - step_first,
        "seconds": t_end - t_first,
        "total_seconds": t_end - t0,
        "maxrss": usage.ru_maxrss / 2**20,
        "samples": samples,
    }


def checkpoint_step(run: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run / "checkpoint" / "state.safetensors"), "pt") as f:
        return json.loads(f.metadata()["state"])["step"]


def speed(small: Path, rounds: int, epochs: int, work: Path) -> tuple[dict, dict]:
    """Alternating in-memory / from-disk trainings on `small`: every epoch's seconds and the peak RSS."""
    times, rss = {"yes": [], "no": []}, {"yes": [], "no": []}
    for r in range(rounds):
        for mode in ("yes", "no"):
            rows, _, peak = train(small, work / f"run-{mode}", epochs, 128, {"VAEKIT_IN_MEMORY": mode})
            times[mode] += [row["epoch_seconds"] for row in rows]
            rss[mode].append(peak)
        print(f"round {r + 1}/{rounds}: in memory {times['yes'][-1]:.2f} s, from disk {times['no'][-1]:.2f} s")
    return times, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--big-rows", type=int, default=5_400_000)
    ap.add_argument("--big-batch", type=int, default=128)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the big file in /tmp")
    ap.add_argument("--big-batches", type=int, default=200, help="batches each reader reads from the big file")
    ap.add_argument(
        "--big-seconds", type=float, default=180, help="seconds the big run trains after its first checkpoint"
    )
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(read_pass(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))))
        return
    print(f"machine: {machine()}; ISA: {cpu_flags()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="vaekit-bigdata-"))
    small = work / "mnist-train.npy"
    np.save(small, vaekit.data.load("mnist", "train", in_memory="yes").x.numpy())
    read_small = readers(small, 128, 10**9)
    times, rss_small = speed(small, args.rounds, args.epochs, work)
    med = {m: statistics.median(t) for m, t in times.items()}
    lines = [
        "Readers, one pass in shuffled batches of 128 (a fresh process each; us per batch, peak RSS):",
        "",
        "| file | reader | us per batch | peak RSS GiB |",
        "|---|---|---|---|",
        *(f"| MNIST 60k, 47 MB | {k} | {v[0]:.0f} | {v[1]:.2f} |" for k, v in read_small.items()),
    ]
    if not args.skip_big:
        if not BIG.exists() or BIG.stat().st_size != 128 + args.big_rows * 784:
            t0 = time.perf_counter()
            write_tiled(BIG, args.big_rows)
            print(f"wrote {BIG} ({BIG.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
        gib = BIG.stat().st_size / 2**30
        auto = "disk" if vaekit.data.load(BIG).on_disk else "memory"  # what VAEKIT_IN_MEMORY=auto chooses here
        lines += [
            f"| tiled, {gib:.2f} GiB, {args.big_batches} batches | {k} | {v[0]:.0f} | {v[1]:.2f} |"
            for k, v in readers(BIG, 128, args.big_batches).items()
        ]
        big = big_run(BIG, work / "run-big", args.big_batch, args.big_seconds)
        print(f"big run: {big['steps']} steps in {big['seconds']:.0f} s, ru_maxrss {big['maxrss']:.2f} GiB", flush=True)
    lines += [
        "",
        f"`vaekit train` on the 60k MNIST training images as a uint8 .npy, batch 128, --threads 1, {args.epochs} "
        f"epochs x {args.rounds} rounds each, alternating:",
        "",
        "| data | median s/epoch | epochs timed | peak RSS GiB (max) |",
        "|---|---|---|---|",
        f"| in memory (VAEKIT_IN_MEMORY=yes) | {med['yes']:.2f} | {len(times['yes'])} | {max(rss_small['yes']):.2f} |",
        f"| from disk (VAEKIT_IN_MEMORY=no) | {med['no']:.2f} | {len(times['no'])} | {max(rss_small['no']):.2f} |",
        "",
        f"From disk runs at {med['yes'] / med['no']:.0%} of the in-memory speed (target: at least 70%).",
    ]
    if not args.skip_big:
        sam = big["samples"]
        quarter = [sam[int(f * (len(sam) - 1))] for f in (0.25, 0.5, 0.75, 1.0)]
        lines += [
            "",
            f"The big run: `vaekit train --data {BIG} --epochs 1 --batch-size {args.big_batch} --threads 1 --quiet "
            f"--checkpoint-every 50` with VAEKIT_IN_MEMORY unset (auto chose {auto}) on {args.big_rows:,} MNIST-shaped "
            f"rows ({gib:.2f} GiB uint8), stopped by SIGTERM {args.big_seconds:.0f} s after its first checkpoint "
            f"(vaekit saves a checkpoint and exits 143): {big['steps']} steps in {big['seconds']:.0f} s "
            f"({big['steps'] * args.big_batch / big['seconds']:,.0f} examples/s, {big['total_seconds']:.0f} s in all); "
            f"**peak RSS (ru_maxrss) {big['maxrss']:.2f} GiB** (target: under 1.5 GB). VmRSS / RssFile (GiB) at "
            + ", ".join(f"{t:.0f} s: {r:.2f} / {f:.2f}" for t, r, f in quarter)
            + ".",
        ]
    lines += [
        "",
        f"ISA: {cpu_flags()}. The 60k file was just written and is read every few seconds (in the page cache); "
        "the big file mostly is not (this VM's DAMON pages out what stays idle for 60 s).",
    ]
    append_results(
        "Data bigger than memory: peak RSS and speed from disk",
        "python benchmarks/bigdata.py " + " ".join(sys.argv[1:]),
        "\n".join(lines),
    )
    shutil.rmtree(work)
    if not args.skip_big and not args.keep:
        BIG.unlink()
        BIG.parent.rmdir()


if __name__ == "__main__":
    main()
