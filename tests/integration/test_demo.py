"""`vaekit demo --quick` end to end: every section and every number of the report, the figures, and reuse of
finished runs on a second call. Plus the demo's refusal to touch a run that is not its own."""

from __future__ import annotations

import base64
import io
import math
import time

import pytest
from conftest import run_cli
from PIL import Image
from test_report import parse

FIGURES = [
    "training_curves",
    "reconstructions",
    "latent_scatter",
    "samples",
    "interpolation_1",
    "interpolation_2",
    "manifold",
    "shift",
]
RUNS = ["ae", "vae", "ae2d", "vae2d", "classifier"]
# Every number the issue asks for, by the name the report gives it.
REQUIRED = (
    [f"{m}.{k}" for m in ("vae", "vae2d") for k in ("elbo", "recon", "kl", "nll", "active_units")]
    + ["ae.recon", "eval.n", "eval.k", "classifier.test_accuracy"]
    + [f"{m}.recon_mse" for m in ("ae", "vae", "vae2d")]
    + [f"{m}.gen_{k}" for m in ("ae", "vae", "real") for k in ("confidence", "coverage", "frechet")]
    + [
        f"{m}.interp_{p}.{k}"
        for m in ("ae", "vae")
        for p in ("linear", "spherical")
        for k in ("mean_change", "max_change", "mean_confidence", "min_confidence")
    ]
    + ["vae.interp_linear.pair0.frame0", "ae.interp_spherical.pair1.frame7", "vae2d.manifold_inside"]
    + [f"shift.{k}.{v}" for k in ("orig", "shift1", "shift2", "shift3", "other") for v in ("mse", "logp", "confidence")]
    + [
        "reparam.reparam.norm",
        "reparam.detached.norm",
        "reparam.score.norm",
        "reparam.reparam.rel_std",
        "reparam.score.rel_std",
        "reparam.kl_norm",
    ]
)


@pytest.mark.slow
def test_quick_demo_writes_full_report(quick_demo):
    out, p, seconds = quick_demo
    report = out / "report.html"
    assert p.stdout.strip().splitlines()[-1] == str(report)
    assert "NLL" in p.stdout and "ELBO" in p.stdout  # the headline numbers
    assert seconds < 120, f"--quick took {seconds:.0f} s"
    for name in RUNS:
        assert (out / name / "model.safetensors").is_file() and (out / name / "config.json").is_file()
    for name in ("ae2d", "vae2d"):  # the codes after every epoch, for the report's animation
        assert sorted(p.name for p in (out / name / "snapshots").iterdir()) == ["epoch_000.npy", "epoch_001.npy"]
    r = parse(report)
    assert r.sections == [1, 2, 3, 4, 5, 6, 7]
    missing = [k for k in REQUIRED if k not in r.metrics]
    assert not missing, missing
    bad = {k: v for k, v in r.metrics.items() if not math.isfinite(v)}
    assert not bad, bad
    assert r.metrics["reparam.detached.norm"] == 0.0 and r.metrics["reparam.reparam.norm"] > 0
    assert r.metrics["vae.nll"] <= -r.metrics["vae.elbo"] + 1e-6
    assert 0 < r.metrics["vae.gen_coverage"] <= 1 and 0 < r.metrics["vae.gen_confidence"] <= 1
    # every figure is inlined as a PNG and also written to figures/
    assert sorted(r.figures) == sorted(FIGURES)
    for src in r.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    for name in FIGURES:
        with Image.open(out / "figures" / f"{name}.png") as im:
            assert im.width > 100 and im.height > 50


@pytest.mark.slow
def test_quick_demo_rerun_reuses_finished_runs(quick_demo):
    out, first, first_seconds = quick_demo
    stamps = {n: (out / n / "model.safetensors").stat().st_mtime_ns for n in RUNS}
    t = time.perf_counter()
    p = run_cli("demo", "--quick", "--out", out, timeout=300)
    seconds = time.perf_counter() - t
    assert p.returncode == 0, p.stderr
    for n in RUNS:
        assert f"{n}: reused" in p.stderr, p.stderr
        assert (out / n / "model.safetensors").stat().st_mtime_ns == stamps[n]
    assert seconds < first_seconds
    assert parse(out / "report.html").sections == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.slow
def test_unfinished_run_is_resumed_not_replaced(quick_demo, tmp_path):
    """A run with fewer epochs than the demo wants (an interrupted one, or a --quick one under the full
    demo) continues from its checkpoint: its first epoch is kept."""
    import shutil
    from dataclasses import replace

    from vaekit.demo import ensure_run, plan

    out, _, _ = quick_demo
    folder = tmp_path / "vae"
    shutil.copytree(out / "vae", folder)
    before = (folder / "metrics.jsonl").read_text().splitlines()
    cfg = plan(quick=True)["vae"]
    what = ensure_run(folder, replace(cfg, train=replace(cfg.train, epochs=2)))
    assert what.startswith("resumed")
    after = (folder / "metrics.jsonl").read_text().splitlines()
    assert len(after) == 2 and after[0] == before[0]


def test_demo_refuses_a_folder_holding_another_run(tmp_path):
    from vaekit.config import ModelConfig, RunConfig

    out = tmp_path / "demo"
    (out / "ae").mkdir(parents=True)
    (out / "ae" / "config.json").write_text(RunConfig(ModelConfig(model="ae", latent_dim=7)).to_json())
    p = run_cli("demo", "--quick", "--out", out)
    assert p.returncode == 2 and "different configuration" in p.stderr and "latent_dim" in p.stderr, p.stderr
    assert not (out / "ae" / "model.safetensors").exists()


def test_demo_refuses_a_folder_that_is_not_a_run(tmp_path):
    out = tmp_path / "demo"
    (out / "vae").mkdir(parents=True)
    (out / "vae" / "notes.txt").write_text("mine")
    (out / "ae").mkdir()
    (out / "ae" / "config.json").write_text("{not json")
    p = run_cli("demo", "--quick", "--out", out)
    assert p.returncode == 2 and "not a demo run" in p.stderr, p.stderr
    assert (out / "vae" / "notes.txt").read_text() == "mine"
