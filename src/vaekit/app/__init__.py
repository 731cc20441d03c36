"""The latent explorer: `vaekit serve RUN [RUN ...]` -> a FastAPI app (server.py) and one page (static/).

from vaekit.app import create_app, load_entries
app = create_app(load_entries(["runs/demo/vae"]))     # any ASGI server can run it
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from vaekit.errors import VaekitError


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or a VaekitError saying why not."""
    if not 0 <= port <= 65535:
        raise VaekitError(f"--port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
        # every answer on a keep-alive connection waits ~40 ms (Nagle's algorithm against delayed ACKs).
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise VaekitError(f"--host {host}: cannot resolve it ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise VaekitError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def serve(
    runs: list[str | Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    max_connections: int | None = None,
    read_timeout: float | None = None,
) -> int:
    """Load the runs (safetensors only), then serve the explorer until interrupted. Returns the exit code.

    max_connections: open connections at most (default guard.MAX_CONNECTIONS, 256); read_timeout: seconds
    a client has for a request's headers, then as many for its body (default guard.READ_TIMEOUT, 10 s).
    Bad runs, or a host/port that cannot be listened on, raise VaekitError (the CLI: exit 2, one line).
    """
    import torch
    import uvicorn

    from vaekit.app.guard import MAX_CONNECTIONS, READ_TIMEOUT, guarded_protocol, is_loopback
    from vaekit.app.server import create_app, load_entries

    # Requests are answered one at a time (server.py says why), each a few small matrix products, too small
    # to gain from torch's intra-op threads; one thread leaves the other cores to the OS and other work.
    torch.set_num_threads(1)
    sock = _listen(host, port)  # first: a busy port fails before seconds of loading
    try:
        entries = load_entries(runs)
        if not is_loopback(host):
            print(
                f"warning: --host {host} makes the explorer reachable from other machines; it has no "
                f"authentication (the default, 127.0.0.1, is this machine only)",
                file=sys.stderr,
                flush=True,
            )
        shown = f"[{host}]" if ":" in host else host
        names = ", ".join(f"{i}: {e.name}" for i, e in enumerate(entries))
        print(f"vaekit explorer on http://{shown}:{sock.getsockname()[1]}/  (models {names}; Ctrl-C stops)", flush=True)
        app = create_app(entries, loopback_only=is_loopback(host))
        # uvicorn's own h11 connection, with the connection cap and read timeouts it lacks (guard.py)
        http = guarded_protocol(max_connections or MAX_CONNECTIONS, read_timeout or READ_TIMEOUT)
        config = uvicorn.Config(app, http=http, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def __getattr__(name):  # create_app / load_entries without importing torch and FastAPI for `vaekit --help`
    if name in ("create_app", "load_entries"):
        from vaekit.app import server

        return getattr(server, name)
    raise AttributeError(name)
