"""The explorer's ASGI middleware: body size limit, JSON only, loopback Host headers, security headers."""

from __future__ import annotations

import ipaddress
import json

from vaekit.app.schema import MAX_BODY


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
      (chunked) past the limit; the body is read here, bounded, and replayed to the app;
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
            return await _reply(send_secure, 400, f"Host header {host[:100]!r} is not a loopback address")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _reply(send_secure, 400, "bad Content-Length header")
            if int(length) > self.max_body:
                return await _reply(
                    send_secure, 413, f"request body of {int(length)} bytes is over the limit of {self.max_body}"
                )
        if scope["method"] == "POST" and scope["path"] in self.json_paths:
            ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
                return await _reply(
                    send_secure, 415, f"send the request body as application/json, not {ctype[:100] or 'nothing'}"
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
                return await _reply(send_secure, 413, f"request body is over the limit of {self.max_body} bytes")
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


async def _reply(send, status: int, detail: str) -> None:
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
    await send({"type": "http.response.body", "body": body})
