"""The explorer under hostile clients, through a real `vaekit serve` on loopback: a body over the cap sent
whole before reading (the 413 arrives, not a reset), slow-loris connections (closed after --read-timeout),
a cap on open connections (--max-connections: a normal request still gets through), and bad flag values.

The served run is an untrained 64-8-2 MLP VAE over 50 random 8x8 images: the weights do not matter here.
How fast a normal client is answered under attack is benchmarks/slowloris.py's job, not these tests'.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.error
import urllib.request

import httpx
import numpy as np
import pytest
from conftest import one_line
from test_app import Server

from vaekit.app.schema import MAX_BODY
from vaekit.errors import VaekitError

READ_TIMEOUT = 1.0  # the impatient explorer's --read-timeout, seconds
CAP = 60  # the other's --max-connections
HEAD = b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
pytestmark = pytest.mark.slow  # no MNIST, but two servers and their timeouts: ~12 s, beyond the quick tier's means


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import vaekit
    from vaekit.config import ModelConfig, RunConfig, TrainConfig

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), y=np.arange(50) % 10)
    cfg = RunConfig(
        ModelConfig(input_shape=(1, 8, 8), latent_dim=2, hidden=(8,)), TrainConfig(data=str(root / "data.npz"))
    )
    vaekit.save(vaekit.build_model(cfg.model), root / "run", cfg)
    return root / "run"


def serve(run, *args):
    s = Server(run, args=args)
    yield s
    s.stop()
    assert not any("Traceback" in line for line in s.errors), "".join(s.errors)


@pytest.fixture(scope="module")
def server(tiny_run):
    """--max-connections 60 (the default is 256); --read-timeout the default, 10 s."""
    yield from serve(tiny_run, "--max-connections", CAP)


@pytest.fixture(scope="module")
def impatient(tiny_run):
    yield from serve(tiny_run, "--read-timeout", READ_TIMEOUT)


def decode(server) -> int:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        return c.post("/api/decode", json={"z": [0.5, -0.5]}).status_code


def slow_connection(port: int, head: bytes = HEAD) -> socket.socket:
    """A connection that has sent the start of a request's head and stops there (a slow-loris's)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head[:20])
    return s


def closed(s: socket.socket, answer: bytearray | None = None) -> bool:
    """Whether the server has closed `s` (EOF or reset after what it answered, added to `answer`); does
    not wait."""
    s.setblocking(False)
    try:
        while chunk := s.recv(65536):
            if answer is not None:
                answer += chunk
        return chunk == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.setblocking(True)


def answer_of(s: socket.socket) -> bytes:
    """Everything the server writes on `s` until it closes it."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


# ---------------------------------------------------------------------------------- bodies over the cap


@pytest.mark.parametrize("size", [8 * MAX_BODY, 4 * MAX_BODY + 1])
def test_a_body_over_the_cap_sent_whole_before_reading_gets_its_413(server, size):
    """urllib sends its whole body before it reads: it used to see "connection reset by peer" (the server
    closed with the body unread) for a body larger than the socket buffers, 8 MB here."""
    req = urllib.request.Request(
        f"{server.url}/api/decode", data=b"x" * size, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413 and b"over the limit" in e.value.read()


def test_a_streamed_body_over_the_cap_sent_whole_gets_its_413(server):
    """The same for a chunked body with no Content-Length: refused once past the cap, the rest drained."""
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8 * MAX_BODY // len(chunk))) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
        assert answer_of(s).startswith(b"HTTP/1.1 413")


# ------------------------------------------------------------------------------------------ slow-loris


def test_a_slow_loris_is_closed_after_the_read_timeout(impatient):
    """A head sent a byte at a time gets a 408 and a close once --read-timeout has passed since its first
    byte, although it never stops sending; a connection that sends nothing is closed too."""
    silent = socket.create_connection(("127.0.0.1", impatient.port), timeout=10)
    s = socket.create_connection(("127.0.0.1", impatient.port), timeout=10)
    filler = HEAD + b"X-Filler: " + b"a" * 1000
    sent, answer = 0, bytearray()
    for byte in filler:  # 0.05 s a byte: 50 s for all of it, far beyond the timeout
        try:
            s.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
        if closed(s, answer):
            break
        time.sleep(0.05)
    assert sent < len(filler), "the slow head was never cut off"
    assert answer.startswith(b"HTTP/1.1 408") and b"headers took over" in answer, answer
    assert answer_of(silent) == b""  # closed without a word
    silent.close()
    s.close()


def test_a_slow_body_is_closed_after_the_read_timeout(impatient):
    """The head on time, then a body that never finishes: 408 and closed."""
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=30) as s:
        s.sendall(HEAD + b"Content-Length: 100\r\n\r\n" + b'{"z": [')
        assert answer_of(s).startswith(b"HTTP/1.1 408")


def test_a_normal_request_succeeds_with_50_slow_connections_open(server):
    slow = [slow_connection(server.port) for _ in range(50)]
    try:
        assert decode(server) == 200
        assert not any(closed(s) for s in slow[-10:])  # the newest are not yet timed out: all were open
    finally:
        for s in slow:
            s.close()


def test_past_the_cap_a_request_takes_the_place_of_the_connection_waiting_longest(server):
    """100 slow connections, 60 allowed: a normal request still succeeds, closing the oldest slow connection
    to take its place, and the 40 past the cap are closed (408) within a second, not after --read-timeout."""
    slow = [slow_connection(server.port) for _ in range(100)]
    try:
        assert decode(server) == 200
        assert closed(slow[0])  # its place taken
        answers = [bytearray() for _ in slow]
        for _ in range(100):  # up to 10 s for the lobby's second
            shut = [closed(s, a) for s, a in zip(slow, answers)]
            if sum(shut) >= 41:
                break
            time.sleep(0.1)
        assert sum(shut) >= 41 and not any(shut[1:50]), shut
        assert all(a.startswith(b"HTTP/1.1 408") for a, x in zip(answers[60:], shut[60:]) if x)
    finally:
        for s in slow:
            s.close()


# --------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--read-timeout", "0"], "--read-timeout"),
        (["--read-timeout", "nan"], "--read-timeout"),
        (["--read-timeout", "soon"], "--read-timeout"),
        (["--max-connections", "0"], "--max-connections"),
        (["--max-connections", "9" * 30], "--max-connections"),
    ],
)
def test_bad_limits_are_refused_in_one_line(flags, needle):
    from vaekit.cli import build_parser

    msg = one_line(pytest.raises(VaekitError, build_parser().parse_args, ["serve", "run", *flags]))
    assert needle in msg, msg
