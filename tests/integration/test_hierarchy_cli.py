"""`vaekit train --latent-dim 4,2` (stochastic layers, hierarchy.py) through the CLI on small synthetic data:
bad hierarchies in one line with nothing written; a tiny two-layer run (DReG) that eval, sample, encode,
interpolate, reconstruct, score, report and the explorer's API accept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli
from safetensors.torch import load_file

TINY = ("--hidden", 16, "--batch-size", 50, "--quiet", "--checkpoint-every", 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hier")
    g = np.random.default_rng(0)
    x = (g.random((300, 8, 8)) < 0.3).astype(np.float32)
    np.save(root / "few.npy", x)
    np.savez(root / "labelled.npz", x=x, y=g.integers(0, 3, 300))
    return root


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--latent-dim", "100,0"), "--latent-dim must be a positive integer, got 0"),
        (("--latent-dim", "100,,50"), "expected a size like 20, or stochastic layers' sizes"),
        (("--latent-dim", "abc"), "got 'abc'"),
        (("--latent-dim", "4,2", "--arch", "conv"), "the hierarchy's networks are MLPs"),
        (("--latent-dim", "4,2", "--model", "ae"), "an autoencoder has one code layer"),
        (("--latent-dim", "4,2", "--conditional"), "a hierarchy is unconditional"),
    ],
)
def test_bad_hierarchies_are_one_line_errors_and_write_nothing(data, flags, needle):
    out = data / "bad"
    p = run_cli("train", "--data", data / "labelled.npz", "--epochs", 1, *TINY, "--out", out, *flags)
    assert_clean_error(p, needle)
    assert not out.exists()


@pytest.fixture(scope="module")
def run(data):
    """One epoch of a 4,2 hierarchy trained on IWAE(k=3) with DReG."""
    out = data / "run"
    p = run_cli(
        "train", "--data", data / "few.npy", *TINY, "--latent-dim", "4,2", "--epochs", 1, "--iw-k", 3,
        "--estimator", "dreg", "--out", out,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return out


def test_every_command_takes_a_hierarchy(data, run, tmp_path):
    assert json.loads((run / "config.json").read_text())["model"]["latent_dim"] == [4, 2]
    assert load_file(run / "model.safetensors")["up.0.net.0.weight"].shape == (16 // 2, 4)
    p = run_cli("eval", run, "--iw-samples", 20, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert np.isfinite(r["nll"]) and len(r["kl_per_dim"]) == 6 and r["nll"] <= -r["elbo"] + 5
    assert len(r["active_units_per_layer"]) == 2 and sum(r["active_units_per_layer"]) == r["active_units"]
    p = run_cli("eval", run, "--iw-samples", 5)
    assert p.returncode == 0 and "of 4,2, per layer" in p.stdout, p.stderr
    few = data / "few.npy"
    for args in (
        ("sample", run, "-n", 8, "-o", tmp_path / "s.png", "--temperature", 0.5),
        ("encode", run, "--data", few, "-o", tmp_path / "codes.npy"),
        ("interpolate", run, "--from", 0, "--to", 1, "-o", tmp_path / "i.png"),
        ("reconstruct", run, "-o", tmp_path / "r.png"),
        ("score", run, "--data", few, "-o", tmp_path / "scores.csv"),
    ):
        p = run_cli(*args)
        assert p.returncode == 0, (args[0], p.stderr)
    assert np.load(tmp_path / "codes.npy").shape == (300, 6)  # every layer's posterior mean, [z1, z2]


def test_the_report_takes_a_hierarchy(run, tmp_path):
    from vaekit.report import QUICK, write_report  # `vaekit report` at the quick settings (2 s, not 14)

    assert "D=6)" in write_report([run], tmp_path / "report.html", settings=QUICK).read_text()


def test_the_explorer_shows_the_top_layer(run):
    from fastapi.testclient import TestClient

    from vaekit.app.entries import load_entries
    from vaekit.app.server import create_app

    c = TestClient(create_app(load_entries([run])), base_url="http://127.0.0.1")
    m = c.get("/api/models").json()["models"][0]
    assert m["latent_dim"] == 2 and m["latent_sizes"] == [4, 2]
    assert c.post("/api/decode", json={"model": 0, "z": [0.0, 0.5]}).status_code == 200
    r = c.post("/api/decode", json={"model": 0, "z": [0.0] * 6})
    assert r.status_code == 422 and "the top layer z2 of 4,2" in r.text
    enc = c.post("/api/encode", json={"model": 0, "index": 3}).json()
    assert len(enc["mu"]) == len(enc["sigma"]) == 2 and enc["elbo"] is not None
    path = c.post("/api/interpolate", json={"model": 0, "start": {"index": 0}, "end": {"z": [1, 1]}, "steps": 4})
    assert path.status_code == 200 and len(path.json()["z"]) == 4
    lat = c.get("/api/latents?model=0&n=50&plane=dims&x=0&y=1").json()
    assert lat["axes"] == ["z2 dim 1", "z2 dim 2"] and len(lat["x"]) == 50
