"""The latent explorer's API through a real `vaekit serve` (uvicorn) on a free loopback port.

Happy paths with shape checks, hostile requests (each answered 4xx, the server serving on), arbitrary JSON
(hypothesis) and a bounded schemathesis run over /openapi.json: never a 5xx, never a traceback.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import ROOT, _train, assert_clean_error, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

POSTS = ["/api/decode", "/api/encode", "/api/sample", "/api/interpolate"]


class Server:
    """`vaekit serve RUNS --port 0 [ARGS]` in a subprocess: .url once it listens; its stderr is kept in .errors."""

    def __init__(self, *runs, args: tuple = (), timeout: float = 120):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vaekit", "serve", *map(str, runs), "--port", "0", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.errors.append(x) for x in self.proc.stderr], daemon=True).start()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"vaekit serve did not start:\n{''.join(self.errors)}") from None
        m = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert m, (line, self.errors)
        self.url = m.group(0)
        self.port = int(self.url.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(f"{self.url}/api/models", timeout=10).status_code == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def served(*runs):
    """A Server of `runs` for a fixture: stopped afterwards, and no traceback in its log."""
    s = Server(*runs)
    yield s
    s.stop()
    assert not any("Traceback" in line for line in s.errors), "".join(s.errors)


def client_of(server):
    """An httpx client of `server` for a fixture; the server must still answer afterwards."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
    assert server.alive(), "the server stopped answering"


@pytest.fixture(scope="module")
def server(vae_run, ae_run):
    yield from served(vae_run, ae_run)


@pytest.fixture
def client(server):
    yield from client_of(server)


