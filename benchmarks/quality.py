"""Test NLL reached within a fixed CPU training budget, with a preset config, and its trajectory.

    python benchmarks/quality.py [--config configs/mnist-best.yaml] [--budget-minutes 60] [--k 5000]
                                 [--time-budget 60m] [--trajectory 15,30,45] [--trajectory-k 1000]
                                 [--set KEY=VALUE ...] [--select] [--out runs/bench-quality]

Trains `vaekit train --config CONFIG` into runs/bench-quality (replaced if it exists) on dynamically
binarized MNIST (all 60k training digits), stops it with SIGTERM if it is still running when the budget
runs out (the run keeps the weights of its last finished epoch), then reports the importance-sampled
test NLL with k=5000 over the full 10k test set (`vaekit eval --iw-samples 5000`). Evaluation time is
not part of the budget. A preset with `time_budget` (configs/mnist-best.yaml), or --time-budget, is trained
with vaekit's own time budget instead (the preset's epochs dropped, the cosine spanning the budget, the run
ending itself; no SIGTERM).

--trajectory M1,M2,...: the run's weights are copied when its training clock (metrics.jsonl "seconds")
first passes each mark, and each copy is evaluated after training with --trajectory-k samples over the
same split (the model at that point of the run's own schedule, not a shorter run's end).

--set KEY=VALUE overrides a key of the preset (YAML values: --set prior=standard, --set iw_k=1), for
ablations. --select is the validation protocol: the run holds out the last 10k training digits
(val_fraction 1/6; vaekit keeps the best validation epoch's weights) and is scored on that validation
split (`vaekit eval --split val`), never on the test set: how a preset is chosen.

Published references (dynamically binarized MNIST): one stochastic layer, VAE 86.76 and IWAE(k=50) 84.78
nats (Burda et al. 2015, 3280 epochs on a GPU), pythae's IWAE 86.82; two stochastic layers, IWAE(k=50)
82.90 (Burda et al.), VampPrior HVAE 83.19 (Tomczak & Welling 2018).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, append_results, mnist_dir, run_json_lines, vaekit_cmd

from vaekit.io import read_metrics

VAL_FRACTION = 1 / 6  # --select: 10k of the 60k training digits held out


def _shown(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _preset(config: Path, budget: str | None, sets: list[str], select: bool) -> tuple[Path, dict]:
    """A copy of the preset with the --set overrides (and, with a budget, its epochs dropped and
    `time_budget: budget`; with select, `val_fraction`), as a temporary YAML file, and its options."""
    opts = yaml.safe_load(config.read_text())
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        opts[key.strip().replace("-", "_")] = yaml.safe_load(value)
    if budget is not None:
        opts = {k: v for k, v in opts.items() if k.replace("-", "_") != "epochs"} | {"time_budget": budget}
    if select:
        opts["val_fraction"] = VAL_FRACTION
    path = Path(tempfile.mkdtemp(prefix="vaekit-quality-")) / config.name
    path.write_text(yaml.safe_dump(opts))
    return path, opts


class Trajectory:
    """Copies of a training run's weights as its clock passes each mark (minutes of training)."""

    def __init__(self, out: Path, marks: list[float]):
        self.out, self.marks, self.copies = out, sorted(marks), []  # copies: (mark, epoch, seconds, folder)
        self.seen = 0  # metrics lines read so far

    def poll(self) -> None:
        """Read new metrics rows; for a row whose clock passes the next mark, wait for its weights (written
        right after the row) and copy them, with config.json, into OUT-at-<mark>m."""
        try:
            rows = read_metrics(self.out)
        except Exception:  # not written yet
            return
        for row in rows[self.seen :]:
            while self.marks and row["seconds"] >= self.marks[0] * 60:  # a long epoch may pass several marks
                self._copy(self.marks.pop(0), row, time.time())
        self.seen = len(rows)

    def _copy(self, mark: float, row: dict, seen_at: float) -> None:
        weights = self.out / "model.safetensors"
        deadline = time.time() + 5
        while time.time() < deadline and (not weights.exists() or weights.stat().st_mtime < seen_at - 0.5):
            time.sleep(0.05)
        time.sleep(0.2)  # the atomic rename is done; the next epoch's weights are seconds away
        dest = self.out.with_name(f"{self.out.name}-at-{mark:g}m")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "metrics.jsonl"):
            shutil.copy2(self.out / name, dest / name)
        self.copies.append((mark, row["epoch"], row["seconds"], dest))


