"""Conditional models through the CLI (issue 16, the core): `vaekit train --conditional` (flag or config
file) records the classes it took from the data, `eval` reports -log p(x|y), `encode`/`score` use the data's
labels, bad labels are one-line errors with exit 2 and nothing left behind; marked slow: a conditional run
resumes bit-identically after a real SIGTERM, and two torchrun processes train a conditional AE to the
weights of one (each rank must take the labels of its own rows). The commands: `sample --label`, `restyle`,
.npy outputs, their bad labels and indices; and (slow, real MNIST) the report's conditional section.

Data: 300 synthetic 28x28 digits with labels 0-9 (conftest.synthetic_digits), a tiny MLP: seconds a run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error, run_cli, synthetic_digits
from PIL import Image
from safetensors.torch import load_file
from test_cli import cli
from test_train import assert_same_run, ckpt_meta, run_driver

import vaekit

SMALL = ["--hidden", 32, "--latent-dim", 4, "--batch-size", 50, "--threads", 1, "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """digits.npz (300 labelled synthetic digits), nolabel.npy (the same pixels), short.npz (299 labels for 300
    images), beyond.npz (test data with a label 12) and digits5.npz (labels 0-4 only)."""
    root = tmp_path_factory.mktemp("cond")
    ds = synthetic_digits(300)
    x, y = ds.x[:, 0].numpy(), ds.y.numpy()
    np.savez(root / "digits.npz", x=x, y=y)
    np.save(root / "nolabel.npy", x)
    np.savez(root / "short.npz", x=x, y=y[:-1])
    np.savez(root / "beyond.npz", x=x[:20], y=np.where(np.arange(20) == 7, 12, y[:20]))
    np.savez(root / "digits5.npz", x=x, y=y % 5)
    return root


@pytest.fixture(scope="module")
def crun(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cvae"
    p = cli("train", "--data", files / "digits.npz", "--conditional", "--epochs", 2, *SMALL, "--out", out)
    assert p.returncode == 0, p.stderr
    return out


def test_train_conditional_records_the_classes_and_eval_is_conditional(crun, files, tmp_path):
    cfg = json.loads((crun / "config.json").read_text())
    assert cfg["model"]["num_classes"] == 10 and cfg["train"]["conditional"] is True
    model = vaekit.load(crun)
    assert model.conditional and model.num_classes == 10
    p = cli("eval", crun, "--data", files / "digits.npz", "--iw-samples", 20, "--limit", 40, "--json")
    res = json.loads(p.stdout)
    assert p.returncode == 0 and res["conditional"] is True and res["nll"] > 0
    p = cli("eval", crun, "--data", files / "digits.npz", "--iw-samples", 20, "--limit", 40)
    assert "conditional on the labels" in p.stdout and "(-log p(x|y), importance-sampled, k=20)" in p.stdout
    # the labels are used (2 epochs teach the tiny model little about them: only that they change the number)
    shifted = tmp_path / "shifted.npz"
    d = np.load(files / "digits.npz")
    np.savez(shifted, x=d["x"], y=(d["y"] + 5) % 10)
    other = json.loads(cli("eval", crun, "--data", shifted, "--iw-samples", 20, "--limit", 40, "--json").stdout)
    assert other["nll"] != res["nll"]
    assert cli("encode", crun, "--data", files / "digits.npz", "-o", tmp_path / "z.npy").returncode == 0
    assert np.load(tmp_path / "z.npy").shape == (300, 4)
    p = cli("score", crun, "--data", files / "digits.npz", "--iw-samples", 5, "--limit", 30, "-o", tmp_path / "s.csv")
    assert p.returncode == 0, p.stderr


def test_an_unconditional_run_says_so(files, tmp_path):
    out = tmp_path / "vae"
    assert cli("train", "--data", files / "digits.npz", "--epochs", 1, *SMALL, "--out", out).returncode == 0
    assert json.loads((out / "config.json").read_text())["model"]["num_classes"] == 0
    p = cli("eval", out, "--data", files / "digits.npz", "--iw-samples", 5, "--limit", 20)
    assert "(-log p(x), importance-sampled" in p.stdout and "conditional on the labels" not in p.stdout
    res = json.loads(cli("eval", out, "--data", files / "digits.npz", "--iw-samples", 0, "--json").stdout)
    assert res["conditional"] is False


def test_conditional_from_a_config_file_and_a_conditional_autoencoder(files, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(f"data: {files / 'digits5.npz'}\nconditional: true\nmodel: ae\nepochs: 1\n")
    out = tmp_path / "cae"
    p = cli("train", "--config", f, *SMALL, "--out", out)
    assert p.returncode == 0, p.stderr
    model = vaekit.load(out)
    assert model.num_classes == 5 and not model.is_vae  # max(label) + 1 of the user's labels
    x = torch.rand(3, 1, 28, 28)
    assert model.sample(3, y=torch.tensor([0, 4, 2])).shape == (3, 1, 28, 28)
    assert model.reconstruct(x, torch.tensor([1, 1, 1])).shape == (3, 1, 28, 28)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--data", "{nolabel}", "--conditional"], ["--conditional needs labels, and", "nolabel.npy has none"]),
        (["--data", "{short}", "--conditional"], ["short.npz", "labels must have shape (300,)"]),
    ],
    ids=["npy-has-no-labels", "npz-labels-wrong-length"],
)
def test_conditional_training_refuses_bad_labels_leaving_nothing(files, tmp_path, args, needles):
    argv = [a.format(nolabel=files / "nolabel.npy", short=files / "short.npz") for a in args]
    out = tmp_path / "run"
    p = cli("train", *argv, "--epochs", 1, *SMALL, "--out", out)
    assert_clean_error(p, *needles)
    assert not out.exists()
    # in a config file, the error names the file; and --overwrite leaves the old run as it was
    f = tmp_path / "run.yaml"
    f.write_text("conditional: true\n")
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("x")
    p = cli("train", "--config", f, *argv[:2], "--epochs", 1, *SMALL, "--out", old, "--overwrite")
    assert_clean_error(p, needles[-1])
    assert [q.name for q in old.iterdir()] == ["keep.txt"]


def test_conditional_commands_refuse_data_without_labels_or_beyond_the_classes(crun, files, tmp_path):
    for cmd in (["eval", crun, "--iw-samples", 0], ["encode", crun, "-o", tmp_path / "z.npy"]):
        p = cli(*cmd, "--data", files / "nolabel.npy")
        assert_clean_error(p, f"--data {files / 'nolabel.npy'}", "conditional (10 classes)", "labels")
    p = cli("score", crun, "--data", files / "beyond.npz", "-o", tmp_path / "s.csv")
    assert_clean_error(p, "beyond.npz", "label 12 is outside the model's classes 0..9")
    assert not any(tmp_path.iterdir())


def test_conditional_cannot_change_on_resume(files, tmp_path):
    data = ["--data", files / "digits.npz"]
    out = tmp_path / "vae"
    assert cli("train", *data, "--epochs", 1, *SMALL, "--out", out).returncode == 0
    p = cli("train", *data, "--conditional", "--epochs", 2, *SMALL, "--out", out, "--resume")
    assert_clean_error(p, "--conditional cannot change on resume")
    out = tmp_path / "cvae"
    assert cli("train", *data, "--conditional", "--epochs", 1, *SMALL, "--out", out).returncode == 0
    assert cli("train", *data, "--conditional", "--epochs", 2, *SMALL, "--out", out, "--resume").returncode == 0
    assert cli("train", *data, "--epochs", 3, *SMALL, "--out", out, "--resume").returncode == 0  # not given: kept
    assert vaekit.load(out).num_classes == 10


@pytest.mark.slow  # a real process to signal (the reference and the resume run in this one)
def test_a_conditional_run_resumes_bit_identically_after_sigterm(files, tmp_path):
    """300 digits, 15 held out -> 285 -> 5 steps of 50 an epoch; checkpoints at steps 3, 5 (epoch end), 6:
    the SIGTERM sent after the 3rd stops it at step 7, mid-epoch 2."""
    flags = ["train", "--data", files / "digits.npz", "--conditional", "--epochs", 3, "--checkpoint-every", 3]
    flags += SMALL
    ref = tmp_path / "ref"
    assert cli(*flags, "--out", ref).returncode == 0
    out = tmp_path / "run"
    p = run_driver(*flags, "--out", out, env={"T_AFTER": 3})
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert (ckpt_meta(out)["epoch"], ckpt_meta(out)["step_in_epoch"]) == (1, 2)
    p = cli(*flags, "--out", out, "--resume")
    assert p.returncode == 0, p.stderr
    assert_same_run(ref, out)
    assert json.loads((out / "config.json").read_text())["model"]["num_classes"] == 10


@pytest.mark.slow
def test_a_conditional_autoencoder_trains_alike_on_one_process_and_two(files, tmp_path):
    """An AE has no sampling noise, so 2 torchrun processes match 1 up to summation order -- only if each
    rank pairs its rows with their own labels."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    flags = ["train", "--data", str(files / "digits.npz"), "--conditional", "--model", "ae", "--epochs", 2]
    flags += SMALL
    runs = {}
    for procs in (1, 2):
        launch = [sys.executable, "-m", "vaekit"]
        if procs == 2:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
            launch.append("vaekit")
        runs[procs] = tmp_path / str(procs)
        argv = [*launch, *map(str, flags), "--out", str(runs[procs])]
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
    a, b = load_file(str(runs[1] / "model.safetensors")), load_file(str(runs[2] / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.parametrize(
    "yaml,needles",
    [
        ("conditional: true\nnum_classes: 4\n", ["num_classes 4 does not match the 10 classes of --data"]),
        ("num_classes: 10\n", ["num_classes 10 applies only to a conditional model"]),
    ],
    ids=["classes-mismatch", "classes-without-conditional"],
)
def test_num_classes_in_a_config_file_must_agree_with_the_data(files, tmp_path, yaml, needles):
    f = tmp_path / "run.yaml"
    f.write_text(yaml)
    p = cli("train", "--config", f, "--data", files / "digits.npz", "--epochs", 1, *SMALL, "--out", tmp_path / "r")
    assert_clean_error(p, "run.yaml", *needles)
    assert not (tmp_path / "r").exists()
    f.write_text("conditional: true\nnum_classes: 10\n")  # the data's own count: fine
    p = cli("train", "--config", f, "--data", files / "digits.npz", "--epochs", 1, *SMALL, "--out", tmp_path / "r")
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------ sample --label, restyle, .npy (the commands)


def test_sample_with_a_label_or_a_row_per_label(crun, tmp_path):
    p = cli("sample", crun, "--label", 7, "-n", 6, "-o", tmp_path / "seven.npy", "--seed", 2)
    assert p.returncode == 0, p.stderr
    arr = np.load(tmp_path / "seven.npy")
    want = vaekit.load(crun).sample(6, torch.Generator().manual_seed(2), y=7)
    assert arr.dtype == np.float32 and arr.shape == (6, 1, 28, 28) and np.array_equal(arr, want.numpy())
    p = cli("sample", crun, "--label", 7, "-n", 6, "-o", tmp_path / "cold.npy", "--seed", 2, "--temperature", 0.5)
    cold = vaekit.load(crun).sample(6, torch.Generator().manual_seed(2), y=7, temperature=0.5)
    assert p.returncode == 0 and np.array_equal(np.load(tmp_path / "cold.npy"), cold.numpy())
    assert not np.array_equal(cold.numpy(), arr)
    p = cli("sample", crun, "--label", "all", "-n", 3, "-o", tmp_path / "all.npy")
    assert p.returncode == 0 and np.load(tmp_path / "all.npy").shape == (30, 1, 28, 28)
    p = cli("sample", crun, "-o", tmp_path / "grid.png")  # no label: one row of 10 per label, and it says so
    assert p.returncode == 0 and "one row per label (--label all)" in p.stderr
    assert Image.open(tmp_path / "grid.png").size == (2 * (10 * 30 + 2), 2 * (10 * 30 + 2))


def test_restyle_writes_one_row_per_index(crun, files, tmp_path):
    p = cli("restyle", crun, "--index", 0, 3, "--data", files / "digits.npz", "-o", tmp_path / "r.png")
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "r.png").size == (2 * (11 * 30 + 2), 2 * (2 * 30 + 2))  # the digit + 10 labels
    p = cli("restyle", crun, "--index", 4, "--data", files / "digits.npz", "-o", tmp_path / "r.npy")
    assert p.returncode == 0 and np.load(tmp_path / "r.npy").shape == (10, 1, 28, 28)


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["sample", "{crun}", "--label", "10"], ["--label 10 is outside this model's classes 0..9"]),
        (["sample", "{crun}", "--label", "x"], ["--label", "expected a label (an integer) or 'all', got 'x'"]),
        (["sample", "{crun}", "--label", "all", "-n", "1001"], ["-n 1001 per label x 10 labels is over 10000"]),
        (["sample", "{vae}", "--label", "3"], ["--label", "this model is not conditional"]),
        (["sample", "{crun}", "--temperature", "0"], ["--temperature", "expected a temperature in (0, 10], got '0'"]),
        (["sample", "{crun}", "--temperature", "nan"], ["--temperature", "expected a temperature in (0, 10]"]),
        (["restyle", "{vae}", "--index", "0"], ["restyle", "this model is not conditional"]),
        (["restyle", "{crun}", "--index", "300", "--data", "{digits}"], ["--index 300 is outside the data"]),
        (["restyle", "{crun}", "--index", "0", "--data", "{nolabel}"], ["nolabel.npy", "needs the examples' labels"]),
        (["restyle", "{crun}", "--index", "x"], ["--index", "invalid int value"]),
        (["restyle", "{crun}", "--index", "0", "-o", "{tmp}/r.txt"], ["cannot write images as '.txt'"]),
    ],
    ids=["label-10", "label-x", "too-many", "label-unconditional", "temperature-0", "temperature-nan",
         "restyle-unconditional", "index", "no-labels",
         "index-x", "txt"],
)  # fmt: skip
def test_bad_labels_and_indices_are_one_line_errors(crun, files, tmp_path, argv, needles):
    vae = tmp_path / "vae"
    if "{vae}" in argv:
        assert cli("train", "--data", files / "digits.npz", "--epochs", 1, *SMALL, "--out", vae).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    names = {"crun": crun, "vae": vae, "digits": files / "digits.npz", "nolabel": files / "nolabel.npy", "tmp": out}
    p = cli(*[a.format(**names) for a in argv], *([] if "-o" in argv else ["-o", out / "s.npy"]))
    assert_clean_error(p, *needles)
    assert not any(out.iterdir())