def image(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def stroke() -> list[float]:
    """A 28x28 vertical bar, roughly a '1', flattened: 784 floats in [0, 1]."""
    return [1.0 if 12 <= c <= 15 and 4 <= r <= 23 else 0.0 for r in range(28) for c in range(28)]


def local_scores(run, pixels: list[float], seed: int = 0) -> dict[str, float]:
    """vaekit.anomaly's scores of one 28x28 image in this process, calibrated as the explorer calibrates (the
    run's threshold.json, else its validation split): what the explorer should answer."""
    from pathlib import Path

    import torch

    import vaekit
    from vaekit.anomaly import Detector
    from vaekit.data import Dataset

    x = torch.tensor(pixels, dtype=torch.float32).view(1, 1, 28, 28)
    det = Detector(vaekit.load(run), seed=seed)
    if (Path(run) / "threshold.json").exists():
        det.load(run)
    return {k: v.item() for k, v in det.table(Dataset(x, None, "drawing")).items()}


def noise(seed: int = 0) -> list[float]:
    import random

    r = random.Random(seed)
    return [r.random() for _ in range(784)]


@pytest.fixture(scope="module")
def threshold_runs(tmp_path_factory, vae_run, ae_run, mnist_train):
    """Copies of the test runs: `vae` with a threshold fitted at FPR 5% on 500 MNIST digits it was not
    trained on, `vae-damaged` with a truncated threshold.json, `ae` with the VAE's (another model's).
    Returns the three folders and the threshold."""
    import torch

    import vaekit
    from vaekit.anomaly import Detector

    root = tmp_path_factory.mktemp("threshold")
    vae, damaged, ae = root / "vae", root / "vae-damaged", root / "ae"
    for src, dst in ((vae_run, vae), (vae_run, damaged), (ae_run, ae)):
        shutil.copytree(src, dst)
    held_out = mnist_train.subset(torch.arange(3000, 3500))  # the runs saw the first 3000
    det = Detector(vaekit.load(vae)).fit(held_out, fpr=0.05, source="MNIST train 3000:3500")
    path = det.save(vae)
    (damaged / "threshold.json").write_text(path.read_text()[:50])
    shutil.copy(path, ae / "threshold.json")
    return vae, damaged, ae, det.threshold


# ------------------------------------------------------------------------------------------ happy paths


def test_models(client):
    r = client.get("/api/models")
    assert r.status_code == 200
    models = r.json()["models"]
    assert [m["kind"] for m in models] == ["vae", "ae"] and [m["index"] for m in models] == [0, 1]
    assert [m["name"] for m in models] == ["vae", "ae"]
    for m in models:
        assert m["latent_dim"] == 20 and m["input_shape"] == [1, 28, 28] and m["points"] == 2000
        assert m["has_labels"] and m["split"] == "file" and m["data"] == "mnist3k.npz"  # a name, not a path
    assert models[0]["elbo_mean"] < 0 and models[1]["elbo_mean"] is None
    assert [m["threshold"] for m in models] == [None, None]  # the runs have no threshold.json
    assert r.json()["limits"]["max_body_bytes"] == 1 << 20


def test_page_and_schema(client):
    r = client.get("/")
    assert r.status_code == 200 and "<canvas" in r.text and "app.js" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "http" not in re.sub(r"http://www\.w3\.org/\S+", "", client.get("/static/app.js").text)  # no CDN
    assert client.get("/static/style.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/api/models",
        "/api/latents",
        "/api/decode",
        "/api/encode",
        "/api/sample",
        "/api/interpolate",
    }
    assert client.get("/docs").status_code == 404  # FastAPI's docs page would load a CDN


def test_latents_pca_plane(client):
    r = client.get("/api/latents", params={"model": "vae"})
    assert r.status_code == 200
    m = r.json()
    assert m["plane"] == "pca" and m["n"] == len(m["x"]) == len(m["y"]) == len(m["labels"]) == 2000
    assert set(m["labels"]) <= set(range(10))
    b = m["basis"]
    assert len(b) == 2 and len(b[0]) == 20
    for i in range(2):
        for j in range(2):
            assert math.isclose(sum(p * q for p, q in zip(b[i], b[j])), float(i == j), abs_tol=1e-3)
    # example 5 sits where its posterior mean projects
    mu = client.post("/api/encode", json={"model": "vae", "index": 5}).json()["mu"]
    u = sum((a - o) * w for a, o, w in zip(mu, m["origin"], b[0]))
    assert math.isclose(u, m["x"][5], abs_tol=1e-2)


def test_latents_dims_plane(client):
    m = client.get("/api/latents", params={"model": 1, "plane": "dims", "x": 3, "y": 7, "n": 10}).json()
    assert m["plane"] == "dims" and m["dims"] == [3, 7] and m["n"] == 10 and m["axes"] == ["z4", "z8"]
    mu = client.post("/api/encode", json={"model": 1, "index": 2}).json()["mu"]
    assert math.isclose(m["x"][2], mu[3], abs_tol=1e-3) and math.isclose(m["y"][2], mu[7], abs_tol=1e-3)
    assert len(m["low"]) == len(m["high"]) == len(m["center"]) == 20


def test_decode(client):
    a = client.post("/api/decode", json={"model": 0, "z": [0.0] * 20})
    b = client.post("/api/decode", json={"model": "vae", "z": [2.0] * 20})
    assert a.status_code == b.status_code == 200
    img = image(a.json()["image"])
    assert img.size == (28, 28) and img.mode == "L"
    assert a.json()["image"] != b.json()["image"] and a.json()["model"] == "vae"


def test_encode_drawing(client):
    r = client.post("/api/encode", json={"model": 0, "pixels": stroke()})
    assert r.status_code == 200
    e = r.json()
    assert len(e["mu"]) == len(e["sigma"]) == 20 and all(s > 0 for s in e["sigma"])
    assert image(e["reconstruction"]).size == image(e["image"]).size == (28, 28)
    assert e["elbo"] < 0 and e["kl"] > 0 and math.isclose(e["elbo"], e["recon"] - e["kl"], rel_tol=1e-4)
    assert client.post("/api/encode", json={"model": 0, "pixels": stroke()}).json() == e  # fixed noise
    ae = client.post("/api/encode", json={"model": "ae", "pixels": stroke()}).json()
    assert ae["elbo"] is None and ae["kl"] is None and set(ae["sigma"]) == {0.0} and ae["recon"] < 0


def test_encode_gives_the_anomaly_score_of_anomaly_score_table(client, vae_run, ae_run):
    """The drawing scored as `vaekit score` scores an image: binarized as the run's data (seed 0), calibrated
    on the run's validation split; without a threshold.json, no threshold and no verdict."""
    for ref, run in ((0, vae_run), ("ae", ae_run)):
        for pixels in (stroke(), noise()):
            a = client.post("/api/encode", json={"model": ref, "pixels": pixels}).json()["anomaly"]
            want = local_scores(run, pixels)
            assert (a["binarize"], a["seed"], a["threshold"], a["outlier"]) == ("dynamic", 0, None, None)
            assert a["complexity"] == want["complexity"]  # the same binarized pixels: exact
            for k in ("score", "neg_elbo"):
                assert math.isclose(a[k], want[k], rel_tol=1e-6), (k, a[k], want[k])
            assert 0 <= a["score"] <= math.log(151)  # -log tail p against the 150 validation digits
    again = client.post("/api/encode", json={"model": 0, "pixels": stroke()}).json()["anomaly"]
    assert again == client.post("/api/encode", json={"model": 0, "pixels": stroke()}).json()["anomaly"]
    by_index = client.post("/api/encode", json={"model": 0, "index": 0}).json()["anomaly"]
    assert by_index["complexity"] > 0 and by_index["score"] != again["score"]


def test_a_runs_threshold_gives_a_verdict(threshold_runs):
    """With threshold.json in the run folder: the threshold in /api/models and in every encode answer, and
    outlier = score > threshold. A damaged or foreign threshold.json: a warning, and the run is served without."""
    vae, damaged, ae, t = threshold_runs
    s = Server(vae, damaged, ae)
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            models = c.get("/api/models").json()["models"]
            assert [m["name"] for m in models] == ["vae", "vae-damaged", "ae"]
            assert models[0]["threshold"] == {"value": t.value, "fpr": 0.05, "n": 500}
            assert models[1]["threshold"] is None and models[2]["threshold"] is None
            verdicts = set()
            for body in [{"index": i} for i in range(10)] + [{"pixels": stroke()}, {"pixels": noise(1)}]:
                a = c.post("/api/encode", json={"model": 0, **body}).json()["anomaly"]
                assert a["threshold"] == models[0]["threshold"] and a["outlier"] == (a["score"] > t.value)
                verdicts.add(a["outlier"])
            assert verdicts == {True, False}  # test digits pass, noise does not: both verdicts are reachable
            a = c.post("/api/encode", json={"model": 0, "pixels": noise(1)}).json()["anomaly"]
            want = local_scores(vae, noise(1), seed=t.seed)
            assert a["complexity"] == want["complexity"] and math.isclose(a["score"], want["score"], rel_tol=1e-6)
            for m in (1, 2):
                a = c.post("/api/encode", json={"model": m, "pixels": stroke()}).json()["anomaly"]
                assert a["threshold"] is None and a["outlier"] is None
    finally:
        s.stop()
    errors = "".join(s.errors)
    assert "Traceback" not in errors
    warnings = [line for line in s.errors if line.startswith("warning: ")]
    assert len(warnings) == 2, errors
    assert "vae-damaged/threshold.json: not a valid threshold file" in warnings[0]
    assert "ae/threshold.json: calibrated for another model" in warnings[1]
    assert all("without a threshold" in w for w in warnings)


def test_sample(client):
    r = client.post("/api/sample", json={"model": 0, "n": 10, "seed": 3})
    assert r.status_code == 200 and r.json()["nrow"] == 4
    assert image(r.json()["image"]).size == (4 * 30 + 2, 3 * 30 + 2)  # 28-pixel digits, 2-pixel gutters
    assert client.post("/api/sample", json={"model": 0, "n": 10, "seed": 3}).json() == r.json()
    assert client.post("/api/sample", json={"model": 0, "n": 10, "seed": 4}).json()["image"] != r.json()["image"]
    assert client.post("/api/sample", json={"model": "ae", "n": 1}).status_code == 200


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolate(client, spherical):
    mu = [client.post("/api/encode", json={"model": 0, "index": i}).json()["mu"] for i in (0, 1)]
    r = client.post(
        "/api/interpolate",
        json={"model": 0, "start": {"index": 0}, "end": {"index": 1}, "steps": 5, "spherical": spherical},
    )
    assert r.status_code == 200
    out = r.json()
    assert len(out["z"]) == 5 and image(out["image"]).size == (5 * 30 + 2, 32)
    assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(out["z"][0], mu[0]))
    assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(out["z"][-1], mu[1]))
    mixed = client.post(
        "/api/interpolate", json={"model": "ae", "start": {"pixels": stroke()}, "end": {"z": [0.5] * 20}, "steps": 2}
    )
    assert mixed.status_code == 200 and mixed.json()["z"][-1] == [0.5] * 20


