"""`vaekit demo`: train what the report needs on MNIST, then write the report.

    run_demo(Path("runs/demo"))   ->  runs/demo/{ae,vae,ae2d,vae2d,classifier}/, runs/demo/report.html

Each model is trained by `vaekit.train.train` (the code path of `vaekit train`). Runs already in
`out` are reused when finished (all epochs in metrics.jsonl and model.safetensors present), resumed
from their checkpoint when not, and never replaced silently: a folder holding a different
configuration is refused with a message.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from vaekit import checkpoint as ckpt
from vaekit import io
from vaekit.classifier import RESUMABLE as CLASSIFIER_RESUMABLE
from vaekit.classifier import ClassifierConfig, train_classifier
from vaekit.classifier import load_config as load_classifier_config
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.errors import VaekitError
from vaekit.report import QUICK, ReportSettings, build_report, save_report
from vaekit.report_claims import claims_json, holds_word
from vaekit.train import train

# Epochs sized so the full demo ends well inside 10 minutes on a 2-core CPU (timings: README, benchmarks/).
FULL_EPOCHS = {"ae": 20, "vae": 30, "ae2d": 15, "vae2d": 15, "classifier": 5}
QUICK_EPOCHS = {"ae": 1, "vae": 1, "ae2d": 1, "vae2d": 1, "classifier": 1}
SNAPSHOT_N = 2000  # test digits whose codes the 2-D runs save after every epoch (the report's animation)


def plan(quick: bool) -> dict[str, RunConfig | ClassifierConfig]:
    """The runs the demo trains, by folder name."""
    e = QUICK_EPOCHS if quick else FULL_EPOCHS
    train = TrainConfig(data="mnist", binarize="dynamic", batch_size=128, lr=1e-3, seed=0)
    return {
        "ae": RunConfig(ModelConfig(model="ae", latent_dim=20), replace(train, epochs=e["ae"])),
        "vae": RunConfig(ModelConfig(model="vae", latent_dim=20), replace(train, epochs=e["vae"])),
        "ae2d": RunConfig(ModelConfig(model="ae", latent_dim=2), replace(train, epochs=e["ae2d"])),
        "vae2d": RunConfig(ModelConfig(model="vae", latent_dim=2), replace(train, epochs=e["vae2d"])),
        "classifier": ClassifierConfig(data="mnist", epochs=e["classifier"], seed=0),
    }


def free_cores(samples: int = 5, interval: float = 0.04) -> int | None:
    """Cores not busy with other work right now: the CPU count minus the runnable threads of other
    processes (/proc/loadavg's R, ourselves excluded, averaged over 0.2 s). None if unknown."""
    try:
        busy = 0
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                busy += int(f.read().split()[3].split("/")[0]) - 1
            time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return None
    return max(0, (os.cpu_count() or 1) - round(busy / samples))


def pick_threads(default: int) -> int:
    """Torch threads for the next step: `default`, lowered to the cores that are free right now.
    On a small shared machine this matters a lot: two threads contending with another job for one
    core run several times slower than one thread alone (every matmul waits for the descheduled one)."""
    free = free_cores()
    return default if free is None else max(1, min(default, free))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _differences(saved, wanted, ignore) -> list[str]:
    return [
        f"{f.name} {getattr(saved, f.name)!r} (wanted {getattr(wanted, f.name)!r})"
        for f in fields(saved)
        if f.name not in ignore and getattr(saved, f.name) != getattr(wanted, f.name)
    ]


def _saved_config(folder: Path, classifier: bool):
    try:
        return load_classifier_config(folder) if classifier else RunConfig.from_json_file(folder / io.CONFIG)
    except VaekitError as e:
        raise VaekitError(f"{folder}: exists but is not a demo run ({e}); move it away or use another --out") from None


def _snapshots(cfg: RunConfig | ClassifierConfig, folder: Path):
    """For a 2-D model, the callback saving its codes of the first SNAPSHOT_N test digits after every epoch."""
    if isinstance(cfg, ClassifierConfig) or cfg.model.latent_dim != 2:
        return None
    from vaekit.data import load as load_data
    from vaekit.snapshots import LatentSnapshots

    ds = load_data(cfg.train.data, "test")
    return LatentSnapshots(folder, ds.batch(slice(0, SNAPSHOT_N)))


def ensure_run(folder: Path, cfg: RunConfig | ClassifierConfig, threads: int = 0) -> str:
    """Make `folder` a finished run of `cfg`: reuse, resume or train. Returns what was done.
    A 2-D model saves its test codes after every epoch (snapshots.py) for the report's animation."""
    classifier = isinstance(cfg, ClassifierConfig)
    epochs = cfg.epochs if classifier else cfg.train.epochs
    fresh = not folder.exists() or not any(folder.iterdir())
    overwrite = False
    if not fresh:
        saved = _saved_config(folder, classifier)
        if classifier:
            diff = _differences(saved, cfg, {*CLASSIFIER_RESUMABLE, "input_shape"})
        else:
            diff = _differences(saved.model, cfg.model, {"input_shape"}) + _differences(
                saved.train,
                cfg.train,
                ckpt.RESUMABLE,  # a run differing only in these is ours
            )
        if diff:
            raise VaekitError(
                f"{folder}: holds a run with a different configuration ({'; '.join(diff[:3])}); "
                f"move it away or use another --out"
            )
        done = len(io.read_metrics(folder))
        if done >= epochs and (folder / io.WEIGHTS).is_file():
            return f"reused ({done} epochs)"
        if not ckpt.exists(folder):
            _say(f"{folder}: stopped before its first checkpoint; starting it again")
            overwrite = True
    resume = not fresh and not overwrite
    what = (
        f"resuming from epoch {len(io.read_metrics(folder))} to {epochs}"
        if resume
        else f"training {epochs} epoch{'s' if epochs > 1 else ''}"
    )
    _say(f"{folder.name}: {what}" + (f" ({threads} thread{'s' if threads > 1 else ''})" if threads else ""))
    t = time.perf_counter()
    if threads:
        import torch

        torch.set_num_threads(threads)
        cfg = cfg if classifier else replace(cfg, train=replace(cfg.train, threads=threads))
    if classifier:
        train_classifier(cfg, folder, resume=resume, overwrite=overwrite, quiet=False)
    else:
        train(cfg, folder, resume=resume, overwrite=overwrite, on_epoch=_snapshots(cfg, folder))
    return f"{'resumed' if resume else 'trained'} in {time.perf_counter() - t:.0f} s"


def run_demo(out: Path, quick: bool = False) -> Path:
    """Train (or reuse) the AE, the VAE, the 2-D AE and VAE and the classifier in `out`, write out/report.html,
    print the headline numbers, and return the report's path."""
    out = Path(out)
    t0 = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    import torch

    default_threads = torch.get_num_threads()
    runs = []
    for name, cfg in plan(quick).items():
        what = ensure_run(out / name, cfg, pick_threads(default_threads))
        _say(f"{name}: {what}")
        runs.append(out / name)
    settings: ReportSettings = QUICK if quick else ReportSettings()
    torch.set_num_threads(pick_threads(default_threads))
    _say(f"report: evaluating (NLL with k={settings.iw_k} on {settings.n_eval} test digits) and drawing figures")
    report = build_report(runs, out / "figures", settings, test_data="mnist")
    path = save_report(report, out / "report.html")
    m = report.metrics
    summary = {"settings": asdict(settings), "metrics": m, "claims": claims_json(report.claims)}
    io.atomic_write_text(out / "report.json", json.dumps(summary, indent=1) + "\n")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s (report {report.seconds:.0f} s)")
    print(f"test set, first {settings.n_eval} digits; NLL by importance sampling, k={settings.iw_k}; nats per digit:")
    for name in ("ae", "vae", "vae2d"):
        if name == "ae":
            print(f"  ae     reconstruction log-lik {m['ae.recon']:8.2f}   (no ELBO/NLL: an AE has no density)")
        else:
            print(
                f"  {name:<6} ELBO {m[f'{name}.elbo']:8.2f}   NLL {m[f'{name}.nll']:7.2f}   "
                f"active units {int(m[f'{name}.active_units'])}"
            )
    if "vae.gen_frechet" in m:
        print(
            f"  generated digits, Frechet distance on classifier features: AE {m['ae.gen_frechet']:.2f}, "
            f"VAE {m['vae.gen_frechet']:.2f} (real vs real {m['real.gen_frechet']:.2f}); "
            f"classifier test accuracy {m['classifier.test_accuracy']:.4f}"
        )
    print("  claims (holds): " + ", ".join(f"{r.id} {holds_word(r.holds)}" for r in report.claims))
    return path
