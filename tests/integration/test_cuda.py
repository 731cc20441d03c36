"""What a GPU user hits: training with --device cuda, loading the run on the CPU, exact resume, bf16 autocast,
evaluation, the explorer and sampling from a CUDA-trained run, CPU generators feeding CUDA models, batches
copied to the device (non_blocking, from pageable memory: the loop has no DataLoader and pins nothing).

Every test runs once per device: the `cuda` variant carries the `cuda` marker (skipped without a CUDA device,
the reason shown by -ra; `benchmarks/gpu_check.sh` runs them with `pytest -m cuda`), the `cpu` variant runs the
same logic here, so a GPU machine meets no import, fixture or path error. Data is synthetic and tiny (228
training digits, 4 steps an epoch, a 784-32-4 VAE): the cpu variants take a second or so each.
"""

from __future__ import annotations

import base64
import io
import json
import signal

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_cli, synthetic_digits
from PIL import Image
from safetensors.torch import load_file

import vaekit
import vaekit.checkpoint
from vaekit.config import ModelConfig, cpu_has_bf16
from vaekit.distributed import shard_batch
from vaekit.distributions import NormalPrior, StandardNormal
from vaekit.evaluate import evaluate, log_likelihood
from vaekit.io import read_metrics

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
TIMING = ("seconds", "epoch_seconds")
# 240 digits, 5% held out -> 228 -> 4 steps of 50 an epoch
TINY = ["--hidden", 32, "--latent-dim", 4, "--batch-size", 50, "--threads", 1, "--quiet"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """240 synthetic digits with labels as an .npz (x uint8 (N, 28, 28), y)."""
    ds = synthetic_digits(240)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=ds.x[:, 0].numpy(), y=ds.y.numpy())
    return path


def train(npz, out, device: str, *flags, epochs: int = 2) -> list[dict]:
    """`vaekit train` of the tiny VAE on `device`; its metrics rows."""
    run_cli("train", "--data", npz, "--device", device, "--epochs", epochs, "--out", out, *TINY, *flags, check=True)
    return read_metrics(out)