# ----------------------------------------------------------------------------------------- hostile


def post_raw(client, path, body: str | bytes, ctype="application/json", **kw):
    return client.post(path, content=body, headers={"content-type": ctype}, **kw)


def detail(r) -> str:
    return json.dumps(r.json()["detail"])


def test_oversized_body_is_413(client):
    big = json.dumps({"model": 0, "z": [0.0] * 400_000})  # ~2 MB
    r = post_raw(client, "/api/decode", big)
    assert r.status_code == 413 and "limit" in detail(r)


def test_streamed_body_over_the_limit_is_413(client):
    def chunks():  # no Content-Length: chunked encoding
        yield b'{"model": 0, "z": ['
        for _ in range(300):
            yield b"0.0," * 1000
        yield b"0.0]}"

    r = client.post("/api/decode", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/sample", {"n": 10**9}),
        ("/api/sample", {"n": 0}),
        ("/api/sample", {"n": -5}),
        ("/api/sample", {"n": 10, "nrow": 10**6}),
        ("/api/sample", {"seed": 2**80}),
        ("/api/interpolate", {"start": {"index": 0}, "end": {"index": 1}, "steps": 10**6}),
        ("/api/interpolate", {"start": {"index": 0}, "end": {"index": 1}, "steps": 1}),
        ("/api/encode", {"index": 10**6}),
        ("/api/encode", {"index": -1}),
    ],
)
def test_huge_or_bad_counts_are_422(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "raw",
    [
        '{"z": [NaN' + ", 0.0" * 19 + "]}",
        '{"z": [Infinity' + ", 0.0" * 19 + "]}",
        '{"z": [-Infinity' + ", 0.0" * 19 + "]}",
        '{"z": [1e999' + ", 0.0" * 19 + "]}",
        '{"z": [1e5' + ", 0.0" * 19 + "]}",
    ],
)
def test_non_finite_latents_are_422(client, raw):
    r = post_raw(client, "/api/decode", raw)
    assert r.status_code == 422 and "body" in detail(r)