def train(cmd: list, env: dict, budget_minutes: float | None, traj: Trajectory) -> tuple[float, bool]:
    """Run the training command, polling the trajectory; SIGTERM it at budget_minutes (if given)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        stopped = False
        while proc.poll() is None:
            traj.poll()
            if budget_minutes is not None and time.perf_counter() - t0 > budget_minutes * 60:
                stopped = True
                proc.send_signal(signal.SIGTERM)  # checkpoint and exit; the weights of the last finished epoch
                proc.wait()
            time.sleep(0.25)
        traj.poll()
        if proc.returncode != 0 and not stopped:
            err.seek(0)
            raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{err.read()[-2000:]}")
    return (time.perf_counter() - t0) / 60, stopped


def evaluate(run: Path, k: int, split: str) -> dict:
    return run_json_lines(vaekit_cmd("eval", run, "--iw-samples", k, "--split", split, "--json"))[0]


def _settings(cfg: dict) -> str:
    m, t = cfg["model"], cfg["train"]
    dims = m["latent_dim"] if isinstance(m["latent_dim"], list) else [m["latent_dim"]]
    prior = "" if m.get("prior", "standard") == "standard" else f", {m['prior']} prior ({m['prior_components']})"
    est = t.get("estimator", "standard")
    return (
        f"{m['model']} {m['arch']} {'-'.join(map(str, [784, *m['hidden']]))}, z {','.join(map(str, dims))} "
        f"{m['activation']}{prior}, iw_k {t['iw_k']}{' dreg' if est == 'dreg' else ''}, batch {t['batch_size']}, "
        f"lr {t['lr']} {t['schedule']}{', bf16' if t['amp'] else ''}{', compiled' if t['compile'] else ''}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist-best.yaml")
    ap.add_argument("--budget-minutes", type=float, default=60.0)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quality")
    ap.add_argument("--time-budget", help="vaekit train --time-budget (e.g. 60m) instead of epochs and SIGTERM")
    ap.add_argument("--trajectory", default="", help="minutes of training at which to copy and score the weights")
    ap.add_argument("--trajectory-k", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key")
    ap.add_argument("--select", action="store_true", help="hold out 10k training digits and score on them")
    args = ap.parse_args()
    mnist_dir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    config, opts = _preset(args.config, args.time_budget, args.set, args.select)
    budgeted = opts.get("time_budget") is not None  # the run ends itself (a preset's own time_budget, or --time-budget)
    cmd = vaekit_cmd("train", "--config", config, "--out", args.out, "--overwrite", "--quiet")
    traj = Trajectory(args.out, [float(m) for m in args.trajectory.split(",") if m.strip()])
    minutes, stopped = train(cmd, env, None if budgeted else args.budget_minutes, traj)
    metrics = read_metrics(args.out)
    cfg = json.loads((args.out / "config.json").read_text())
    split = "val" if args.select else "test"
    print(f"trained {len(metrics)} epochs in {minutes:.1f} min; evaluating on {split} with k={args.k}...", flush=True)
    res = evaluate(args.out, args.k, split)
    points = [
        (mark, epoch, secs, evaluate(folder, args.trajectory_k, split)) for mark, epoch, secs, folder in traj.copies
    ]
    report(args, cfg, metrics, minutes, stopped, res, points, split)


def report(args, cfg, metrics, minutes, stopped, res, points, split) -> None:
    t = cfg["train"]
    dims = cfg["model"]["latent_dim"]
    total = sum(dims) if isinstance(dims, list) else dims
    what = "validation (10k held-out training digits)" if split == "val" else "test"
    rows = "".join(
        f"| at {mark:g} min (epoch {epoch}, {secs / 60:.1f} min of training) | {r['nll']:.2f} (k={args.trajectory_k}) "
        f"| {-r['elbo']:.2f} | {r['active_units']} |\n"
        for mark, epoch, secs, r in points
    )
    body = (
        f"Settings: {_settings(cfg)}{'; overrides ' + ', '.join(args.set) if args.set else ''}.\n\n"
        f"| point | {what} NLL (nats) | {what} -ELBO | active units (of {total}) |\n|---|---|---|---|\n{rows}"
        f"| end: {len(metrics)} epochs"
        f"{'/' + str(t['epochs']) if not t.get('time_budget') else ', time budget ' + t['time_budget']}"
        f"{' (stopped by the budget)' if stopped else ''}, {minutes:.1f} min | **{res['nll']:.2f}** (k={args.k}) | "
        f"{-res['elbo']:.2f} | {res['active_units']} |\n\n"
        f"Evaluation of the final model: {res['seconds']:.0f} s. Published (dynamically binarized MNIST): one "
        "stochastic layer VAE 86.76, IWAE(k=50) 84.78 (Burda et al. 2015, 3280 epochs on a GPU); two layers "
        "IWAE(k=50) 82.90 (Burda et al.), VampPrior HVAE 83.19 (Tomczak & Welling 2018).\n"
    )
    flags = f" --set {' --set '.join(args.set)}" if args.set else ""
    if args.time_budget:
        flags += f" --time-budget {args.time_budget}"
    elif not t.get("time_budget"):  # a budgeted preset ends itself: --budget-minutes played no part
        flags += f" --budget-minutes {args.budget_minutes:g}"
    flags += f" --trajectory {args.trajectory}" if args.trajectory else ""
    flags += " --select" if args.select else ""
    title = (
        "Quality: choosing the preset on a validation split"
        if args.select
        else "Quality: test NLL within a CPU training budget"
    )
    append_results(title, f"python benchmarks/quality.py --config {_shown(args.config)}{flags}", body)


if __name__ == "__main__":
    main()
