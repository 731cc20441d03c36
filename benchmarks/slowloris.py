"""The explorer under a slow-loris attack: a normal client's decode latency with N attacker connections open.

    python benchmarks/slowloris.py [--run RUN] [--attackers 200 400] [--seconds 25] [--interval 1]
                                   [--read-timeout S] [--max-connections N] [--no-results]

Each attacker connection sends the head of a request a byte every --interval seconds and never finishes it;
when the server drops it, the attacker notes when (and whether a 408 came first) and connects again at once,
so N stay open as far as the server lets them. The attackers run in a second process (`--attack`, this script
without torch), the normal client in this one: every 10 ms it decodes a code on its keep-alive connection, then
another on a fresh connection (a browser opening one). Phases: the client alone, then with each --attackers
count, --seconds each (longer than the server's read timeout, so the drops show). Reports p50/p99/max of
both kinds of request per phase, errors (must be 0), the attackers' drops by second, and the server's RSS.
Without --run it serves a fresh (untrained) 784-400-20 MLP VAE. The target (issue 18): p99 under 50 ms with
200 attackers, on the defaults (--read-timeout 10, --max-connections 256).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD = b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: "
TARGET_MS = 50.0


# ------------------------------------------------------------------------------------------- attackers


async def attacker(port: int, t0: float, interval: float, log: dict) -> None:
    """One slow-loris: connect, send the head a byte every `interval` s (then 'a's for ever), and when the
    server hangs up note it in `log["drops"]` (seconds since t0, the connection's life, the answer's status)
    and connect again; until log["stop"]."""
    while not log["stop"]:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            log["failed"] += 1
            await asyncio.sleep(interval)
            continue
        log["open"] += 1
        log["peak"] = max(log["peak"], log["open"])
        born, answer, i = time.perf_counter(), b"", 0
        try:
            while not log["stop"]:
                writer.write(HEAD[i : i + 1] or b"a")
                i += 1
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), interval)
                except asyncio.TimeoutError:
                    continue
                answer += chunk
                if not chunk:
                    break
            else:
                writer.close()
                return
        except OSError:
            pass
        finally:
            log["open"] -= 1
        now = time.perf_counter()
        status = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "-"
        log["drops"].append((round(now - t0, 2), round(now - born, 2), status))
        writer.close()


async def attack(port: int, n: int, interval: float) -> dict:
    """n attackers until a line comes on stdin; prints {"ready": seconds} once all are connected."""
    t0 = time.perf_counter()
    log = {"drops": [], "failed": 0, "open": 0, "peak": 0, "stop": False}
    tasks = [asyncio.create_task(attacker(port, t0, interval, log)) for _ in range(n)]
    while log["open"] < n and time.perf_counter() - t0 < 10:  # ramp: all connected
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": round(time.perf_counter() - t0, 2)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    log["stop"] = True
    await asyncio.gather(*tasks)
    return log


# ---------------------------------------------------------------------------------------- normal client


async def request(reader, writer, body: bytes) -> bool:
    writer.write(
        b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return head.startswith(b"HTTP/1.1 200")


async def client(port: int, seconds: float) -> dict:
    """Decode on a keep-alive connection, then on a fresh one, every 10 ms for `seconds`: latencies (ms)."""
    body = json.dumps({"z": [0.1] * 20}).encode()
    lat = {"keep-alive": [], "fresh": []}
    errors = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for kind in ("keep-alive", "fresh"):
            t = time.perf_counter()
            try:
                if kind == "fresh":
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    ok = await request(r, w, body)
                    w.close()
                else:
                    ok = await request(reader, writer, body)
            except (OSError, asyncio.IncompleteReadError):
                ok = False
                if kind == "keep-alive":
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            lat[kind].append((time.perf_counter() - t) * 1000)
            errors += not ok
        await asyncio.sleep(0.01)
    writer.close()
    return {"lat": lat, "errors": errors}


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return q(0.5), q(0.99), xs[-1]


def drops_by_second(drops: list) -> str:
    """'9.9-10.1 s: 200 (408)' runs of drops, grouped where they come within a second of each other."""
    groups, out = [], []
    for t, _, status in sorted(drops):
        if groups and t - groups[-1][-1][0] < 1.0:
            groups[-1].append((t, status))
        else:
            groups.append([(t, status)])
    for g in groups:
        statuses = collections.Counter(s for _, s in g)
        shown = ", ".join(f"{c} {'no answer' if s == '-' else s}" for s, c in statuses.most_common())
        out.append(f"{g[0][0]:.1f}-{g[-1][0]:.1f} s: {len(g)} ({shown})")
    if len(out) > 8:
        out = out[:4] + [f"... {len(out) - 8} more runs ..."] + out[-4:]
    return "; ".join(out) or "none"


# ---------------------------------------------------------------------------------------------- phases


def phase(port: int, attackers: int, args) -> dict:
    proc = None
    if attackers:
        cmd = [sys.executable, __file__, "--attack", str(port), str(attackers), str(args.interval)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(proc.stdout.readline())["ready"]
        print(f"  {attackers} attackers connected in {ready:.2f} s", flush=True)
    res = asyncio.run(client(port, args.seconds))
    if proc is not None:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        log = json.loads(proc.stdout.readline())
        proc.wait()
        res |= {"drops": log["drops"], "failed": log["failed"], "peak": log["peak"]}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run folder to serve (default: a fresh 784-400-20 MLP VAE)")
    ap.add_argument("--attackers", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--seconds", type=float, default=25.0, help="duration of each phase")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between an attacker's bytes")
    ap.add_argument("--read-timeout", help="the server's --read-timeout (default: its default, 10 s)")
    ap.add_argument("--max-connections", help="the server's --max-connections (default: its default, 256)")
    ap.add_argument("--no-results", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    from common import cpu_flags, machine
    from serve_load import fresh_run, rss_mib, start_server

    if not all(0 < a <= 2000 for a in args.attackers) or not 0 < args.seconds <= 300:
        sys.exit("--attackers must be in 1..2000 and --seconds in (0, 300]")
    print(f"machine: {machine()}; ISA: {cpu_flags()}", flush=True)
    flags = [
        f
        for k in ("read_timeout", "max_connections")
        if getattr(args, k)
        for f in (f"--{k}".replace("_", "-"), getattr(args, k))
    ]
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        run = args.run or fresh_run(Path(d) / "vae")
        proc, port = start_server(run, *flags)
        try:
            asyncio.run(client(port, 1.0))  # warm-up
            for n in [0, *args.attackers]:
                r = phase(port, n, args) | {"attackers": n, "rss": rss_mib(proc.pid)}
                rows.append(r)
                for kind, xs in r["lat"].items():
                    p50, p99, top = quantiles(xs)
                    print(
                        f"{n:4d} attackers, {kind:10s}: {len(xs)} requests, "
                        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {top:.0f} ms",
                        flush=True,
                    )
                if n:
                    print(
                        f"  dropped {len(r['drops'])} attacker connections: {drops_by_second(r['drops'])}", flush=True
                    )
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)
    report(rows, args, flags, alive, load_before)


def report(rows: list[dict], args, flags: list, alive: bool, load_before: float) -> None:
    from common import cpu_flags
    from serve_load import any_errors, publish

    table = [
        "| attackers | request | requests | errors | p50 ms | p99 ms | max ms | attackers dropped (when: count) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for kind, xs in r["lat"].items():
            p50, p99, top = quantiles(xs)
            dropped = (
                ""
                if not r["attackers"] or kind != "keep-alive"
                else f"{len(r['drops'])}: {drops_by_second(r['drops'])}"
            )
            table.append(
                f"| {r['attackers']} | {kind} | {len(xs)} | {r['errors'] if kind == 'keep-alive' else ''} | "
                f"{p50:.1f} | {p99:.1f} | {top:.0f} | {dropped} |"
            )
    worst = {r["attackers"]: max(quantiles(xs)[1] for xs in r["lat"].values()) for r in rows}
    verdicts = [
        f"{n} attackers: worst p99 {p99:.1f} ms ({'met' if p99 < TARGET_MS else 'missed'})"
        for n, p99 in worst.items()
        if n
    ]
    model = "a fresh 784-400-20 MLP VAE" if args.run is None else f"the run {args.run}"
    body = (
        "\n".join(table)
        + "\n\n"
        + f"Target: a normal client's decode p99 under {TARGET_MS:.0f} ms with 200 slow-loris connections open. "
        + "; ".join(verdicts)
        + f". Server flags: {' '.join(map(str, flags)) or 'the defaults (--read-timeout 10, --max-connections 256)'}. "
        + f"Serving {model}; {args.seconds:g} s per phase; each attacker sends a head byte every {args.interval:g} s "
        + "and reconnects at once when dropped (408: the read timeout, or a second past the cap; 503: refused "
        + "past twice the cap; no answer: closed to make room for a request); attackers' peak open connections: "
        + ", ".join(f"{r['peak']} of {r['attackers']}" for r in rows if r["attackers"])
        + "; failed connects: "
        + ", ".join(str(r["failed"]) for r in rows if r["attackers"])
        + ". The normal client decodes every 10 ms on its keep-alive connection, then on a fresh one (connect "
        + "included). Server RSS after each phase: "
        + ", ".join(f"{r['rss']:.0f} MiB" for r in rows)
        + f". Attackers, client and server share this machine's {os.cpu_count()} CPUs; load average (1 min) "
        + f"before the run: {load_before:.1f}. Still serving afterwards: {alive}. ISA: {cpu_flags()}.\n"
    )
    publish("Explorer under a slow-loris attack", "slowloris.py", body, args.no_results, alive and not any_errors(rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attack"]:
        port, n, interval = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(asyncio.run(attack(port, n, interval))), flush=True)
    else:
        main()
