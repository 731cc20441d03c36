"""`vaekit train --prior vamp|mog` through the CLI on small synthetic data: bad input in one line with nothing
written, a 1-epoch VampPrior run that eval (with importance sampling), sample, encode, interpolate and score
accept, and a resume that ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli
from safetensors.torch import load_file

TINY = ("--hidden", 16, "--latent-dim", 3, "--batch-size", 50, "--quiet", "--checkpoint-every", 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    g = np.random.default_rng(0)
    np.save(root / "small.npy", (g.random((3000, 8, 8)) < 0.3).astype(np.float32))  # 3000 images
    np.save(root / "few.npy", (g.random((200, 8, 8)) < 0.3).astype(np.float32))
    return root


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--prior", "vamp", "--model", "ae"), "--prior vamp applies to a VAE only"),
        (("--prior", "vamp", "--prior-components", 0), "--prior-components must be a positive integer"),
        (("--prior", "vamp", "--prior-components", 100000), "more pseudo-inputs than the 2850 training examples"),
        (("--prior", "bogus"), "--prior: 'bogus' is not one of standard, vamp, mog"),
        (("--prior-components", 10), "applies only to --prior vamp or mog"),
        (("--prior", "mog", "--free-bits", 0.5), "--free-bits needs a KL per latent dimension"),
    ],
)
def test_bad_prior_flags_are_one_line_errors_and_write_nothing(data, flags, needle):
    out = data / "bad"
    p = run_cli("train", "--data", data / "small.npy", "--epochs", 1, *TINY, "--out", out, *flags)
    assert_clean_error(p, needle)
    assert not out.exists()


@pytest.fixture(scope="module")
def vamp_run(data):
    """One epoch of a VampPrior with 50 pseudo-inputs on 200 synthetic images."""
    run = data / "vamp"
    common = ("--data", data / "few.npy", *TINY, "--prior", "vamp", "--prior-components", 50)
    p = run_cli("train", *common, "--epochs", 1, "--out", run)
    assert p.returncode == 0, p.stderr
    return run, common


def test_a_vamp_run_trains_and_every_command_takes_it(data, vamp_run, tmp_path):
    run, few = vamp_run[0], data / "few.npy"
    assert json.loads((run / "config.json").read_text())["model"]["prior"] == "vamp"
    assert load_file(run / "model.safetensors")["prior.logits"].shape == (50, 1, 8, 8)
    p = run_cli("eval", run, "--iw-samples", 20, "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["nll"] is not None and np.isfinite(r["nll"]) and r["kl_per_dim"] is None and r["nll"] <= -r["elbo"] + 5
    for args in (
        ("sample", run, "-n", 8, "-o", tmp_path / "s.png", "--temperature", 0.5),
        ("encode", run, "--data", few, "-o", tmp_path / "codes.npy"),
        ("interpolate", run, "--from", 0, "--to", 1, "-o", tmp_path / "i.png"),
        ("score", run, "--data", few, "-o", tmp_path / "scores.csv"),
    ):
        p = run_cli(*args)
        assert p.returncode == 0, (args[0], p.stderr)
    assert np.load(tmp_path / "codes.npy").shape == (200, 3)


def test_a_vamp_run_resumes_bit_identically(vamp_run, tmp_path):
    """The 1-epoch run resumed to 2 epochs ends with the same bytes as 2 epochs at once (pseudo-inputs too)."""
    run, common = vamp_run
    shutil.copytree(run, tmp_path / "b")
    p = run_cli("train", "--epochs", 2, "--resume", "--quiet", "--out", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert run_cli("train", *common, "--epochs", 2, "--out", tmp_path / "a").returncode == 0
    a, b = (load_file(tmp_path / r / "model.safetensors") for r in ("a", "b"))
    assert a.keys() == b.keys() and "prior.logits" in a
    assert all((a[k] == b[k]).all() for k in a)