def test_nan_in_pixels_and_ends_is_422(client):
    px = json.dumps(stroke()[:-1] + [float("nan")])
    assert post_raw(client, "/api/encode", f'{{"pixels": {px}}}').status_code == 422
    ends = '{"start": {"z": [NaN' + ", 0" * 19 + ']}, "end": {"index": 0}}'
    assert post_raw(client, "/api/interpolate", ends).status_code == 422


@pytest.mark.parametrize(
    "path,body,needle",
    [
        ("/api/decode", {"model": 0, "z": [0.0] * 19}, "latent_dim 20"),
        ("/api/decode", {"model": 0, "z": [0.0] * 21}, "latent_dim 20"),
        ("/api/decode", {"model": 0, "z": []}, "at least 1"),
        ("/api/encode", {"model": 0, "pixels": [0.0] * 783}, "784"),
        ("/api/encode", {"model": 0, "pixels": [0.0] * 28}, "784"),
        ("/api/encode", {"model": 0, "pixels": [2.0] * 784}, "less than or equal to 1"),
        ("/api/encode", {"model": 0, "pixels": [0.0] * 784, "index": 3}, "exactly one"),
        ("/api/encode", {"model": 0}, "exactly one"),
        ("/api/interpolate", {"start": {"z": [0.0] * 3}, "end": {"index": 0}}, "latent_dim 20"),
        ("/api/decode", {"model": 0, "z": [0.0] * 20, "extra": 1}, "extra"),
        ("/api/sample", {"n": "10"}, "integer"),
        ("/api/sample", {"n": True}, "integer"),
    ],
)
def test_wrong_shapes_and_types_are_422_with_a_message(client, path, body, needle):
    r = client.post(path, json=body)
    assert r.status_code == 422 and needle in detail(r), r.text


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/xml", ""]
)
def test_wrong_content_type_is_415(client, ctype):
    r = post_raw(client, "/api/decode", json.dumps({"z": [0.0] * 20}), ctype=ctype)
    assert r.status_code == 415 and "application/json" in detail(r)


@pytest.mark.parametrize(
    "ref",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "~/runs/vae",
        "C:\\Windows\\win.ini",
        "file:///etc/passwd",
        "vae/../ae",
        "%2e%2e%2f",
        "nope",
        99,
        "2",
    ],
)
def test_path_like_or_unknown_models_are_404(client, ref):
    r = client.post("/api/decode", json={"model": ref, "z": [0.0] * 20})
    assert r.status_code == 404 and "unknown model" in detail(r)
    assert client.get("/api/latents", params={"model": str(ref)}).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static//etc/passwd",
        "/../../etc/passwd",
    ],
)
def test_path_traversal_finds_nothing(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404) and "import" not in r.text


