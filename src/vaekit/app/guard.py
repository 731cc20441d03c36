"""The explorer's defences against hostile clients.

`Guard`, ASGI middleware: body size limit (with a lingering close), JSON only, loopback Host headers,
security headers. `GuardedH11Protocol`, uvicorn's h11 connection with what uvicorn lacks: a cap on open
connections and read timeouts for a request's headers and body (slow-loris).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from vaekit.app.schema import MAX_BODY

MAX_CONNECTIONS = 256  # `vaekit serve --max-connections`: open connections, at most
READ_TIMEOUT = 10.0  # `--read-timeout`: seconds for a request's headers, then as many for its body
LOBBY_SECONDS = 1.0  # past the cap: seconds a new connection has for its first request's head
LINGER_SECONDS = 5.0  # after refusing a body: how long, and how much of it, is read and dropped before closing
LINGER_BYTES = 16 * MAX_BODY


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(header: str) -> str:
    """The host part of a Host header: 'a:80' -> 'a', '[::1]:80' -> '::1'."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class Guard:
    """ASGI middleware in front of everything:
    - a body over `max_body` bytes is refused with 413, whether its Content-Length says so or it streams
      (chunked) past the limit; the body is read here, bounded, and replayed to the app. A refused request's
      body is read on and dropped after the answer (a lingering close, see `_reply`), so a client that sends
      its whole body before it reads gets the 413 instead of a connection reset;
    - POST bodies to `json_paths` must be application/json (415 otherwise); a cross-site form post cannot
      be JSON without a CORS preflight, which this server never grants;
    - when serving on loopback, the Host header must name a loopback host (400 otherwise), so a page on
      another site cannot reach the server through DNS rebinding;
    - every response carries SECURITY_HEADERS (the page loads nothing from elsewhere and runs no inline script).
    """

    def __init__(self, app, json_paths: frozenset[str], max_body: int = MAX_BODY, loopback_only: bool = True):
        self.app, self.json_paths, self.max_body, self.loopback_only = app, json_paths, max_body, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secure(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), *SECURITY_HEADERS]}
            await send(msg)

        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        if self.loopback_only and host and not is_loopback(_hostname(host)):
            return await _reply(send_secure, receive, 400, f"Host header {host[:100]!r} is not a loopback address")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _reply(send_secure, receive, 400, "bad Content-Length header")
            if int(length) > self.max_body:
                return await _reply(
                    send_secure,
                    receive,
                    413,
                    f"request body of {int(length)} bytes is over the limit of {self.max_body}",
                )
        if scope["method"] == "POST" and scope["path"] in self.json_paths:
            ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
                return await _reply(
                    send_secure,
                    receive,
                    415,
                    f"send the request body as application/json, not {ctype[:100] or 'nothing'}",
                )
        if length is None and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send_secure)
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                return await _reply(
                    send_secure, receive, 413, f"request body is over the limit of {self.max_body} bytes"
                )
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send_secure)