# ------------------------------------------------------------------ the report's section (real MNIST: slow)


@pytest.fixture(scope="module")
def mnist_cvae(tmp_path_factory, mnist_slice) -> Path:
    """vae_run's conditional twin: a 784-400-20 VAE, 2 epochs on the same 3000 MNIST digits, --conditional."""
    out = tmp_path_factory.mktemp("runs") / "cvae"
    flags = ["--epochs", 2, "--batch-size", 100, "--quiet", "--conditional"]
    run_cli("train", "--data", mnist_slice, *flags, "--out", out, check=True)
    return out


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory, mnist_train) -> Path:
    from vaekit.classifier import ClassifierConfig, train_classifier

    out = tmp_path_factory.mktemp("runs") / "classifier"
    train_classifier(ClassifierConfig(epochs=1, limit=5000), out)
    return out


def test_a_report_with_a_conditional_run_renders_its_section(mnist_cvae, vae_run, small_classifier, tmp_path):
    """A conditional run beside its unconditional twin and a classifier: sections 1-8 and the claims for the
    unconditional run, section 9 for the conditional one, every number finite; the label's information no
    more than its bound, the gap its two parts."""
    from test_report import parse

    from vaekit.report import QUICK, write_report

    path = write_report([mnist_cvae, vae_run, small_classifier], tmp_path / "report.html", settings=QUICK)
    r = parse(path)
    assert r.sections[-1] == 9 and 1 in r.sections and list(r.claims) == [f"C{i}" for i in range(1, 9)]
    assert all(math.isfinite(v) for v in r.metrics.values())
    m = {k.split(".", 2)[-1]: v for k, v in r.metrics.items() if k.startswith("cvae.cond.")}
    assert {f"sample_acc.{c}" for c in range(10)} <= set(m) and {"restyle_acc", "real_acc", "bayes_acc"} <= set(m)
    assert 0 <= m["sample_acc"] <= 100 and m["label_info"] <= m["info_bound"] + 1e-9
    assert m["gap"] == pytest.approx(m["label_info"] + m["better_model"], abs=1e-6)
    assert {"cvae_label_grid", "cvae_restyle", "cvae_label_grid_cool"} <= set(r.figures)
    t = {k: v for k, v in m.items() if k.startswith("temperature.")}
    assert {f"temperature.{x:g}.{f}" for x in (1, 0.8, 0.7, 0.6, 0.5) for f in ("sample_acc", "frechet")} <= set(t)
    assert t["temperature.1.sample_acc"] == m["sample_acc"]
    assert "vae.nll" in r.metrics and not any(k.startswith("cvae.") and ".cond." not in k for k in r.metrics)
    # alone (no unconditional run, no classifier): the section without the comparison, no claims table
    path = write_report([mnist_cvae], tmp_path / "alone.html", settings=QUICK)
    r = parse(path)
    assert r.sections == [9] and not r.claims and "cvae.cond.gap" not in r.metrics
    assert "cvae.cond.nll_given" in r.metrics and "No classifier among the runs" in path.read_text()