@pytest.mark.parametrize(
    "body",
    [
        '{"z": [0.0, ',
        "not json",
        '{"z": "/etc/passwd"}',
        "[" * 50_000,
        '{"n": ' + "9" * 5000 + "}",
        b"\xff\xfe{}",
        '"just a string"',
        "null",
    ],
)
def test_malformed_json_is_4xx(client, body):
    r = post_raw(client, "/api/sample", body)
    assert 400 <= r.status_code < 500, r.text


def test_foreign_host_header_is_400(client):
    r = client.get("/api/models", headers={"host": "evil.example:8000"})
    assert r.status_code == 400 and "loopback" in detail(r)
    assert client.get("/api/models", headers={"host": "localhost"}).status_code == 200


def test_bad_latents_queries_are_422(client):
    for params in (
        {"plane": "dims", "x": 25},
        {"plane": "dims", "x": 2, "y": 2},
        {"plane": "tsne"},
        {"n": 0},
        {"n": 10**6},
        {"x": -1},
    ):
        assert client.get("/api/latents", params=params).status_code == 422, params


def test_lying_and_garbled_connections_leave_the_server_up(server):
    def raw(data: bytes) -> bytes:
        """Send `data`, half-close, return what the server answered before it hung up. A server that refuses
        a request and closes with our bytes still unread makes the kernel reset the connection (RST, not
        FIN): that is a hang-up too, with whatever arrived before it."""
        out = b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    out += chunk
            except (ConnectionResetError, BrokenPipeError):
                pass
        return out

    head = b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    raw(head + b'Content-Length: 100\r\n\r\n{"z": [')  # says 100 bytes, sends 8, hangs up
    assert raw(head + b"Content-Length: -1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"\x16\x03\x01\x02\x00" + bytes(range(256))).startswith(b"HTTP/1.1 400")  # a TLS hello
    raw(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n")  # an oversized header
    assert server.alive()


def test_keep_alive_answers_are_not_delayed(server):
    """Requests on one connection answer in milliseconds: without TCP_NODELAY on the server's sockets,
    Nagle's algorithm against delayed ACKs made each answer after the first wait ~40 ms."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            assert c.post("/api/decode", json={"z": [0.0] * 20}).status_code == 200
            times.append(time.perf_counter() - t0)
    assert sorted(times)[4] < 0.025, times


def test_concurrent_requests_all_succeed(server):
    def one(i):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/api/decode", json={"model": i % 2, "z": [i / 10] * 20}).status_code

    threads, codes = [], []
    for i in range(16):
        threads.append(threading.Thread(target=lambda i=i: codes.append(one(i))))
        threads[-1].start()
    for t in threads:
        t.join()
    assert codes == [200] * 16


# ------------------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)
FIELDS = ["model", "z", "pixels", "index", "n", "seed", "nrow", "steps", "spherical", "start", "end", "label"]
bodies = json_values | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(body=bodies)
def test_request_models_only_raise_validation_errors(body):
    from pydantic import ValidationError

    from vaekit.app.schema import DecodeRequest, EncodeRequest, InterpolateRequest, SampleRequest

    for cls in (DecodeRequest, EncodeRequest, SampleRequest, InterpolateRequest):
        try:
            cls.model_validate(body)
        except ValidationError:
            pass


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(path=st.sampled_from(POSTS), body=bodies)
def test_arbitrary_json_never_yields_a_5xx(server, path, body):
    r = httpx.post(
        server.url + path, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code in (200, 404, 422), (r.status_code, r.text[:300])


@pytest.mark.slow  # its servers are fixtures on real MNIST, requested by name: conftest cannot see them to mark it
@pytest.mark.parametrize("which", ["server", "cserver"])
def test_schemathesis_finds_no_server_errors(which, request, tmp_path):
    """Every operation, examples + coverage + fuzzing phases, 30 examples each (several hundred requests);
    on the two 20-D runs, and on the conditional 2-D VAE, the 2-D AE and the classifier (labels, backgrounds).

    positive_data_acceptance is left out: the schema cannot say that z has exactly the chosen model's
    latent_dim values (or pixels its image size, or a label below its num_classes), so a schema-valid z of
    another length is rightly a 422.
    """
    server = request.getfixturevalue(which)
    assert importlib.util.find_spec("schemathesis"), "schemathesis is missing: pip install -e '.[dev]'"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-shrink",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )
    assert p.returncode == 0, p.stdout[-4000:]
    assert "5xx" not in p.stdout.split("SUMMARY")[-1] and "Server error" not in p.stdout


# ------------------------------------------------------- labels (conditional runs) and the confidence map


@pytest.fixture(scope="module")
def cond_runs(tmp_path_factory, mnist_slice, mnist_train):
    """A conditional 2-D VAE and a 2-D AE (2 epochs on the 3000 digits of mnist_slice), and a reference
    classifier folder (1 epoch on the first 3000 MNIST training digits)."""
    from vaekit.classifier import ClassifierConfig, train_classifier

    cvae = _train(tmp_path_factory, "cvae2d", "--data", mnist_slice, "--conditional", "--latent-dim", 2)
    ae2d = _train(tmp_path_factory, "ae2d", "--data", mnist_slice, "--model", "ae", "--latent-dim", 2)
    clf = tmp_path_factory.mktemp("clf") / "classifier"
    train_classifier(ClassifierConfig(epochs=1, limit=3000), clf)
    return cvae, ae2d, clf


@pytest.fixture(scope="module")
def cserver(cond_runs):
    """`vaekit serve CVAE2D AE2D CLASSIFIER`, the classifier folder among the runs as `vaekit report` takes it."""
    yield from served(*cond_runs)


@pytest.fixture
def cclient(cserver):
    yield from client_of(cserver)


def pixels_of(data_url: str):
    import numpy as np

    return np.asarray(image(data_url), dtype=np.float64) / 255


def map_data(mnist_slice):
    """The map's examples of a run trained on mnist_slice (a file: its first 2000) and their labels."""
    import vaekit

    ds = vaekit.data.load(str(mnist_slice), "test")
    return ds.batch(slice(0, 2000)), ds.y[:2000]


def test_models_say_which_are_conditional_and_which_have_a_background(cclient):
    r = cclient.get("/api/models").json()
    assert r["classifier"] == "classifier"  # a name, never a path
    assert [(m["name"], m["num_classes"], m["confidence_map"]) for m in r["models"]] == [
        ("cvae2d", 10, True),
        ("ae2d", 0, True),
    ]


def test_a_label_conditions_decode_as_the_model_does(cclient, cond_runs):
    """Each label's image is the model's decoded mean under that label (to the PNG's 1/255); labels differ."""
    import numpy as np
    import torch

    import vaekit

    model = vaekit.load(cond_runs[0])
    z = [0.3, -0.5]
    got = []
    for k in range(10):
        r = cclient.post("/api/decode", json={"model": "cvae2d", "z": z, "label": k}).json()
        assert r["label"] == k
        got.append(pixels_of(r["image"]))
        want = model.decode(torch.tensor([z]), k).mean[0, 0].detach().double().numpy()
        assert np.abs(got[-1] - want).max() <= 0.5 / 255 + 1e-9
    assert min(np.abs(got[a] - got[b]).mean() for a in range(10) for b in range(a)) > 0.005


def test_a_label_conditions_sample_encode_and_interpolate(cclient, cond_runs, mnist_slice):
    import numpy as np
    import torch

    import vaekit

    model = vaekit.load(cond_runs[0])
    a, b = (cclient.post("/api/sample", json={"model": 0, "n": 9, "seed": 4, "label": k}).json() for k in (3, 8))
    assert a["label"] == 3 and b["label"] == 8 and a["image"] != b["image"]
    want = model.sample(9, torch.Generator().manual_seed(4), y=3)
    assert np.abs(pixels_of(a["image"])[2:30, 2:30] - want[0, 0].double().numpy()).max() <= 0.5 / 255 + 1e-9

    # a drawing: encoded with the chosen label, decoded under every label (one strip of 10)
    r = cclient.post("/api/encode", json={"model": 0, "pixels": stroke(), "label": 7}).json()
    x = torch.tensor(stroke(), dtype=torch.float32).view(1, 1, 28, 28)
    mu = model.encode(x, 7).mean[0].detach()
    assert r["label"] == 7 and np.allclose(r["mu"], mu.tolist(), atol=1e-4)
    strip = pixels_of(r["restyled"])
    assert strip.shape == (32, 10 * 30 + 2)
    rows = model.decode(mu.expand(10, 2), torch.arange(10)).mean[:, 0].detach().double().numpy()
    for k in range(10):
        assert np.abs(strip[2:30, 2 + 30 * k : 30 + 30 * k] - rows[k]).max() <= 0.5 / 255 + 1e-9
    other = cclient.post("/api/encode", json={"model": 0, "pixels": stroke(), "label": 2}).json()
    assert other["mu"] != r["mu"] and other["reconstruction"] != r["reconstruction"]

    # a test example: its own label by default, so its code is its dot on the map
    m = cclient.get("/api/latents", params={"model": 0}).json()
    r = cclient.post("/api/encode", json={"model": 0, "index": 5}).json()
    assert r["label"] == m["labels"][5]
    assert math.isclose(r["mu"][0], m["x"][5], abs_tol=1e-3) and math.isclose(r["mu"][1], m["y"][5], abs_tol=1e-3)
    x, y = map_data(mnist_slice)
    assert r["label"] == int(y[5])

    # interpolation: decoded under the label; test-digit ends at their dots
    body = {"model": 0, "start": {"index": 5}, "end": {"index": 9}, "steps": 4}
    s1, s2 = (cclient.post("/api/interpolate", json={**body, "label": k}).json() for k in (1, 6))
    assert s1["z"] == s2["z"] and s1["image"] != s2["image"] and s1["label"] == 1
    assert math.isclose(s1["z"][0][0], m["x"][5], abs_tol=1e-3)
    r = cclient.post("/api/interpolate", json={**body, "start": {"pixels": stroke()}, "label": 7}).json()
    assert np.allclose(r["z"][0], mu.tolist(), atol=1e-4)


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("/api/decode", {"model": "ae2d", "z": [0, 0], "label": 3}, "'ae2d' is not conditional: it takes no label"),
        ("/api/sample", {"model": 1, "label": 0}, "not conditional"),
        ("/api/encode", {"model": 1, "index": 0, "label": 0}, "not conditional"),
        ("/api/decode", {"model": 0, "z": [0, 0]}, "'cvae2d' is conditional (10 classes): give a label 0..9"),
        ("/api/sample", {"model": 0}, "give a label 0..9"),
        ("/api/encode", {"model": 0, "pixels": [0.0] * 784}, "give a label 0..9"),
        ("/api/interpolate", {"model": 0, "start": {"index": 0}, "end": {"index": 1}}, "give a label"),
        ("/api/decode", {"model": 0, "z": [0, 0], "label": 10}, "label must be in 0..9, got 10"),
        ("/api/sample", {"model": 0, "label": -1}, "greater than or equal to 0"),
        ("/api/sample", {"model": 0, "label": 2.5}, "label"),
        ("/api/sample", {"model": 0, "label": "3"}, "label"),
        ("/api/sample", {"model": 0, "label": True}, "label"),
        ("/api/sample", {"model": 0, "label": None}, "label"),
    ],
)
def test_bad_labels_are_422_naming_the_label(cclient, path, body, needle):
    r = cclient.post(path, json=body)
    assert r.status_code == 422, r.text
    d = r.json()["detail"]
    assert any(e["loc"][-1] == "label" or "label" in e["loc"] for e in d), d
    assert needle in detail(r), detail(r)