async def _reply(send, receive, status: int, detail: str) -> None:
    """Answer `status` and close, without passing the request on. The answer is written whole first; then
    what is left of the request's body is read and dropped (at most LINGER_BYTES for LINGER_SECONDS) before
    the response ends and the server closes. Closing with the client's bytes unread makes the kernel reset
    the connection, and a client still sending (urllib sends its whole body before reading) would see that
    reset instead of this answer."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await _drain(receive)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _drain(receive) -> None:
    """Read and drop the rest of a request's body: until its end, LINGER_BYTES or LINGER_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline, dropped = loop.time() + LINGER_SECONDS, 0
    while dropped < LINGER_BYTES:
        try:
            msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            return
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            return
        dropped += len(msg.get("body", b""))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 connection (`uvicorn.Config(http=guarded_protocol(...))`) with what uvicorn lacks.

    - A read timeout: a request's headers must arrive within `read_timeout` seconds of its first byte (of
      the connection's opening, for its first request), and its body within as many again. uvicorn times
      only the idle gap between requests (`timeout_keep_alive`), and any byte resets that, so a client that
      sends a header a byte at a time (slow-loris) holds its connection for ever. Late: a 408 and close.
    - A cap on connections: past `max_connections` open, a new connection has LOBBY_SECONDS (not
      `read_timeout`) to send its first request's head; once it has, it takes the place of the connection
      that has waited longest for a head (one part-way through its head first, then an idle keep-alive one),
      which is closed. So connections held open (slow-loris) cannot lock out a client that sends a request,
      while the attackers past the cap are dropped within a second, not in a storm of reconnections (each
      new connection closing an old one at once, 1700 a second here with 400 attackers). Past twice the
      cap, a new connection gets a 503 at once. uvicorn's `limit_concurrency` answers 503 to the request of
      a newcomer while the connections that hold the slots stay open: the wrong side of a slow-loris.
    """

    max_connections = MAX_CONNECTIONS
    read_timeout = READ_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.read_timer, self.phase, self.since = None, None, self.loop.time()
        self.fresh, self.partial = True, False  # no request seen yet; bytes of a request's head received
        self.lobby = len(self.connections) > self.max_connections  # past the cap, until its head is in
        if len(self.connections) > 2 * self.max_connections:
            return self.hang_up(503, f"the server has {2 * self.max_connections} connections open")
        self.set_timer()

    def data_received(self, data: bytes) -> None:
        self.partial = True
        super().data_received(data)
        if self.lobby and self.conn.their_state not in (h11.IDLE, h11.ERROR) and not self.transport.is_closing():
            self.take_a_place()  # a request's head, well formed (a 400 has closed the connection)
        self.set_timer()

    def take_a_place(self) -> None:
        """A connection past the cap has sent a request's head: close the one waiting longest for one."""
        self.lobby = False
        if sum(not c.lobby for c in self.connections) > self.max_connections:
            waiting = [c for c in self.connections if not c.lobby and c.waiting_for_a_request()]
            if waiting:
                min(waiting, key=lambda c: (not c.partial, c.since)).hang_up()

    def on_response_complete(self) -> None:
        self.partial = False
        super().on_response_complete()
        self.set_timer()

    def connection_lost(self, exc) -> None:
        self.cancel_timer()
        super().connection_lost(exc)

    def waiting_for_a_request(self) -> bool:
        """No request in progress: opened or kept alive, nothing or part of a request's head received."""
        idle = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE
        return idle and not self.transport.is_closing()

    def set_timer(self) -> None:
        """Arm the read timeout of the phase the connection is in: the headers, the body, or none."""
        state = self.conn.their_state
        self.fresh = self.fresh and state is h11.IDLE
        phase = "headers" if state is h11.IDLE and (self.fresh or self.partial) else None
        phase = "body" if state is h11.SEND_BODY else phase
        if phase != self.phase and not self.transport.is_closing():
            self.cancel_timer()
            self.phase, self.since = phase, self.loop.time()
            if phase is not None:
                wait = min(LOBBY_SECONDS, self.read_timeout) if self.lobby else self.read_timeout
                self.read_timer = self.loop.call_later(wait, self.timed_out)

    def cancel_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def timed_out(self) -> None:
        self.read_timer = None
        quiet = self.phase == "headers" and not self.partial  # opened, never sent a byte: just close
        wait = min(LOBBY_SECONDS, self.read_timeout) if self.lobby else self.read_timeout
        self.hang_up(None if quiet else 408, f"the request's {self.phase} took over {wait:g} s")

    def hang_up(self, status: int | None = None, detail: str = "") -> None:
        """Close the connection, with a `status` answer first when no response has begun on it."""
        if self.transport.is_closing():
            return
        self.cancel_timer()
        if status is not None and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = json.dumps({"detail": detail}).encode()
            head = f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Service Unavailable'}\r\n"
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            self.transport.write(head.encode() + body)
        self.transport.close()


def guarded_protocol(max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT) -> type:
    """GuardedH11Protocol with these limits, for `uvicorn.Config(http=...)`."""
    limits = {"max_connections": max_connections, "read_timeout": read_timeout}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)