@pytest.fixture(scope="module", params=DEVICES)
def run(request, npz, tmp_path_factory):
    """(device, a run folder trained 2 epochs on it)."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(npz, out, request.param)
    return request.param, out


def test_a_run_trained_on_the_device_loads_on_the_cpu_with_the_same_outputs(run):
    device, out = run
    rows = read_metrics(out)
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_elbo"]) for r in rows)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]  # it learned something
    assert json.loads((out / "config.json").read_text())["train"]["device"] == device
    on_dev, on_cpu = vaekit.load(out, device), vaekit.load(out)  # io.load's default device is the CPU
    assert next(on_dev.parameters()).device.type == device and next(on_cpu.parameters()).device.type == "cpu"
    saved = load_file(str(out / "model.safetensors"))
    for k, v in on_dev.state_dict().items():
        assert torch.equal(v.cpu(), saved[k]), k  # the weights file holds exactly the trained weights
    x = synthetic_digits(64, seed=1).batch(slice(None))  # (64, 1, 28, 28) in [0, 1]
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q_dev, q_cpu = on_dev.encode(x.to(device)), on_cpu.encode(x)
        torch.testing.assert_close(q_dev.mean.cpu(), q_cpu.mean, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(q_dev.logvar.cpu(), q_cpu.logvar, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(on_dev.decode(z.to(device)).mean.cpu(), on_cpu.decode(z).mean, rtol=1e-3, atol=1e-3)


def same_run(a, b) -> None:
    """Bit-identical weights and checkpoints, the same checkpoint state and metrics (timings aside)."""
    for name in ("model.safetensors", "checkpoint/state.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k} differs"
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert drop(read_metrics(a)) == drop(read_metrics(b))


@pytest.mark.parametrize("device", DEVICES)
def test_resume_after_sigterm_is_bit_identical_on_the_same_device(device, npz, tmp_path, monkeypatch):
    """Interrupted by SIGTERM right after its first mid-epoch checkpoint (step 2 of 4), resumed: the same
    weights, optimizer state, RNG states and metrics as a run never interrupted."""
    every = ["--checkpoint-every", 2]
    train(npz, tmp_path / "whole", device, *every)
    original, saves = vaekit.checkpoint.save, []

    def save_then_sigterm(*args, **kwargs):
        original(*args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            signal.raise_signal(signal.SIGTERM)  # the loop's handler turns it into a flag: stop after this step

    monkeypatch.setattr(vaekit.checkpoint, "save", save_then_sigterm)
    args = ["train", "--data", npz, "--device", device, "--epochs", 2, "--out", tmp_path / "cut", *TINY, *every]
    p = run_cli(*args)
    assert p.returncode == 128 + signal.SIGTERM and "--resume" in p.stderr, p.stderr
    monkeypatch.setattr(vaekit.checkpoint, "save", original)
    run_cli(*args, "--resume", check=True)
    same_run(tmp_path / "whole", tmp_path / "cut")
    rngs = load_file(str(tmp_path / "cut" / "checkpoint" / "state.safetensors"))
    assert ("rng.cuda" in rngs) == (device == "cuda")  # the device's own noise stream is saved and restored


@pytest.mark.parametrize("device", DEVICES)
def test_the_training_noise_is_not_reset_by_validation(device, npz, tmp_path):
    """Validation draws its noise from a fixed seed and must hand the training noise back untouched: the
    device's RNG state at the end of each epoch (after validation) differs from epoch to epoch."""
    gen_state = torch.cuda.get_rng_state if device == "cuda" else torch.get_rng_state
    states = []

    def on_epoch(model, epoch):
        states.append(gen_state().clone())

    from vaekit.config import RunConfig, TrainConfig
    from vaekit.train import train as train_run

    cfg = RunConfig(
        ModelConfig(hidden=(32,), latent_dim=4),
        TrainConfig(data=str(npz), epochs=3, batch_size=50, device=device, threads=1, quiet=True),
    )
    train_run(cfg, tmp_path / "run", on_epoch=on_epoch)
    assert len(states) == 4
    assert not torch.equal(states[2], states[3]), "the training noise restarts from the same state every epoch"


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_training_is_within_one_percent_of_fp32(device, npz, tmp_path):
    if device == "cpu" and not cpu_has_bf16():  # --amp is refused there, in one line, with nothing written
        p = run_cli("train", "--data", npz, "--device", "cpu", "--out", tmp_path / "bf16", *TINY, "--amp")
        assert_clean_error(p, "--amp on CPU needs native bf16")
        assert not (tmp_path / "bf16").exists()
        return
    fp32, bf16 = train(npz, tmp_path / "fp32", device), train(npz, tmp_path / "bf16", device, "--amp")
    for key in ("train_loss", "val_elbo"):
        a, b = fp32[-1][key], bf16[-1][key]
        assert abs(b - a) <= 0.01 * abs(a), (key, a, b)
    assert all(v.dtype == torch.float32 for v in load_file(str(tmp_path / "bf16" / "model.safetensors")).values())


def test_evaluation_on_the_device_equals_the_cpu(run):
    """Same test set (binarized on the CPU with a fixed seed), same model: the analytic KL and the posterior
    means agree to float rounding; the importance-sampled log p(x) draws its noise on the device, so the two
    estimates differ by Monte Carlo error only: their mean difference is within 5 standard errors of 0."""
    device, out = run
    ds = synthetic_digits(100, seed=2)
    kw = {"binarize": "dynamic", "iw_samples": 32, "batch_size": 50, "per_example": True}
    on_dev = evaluate(vaekit.load(out, device), ds, device=device, **kw)
    on_cpu = evaluate(vaekit.load(out), ds, device="cpu", **kw)
    a, b = on_dev["per_example"], on_cpu["per_example"]
    torch.testing.assert_close(a["kl"], b["kl"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(a["mu"], b["mu"], rtol=1e-3, atol=1e-3)
    d = a["nll"].double() - b["nll"].double()  # (100,) nats
    assert abs(d.mean()) <= 5 * d.std() / len(d) ** 0.5 + 1e-3, (d.mean(), d.std())
    if device == "cpu":
        assert torch.equal(a["nll"], b["nll"])  # same device, same seed: the same numbers
    p = run_cli("eval", out, "--device", device, "--iw-samples", 8, "--limit", 50, "--json", check=True)
    assert np.isfinite(json.loads(p.stdout)["nll"])


@pytest.mark.cuda
def test_compiled_log_weights_on_the_device_match_the_eager_ones():
    """evaluate's compiled log-weights (what `vaekit eval` uses above COMPILE_MIN_WORK) on the device: the
    same generator state gives the same noise, so the estimate equals the eager one to float rounding."""
    torch.manual_seed(0)
    model = vaekit.build_model(ModelConfig(hidden=(32,), latent_dim=4)).to("cuda").eval()
    x = synthetic_digits(20).batch(slice(None), "cuda")
    g = lambda: torch.Generator(device="cuda").manual_seed(3)  # noqa: E731
    eager = log_likelihood(model, x, k=50, generator=g(), compile=False)
    compiled = log_likelihood(model, x, k=50, generator=g(), compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)


@pytest.mark.cuda
def test_compiled_bf16_training_on_the_device_is_within_one_percent_of_eager_fp32(npz, tmp_path):
    """--compile --amp on CUDA (inductor's Triton kernels): the fastest setting trains to the same loss."""
    eager = train(npz, tmp_path / "eager", "cuda")
    best = train(npz, tmp_path / "best", "cuda", "--compile", "--amp")
    a, b = eager[-1]["train_loss"], best[-1]["train_loss"]
    assert abs(b - a) <= 0.01 * abs(a), (a, b)


def png_pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))), dtype=np.float32) / 255