def test_bad_latents_labels_are_422(cclient):
    for params, needle in (
        ({"model": 1, "label": 2}, "not conditional"),
        ({"model": 0, "label": 10}, "label must be in 0..9"),
        ({"model": 0, "label": -1}, "greater than or equal to 0"),
    ):
        r = cclient.get("/api/latents", params=params)
        assert r.status_code == 422 and needle in detail(r), r.text
        assert r.json()["detail"][0]["loc"] == ["query", "label"]


def test_the_confidence_map_is_the_hole_map_of_the_maps_codes(cclient, cond_runs, mnist_slice):
    """The background is claims_latent.hole_map over the map's codes, with the report's settings (25 x 25
    over the 1st-99th percentile box); a conditional model's under the chosen label; transposed with the axes."""
    import numpy as np

    import vaekit
    from vaekit.claims_latent import fit_typicality, hole_map
    from vaekit.classifier import load_classifier
    from vaekit.evaluate import posterior_means

    clf = load_classifier(cond_runs[2])
    x, y = map_data(mnist_slice)
    typical = fit_typicality(clf, x, y, 0.99)
    for name, label in (("ae2d", None), ("cvae2d", 4)):
        model = vaekit.load(cond_runs[0] if name == "cvae2d" else cond_runs[1])
        params = {"model": name} | ({} if label is None else {"label": label})
        m = cclient.get("/api/latents", params=params).json()
        cm = m["confidence"]
        assert m["plane"] == "dims" and cm["label"] == label and cm["size"] == 25
        view = model if label is None else model.given(label)
        h = hole_map(view, clf, posterior_means(model, x, y=y if model.conditional else None), 25, typical=typical)
        assert np.allclose(cm["x"], h.xs, atol=1e-4) and np.allclose(cm["y"], h.ys, atol=1e-4)
        conf, hole = np.array(cm["confidence"]), np.array(cm["hole"])
        assert conf.shape == hole.shape == (25, 25) and np.allclose(conf, h.confidence, atol=2e-4)
        assert (hole == ((h.confidence < 0.5) | h.atypical)).all()
        assert math.isclose(cm["hole_fraction"], h.hole_fraction) and cm["threshold"] == 0.5
        # the codes sit inside the grid's box: the background lies under the scatter
        xs, ys = np.array(m["x"]), np.array(m["y"])
        inside = (xs >= h.xs[0]) & (xs <= h.xs[-1]) & (ys >= h.ys[-1]) & (ys <= h.ys[0])
        assert inside.mean() > 0.95
        t = cclient.get("/api/latents", params=params | {"plane": "dims", "x": 1, "y": 0}).json()["confidence"]
        assert np.array_equal(np.array(t["confidence"]), conf[::-1, ::-1].T)
        assert t["x"] == cm["y"][::-1] and t["y"] == cm["x"][::-1]
        assert cclient.get("/api/latents", params=params | {"plane": "pca"}).json()["confidence"] is None
    other = cclient.get("/api/latents", params={"model": 0, "label": 9}).json()["confidence"]
    assert other["label"] == 9 and other["confidence"] != cm["confidence"]
    default = cclient.get("/api/latents", params={"model": 0}).json()["confidence"]
    assert default["label"] == 0


