"""Load on the latent explorer: closed-loop clients on loopback against `vaekit serve`, fixed duration.

    python benchmarks/serve_load.py [--run RUN] [--seconds 10] [--clients 16 64] [--endpoints decode encode]

Without --run it serves a fresh (untrained) 784-400-20 MLP VAE: the weights do not change the cost. Each
phase (endpoint x client count) runs for --seconds or --max-requests, whichever comes first; every client
keeps one keep-alive connection and sends its next request when the last one is answered (closed loop). Reports errors
(must be 0), p50/p99 latency, throughput, and the server's RSS before and after. The load generator runs on
the same machine as the server, so on a small machine both share the cores: the figures are an upper bound
on latency, not the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_results

sys.path.insert(0, str(ROOT / "src"))


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fresh_run(folder: Path) -> Path:
    """An untrained 784-400-20 MLP VAE saved as a run folder (the map uses MNIST's test split)."""
    import vaekit
    from vaekit.config import ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(ModelConfig(), TrainConfig(data="mnist"))
    vaekit.save(vaekit.build_model(cfg.model), folder, cfg)
    return folder


def start_server(run: Path, *flags: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaekit", "serve", str(run), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not m:
        proc.kill()
        sys.exit(f"vaekit serve did not start: {line!r}")
    return proc, int(m.group(0).rsplit(":", 1)[1])


def bodies(endpoint: str, n: int = 64) -> list[bytes]:
    """Request bodies prepared up front, so the clients spend no time building JSON."""
    import json

    import torch

    g = torch.Generator().manual_seed(0)
    if endpoint == "decode":
        return [
            json.dumps({"z": [round(v, 4) for v in torch.randn(20, generator=g).tolist()]}).encode() for _ in range(n)
        ]
    import vaekit

    x = vaekit.data.load("mnist", "test").batch(slice(0, n)).flatten(1)
    return [json.dumps({"pixels": [round(v, 3) for v in row.tolist()]}).encode() for row in x]


async def phase(port: int, endpoint: str, clients: int, seconds: float, max_requests: int, pool: list[bytes]):
    """`clients` keep-alive connections, each sending its next request when the last is answered. A plain
    asyncio HTTP/1.1 client: an HTTP library would cost the shared CPU more than the server does."""
    reqs = [
        (
            f"POST /api/{endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in pool
    ]
    lat: list[float] = []
    errors = sent = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int):
        nonlocal errors, sent
        rng = random.Random(i)
        reader = writer = None
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(rng.choice(reqs))
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                ok = head.startswith(b"HTTP/1.1 200")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                ok, writer = False, None
            lat.append(time.perf_counter() - t0)
            errors += not ok
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    return {
        "endpoint": endpoint,
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "p50": q(0.50),
        "p99": q(0.99),
        "max": lat[-1] * 1000,
        "rps": len(lat) / wall,
        "seconds": wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run folder to serve (default: a fresh 784-400-20 MLP VAE)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--endpoints", nargs="+", default=["decode", "encode"], choices=["decode", "encode"])
    ap.add_argument("--max-requests", type=int, default=50_000, help="cap on the requests of one phase")
    ap.add_argument("--no-results", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    if not all(0 < c <= 256 for c in args.clients) or not 0 < args.seconds <= 120:
        sys.exit("--clients must be in 1..256 and --seconds in (0, 120]")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        run = args.run or fresh_run(Path(d) / "vae")
        proc, port = start_server(run)
        try:
            pools = {e: bodies(e) for e in args.endpoints}
            asyncio.run(phase(port, args.endpoints[0], 4, 1.0, 200, pools[args.endpoints[0]]))  # warm-up
            rss = [("after start and warm-up", rss_mib(proc.pid))]
            rows = []
            for e in args.endpoints:
                for n in args.clients:
                    r = asyncio.run(phase(port, e, n, args.seconds, args.max_requests, pools[e]))
                    rows.append(r)
                    rss.append((f"after {e} x {n}", rss_mib(proc.pid)))
                    print(
                        f"{e:7s} {n:3d} clients: {r['requests']:6d} requests, {r['errors']} errors, "
                        f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['rps']:.0f}/s, RSS {rss[-1][1]:.0f} MiB",
                        flush=True,
                    )
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)
    table = [
        "| endpoint | clients | requests | errors | p50 ms | p99 ms | max ms | requests/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| /api/{r['endpoint']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50']:.1f} | "
        f"{r['p99']:.1f} | {r['max']:.0f} | {r['rps']:.0f} |"
        for r in rows
    ]
    model = "a fresh 784-400-20 MLP VAE" if args.run is None else f"the run {args.run}"
    body = (
        "\n".join(table)
        + "\n\nServer RSS: "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in rss)
        + ".\n\n"
        + (
            f"Serving {model}; {args.seconds:g} s per phase, closed loop (each client sends its next request when "
            f"the last is answered), loopback. The server answers requests one at a time on its event loop, torch "
            f"on 1 thread, so p50 at n clients is about n x the service time. The load generator (plain asyncio "
            f"HTTP/1.1, one keep-alive connection per client) shares the machine's cores with the server: these "
            f"are upper bounds on the server's own latency. Load average (1 min) before the run: {load_before:.1f} "
            f"on {os.cpu_count()} CPUs (anything above 0 is other work sharing the machine). "
            f"Still serving afterwards: {alive}.\n"
        )
    )
    publish("Explorer server under load", "serve_load.py", body, args.no_results, ok=alive and not any_errors(rows))


def any_errors(rows: list[dict]) -> bool:
    return any(r["errors"] for r in rows)


def publish(title: str, script: str, body: str, no_results: bool, ok: bool) -> None:
    """Print the section (--no-results) or append it to RESULTS.md with this run's command; exit 1 unless ok
    (errors, or a server that stopped answering)."""
    if no_results:
        print(body)
    else:
        append_results(title, " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]), body)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