def test_the_explorer_and_sample_serve_a_run_trained_on_the_device(run, tmp_path):
    """`vaekit serve` and `vaekit sample` load a run on the CPU whatever device trained it: the decoded
    image the explorer sends is the CPU model's decoded mean, to the PNG's 8 bits."""
    from fastapi.testclient import TestClient

    from vaekit.app.server import create_app, load_entries

    device, out = run
    client = TestClient(create_app(load_entries([out])), base_url="http://127.0.0.1")
    assert client.get("/api/models").json()["models"][0]["latent_dim"] == 4
    z = [0.5, -1.0, 0.25, 2.0]
    r = client.post("/api/decode", json={"model": 0, "z": z})
    assert r.status_code == 200, r.text
    with torch.no_grad():
        expected = vaekit.load(out).decode(torch.tensor([z])).mean[0, 0].numpy()  # (28, 28)
    assert np.abs(png_pixels(r.json()["image"]) - expected).max() <= 1 / 255 + 1e-6
    for path, body in (("/api/sample", {"model": 0, "n": 4}), ("/api/encode", {"model": 0, "index": 0})):
        r = client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
    run_cli("sample", out, "-n", 6, "-o", tmp_path / "s.npy", check=True)
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (6, 1, 28, 28) and np.isfinite(s).all()


@pytest.mark.parametrize("device", DEVICES)
def test_a_conditional_run_trains_on_the_device_and_samples_a_label(device, npz, tmp_path):
    """The labels travel to the device with their batch (one-hot made there); sampling a label works on CPU."""
    rows = train(npz, tmp_path / "c", device, "--conditional", epochs=1)
    assert np.isfinite(rows[-1]["train_loss"])
    model = vaekit.load(tmp_path / "c", device)
    assert model.conditional and model.sample(3, torch.Generator().manual_seed(0), y=7).device.type == device
    run_cli("sample", tmp_path / "c", "-n", 2, "--label", 7, "-o", tmp_path / "s.npy", check=True)
    assert np.load(tmp_path / "s.npy").shape == (2, 1, 28, 28)


@pytest.mark.parametrize("device", DEVICES)
def test_a_cpu_generator_feeds_a_model_on_the_device(device):
    """Seeded sampling is drawn on the CPU and moved: the same draws on every device (the explorer's and
    `vaekit sample`'s seeds mean the same images on a GPU machine)."""
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    z = StandardNormal(4).sample(6, g(), device=device, temperature=0.5)
    assert z.device.type == device and torch.equal(z.cpu(), 0.5 * torch.randn(6, 4, generator=g()))
    mu, logvar = torch.arange(4.0), torch.full((4,), 2 * np.log(3.0))
    prior = NormalPrior(mu.to(device), logvar.to(device))
    z = prior.sample(6, g(), device=device)
    torch.testing.assert_close(z.cpu(), mu + 3 * torch.randn(6, 4, generator=g()), rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    model = vaekit.build_model(ModelConfig(hidden=(32,), latent_dim=4)).eval()
    on_cpu = model.sample(5, g())
    on_dev = model.to(device).sample(5, g())
    assert on_dev.device.type == device
    torch.testing.assert_close(on_dev.cpu(), on_cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_batches_reach_the_device_intact(device):
    """Dataset.batch and shard_batch copy with non_blocking=True from pageable CPU memory: the device sees
    exactly the CPU's batch, the dynamic binarization drawn on the CPU from the shared generator."""
    ds = synthetic_digits(300)
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:128]
    for _ in range(3):  # back to back, as the loop issues them
        assert torch.equal(ds.batch(idx, device).cpu(), ds.batch(idx))
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    on_dev = shard_batch(ds, idx, 0, 1, g(), torch.device(device))
    assert on_dev.device.type == device and torch.equal(on_dev.cpu(), shard_batch(ds, idx, 0, 1, g(), "cpu"))