def test_no_confidence_map_without_a_classifier(cond_runs, client):
    s = Server(cond_runs[1])
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert c.get("/api/models").json()["classifier"] is None
            assert c.get("/api/models").json()["models"][0]["confidence_map"] is False
            m = c.get("/api/latents").json()
            assert m["plane"] == "dims" and m["n"] == 2000 and m["confidence"] is None
    finally:
        s.stop()
    # and none for a 20-D model, whatever the plane
    assert client.get("/api/latents", params={"model": 0, "plane": "dims"}).json()["confidence"] is None


def test_serve_takes_one_classifier_folder_beside_runs(cond_runs):
    cvae, _, clf = cond_runs
    assert_clean_error(run_cli("serve", clf, "--port", "0", timeout=120), "no VAE or AE run among")
    assert_clean_error(run_cli("serve", cvae, clf, clf, "--port", "0", timeout=120), "one classifier folder at most")


# ------------------------------------------------------------------------------------------- the CLI


def test_serve_refuses_a_folder_that_is_not_a_run(tmp_path):
    assert_clean_error(run_cli("serve", tmp_path, "--port", "0", timeout=120), "not a model folder")


def test_serve_refuses_a_forged_weights_file(tmp_path, vae_run):
    bad = tmp_path / "forged"
    bad.mkdir()
    (bad / "config.json").write_text((vae_run / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x80\x04not safetensors, maybe a pickle")
    assert_clean_error(run_cli("serve", bad, "--port", "0", timeout=120), "safetensors")


def test_serve_refuses_a_port_in_use(vae_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert_clean_error(run_cli("serve", vae_run, "--port", port, timeout=120), "cannot listen")


def test_loopback_detection():
    from vaekit.app.guard import _hostname, is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.2", "example.com", "::", ""]))
    assert [_hostname(h) for h in ["a:80", "[::1]:80", "127.0.0.1", "[::1]"]] == ["a", "::1", "127.0.0.1", "::1"]
