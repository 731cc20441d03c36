"""Out-of-distribution detection with vaekit.anomaly: every score, eight in/out pairs, a calibrated threshold.

    python benchmarks/ood.py [--epochs 10] [--iw-samples 100] [--fpr 0.05] [--limit N] [--out runs/ood] [--retrain]

Trains the lecture's VAE (784-400-20 MLP, ReLU, Bernoulli likelihood, dynamic binarization, Adam 1e-3,
batch 128, 10 epochs, 5% of the training set held out for validation) on MNIST-train and on
Fashion-MNIST-train with `vaekit.fit`, into ordinary run folders OUT/mnist and OUT/fashion-mnist; a run
already there is reused when its config.json is the one this script would write (--retrain trains anyway).

Each model's in-distribution set is its own test split; its out-of-distribution sets, all offline:
the other dataset's test split; uniform noise (pixels drawn from U[0, 1], seed 1, as many as the test
split); its own test split upside down (rows reversed: a vertical flip, not a rotation); scikit-learn's
`load_digits` (1797 8x8 digits, grey levels 0..16), scaled to 0..255 and resized to 28x28 with PIL
(bilinear), so a digit fills the frame. One setting for every pair; nothing is tuned per pair.

Scores, all from a `vaekit.anomaly.Detector` fit on the model's validation split at --fpr (its
threshold.json is saved in the run folder; higher = more anomalous): `score` (the recommended one, -log of
the smaller calibrated tail p-value of -ELBO - L and the orientation), its two components `likelihood`
(-ELBO - L, L the context-model complexity of the binarized image, nats) and `orientation` (nats),
`neg_elbo`, `nll` (importance-sampled -log p(x), k = --iw-samples), `complexity` (L alone, a reference),
`zlib` (-ELBO - the zlib complexity: the score shipped before) and `ratio` (-ELBO under this model minus
-ELBO under the other dataset's model, a likelihood ratio with that model as background). For each pair and
score: AUROC, AUPRC (OOD = positive) and the FPR at 95% TPR. The threshold table gives the FPR the Detector
actually has on the in-distribution test split and its TPR on each OOD set. For the upside-down pairs, the
AUROC of the flip-aware likelihood ratio (what a detector that knows the transformation reaches: a floor
under the best achievable) and the score's AUROC per label. The cost of each score is timed on the
in-distribution test split and given per 10k images. --limit N caps the training set and every scored set at
N examples (a quick check, not a result). The section is appended to benchmarks/RESULTS.md (or --results);
the figures also go to OUT/ood.json.

The defaults took 9.4 minutes on the shared 2-core dev machine with training (7 of them training, slowed by
other jobs; about 40 s a model when it is quiet), and 26 minutes reusing the two models on a machine shared by
3-4 engineers (the scores of 8 pairs with -log p(x) at k=100, the calibration, the cost timings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import common
import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import vaekit
from vaekit import anomaly, seeds
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.data import Dataset, split_validation
from vaekit.evaluate import eval_batches, evaluate

NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
SCORES = {
    "score": "score (recommended)",
    "likelihood": "-ELBO - L",
    "orientation": "orientation",
    "neg_elbo": "-ELBO",
    "nll": "-log p(x)",
    "complexity": "L alone",
    "zlib": "-ELBO - L(zlib) (before)",
    "ratio": "-ELBO ratio vs other model",
}
NOISE_SEED = 1
TARGET_BOTH, TARGET_ALL = 0.98, 0.95


# ------------------------------------------------------------------------------------------ metrics


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
    """The false-positive rate at the highest threshold that flags at least `tpr` of the OOD examples:
    t = the ceil(tpr * n_out)-th largest OOD score, FPR = the fraction of in-distribution scores >= t
    (higher score = more anomalous; ties count as flagged, as sklearn's roc_curve does)."""
    out_sorted = np.sort(np.asarray(out_scores, dtype=np.float64))[::-1]
    t = out_sorted[max(math.ceil(tpr * len(out_sorted)) - 1, 0)]
    return float(np.mean(np.asarray(in_scores, dtype=np.float64) >= t))


def separation(in_scores, out_scores) -> dict[str, float]:
    """AUROC, AUPRC (OOD = the positive class) and FPR at 95% TPR of telling `out_scores` from `in_scores`."""
    s_in, s_out = np.asarray(in_scores, dtype=np.float64), np.asarray(out_scores, dtype=np.float64)
    y, s = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "fpr95": fpr_at_tpr(s_in, s_out),
    }


# --------------------------------------------------------------------------------------- the models


def run_config(name: str, args) -> RunConfig:
    model = ModelConfig(
        model="vae", arch="mlp", input_shape=(1, 28, 28), latent_dim=20, hidden=(400,), likelihood="bernoulli"
    )
    train = TrainConfig(
        data=name, binarize="dynamic", val_fraction=0.05, epochs=args.epochs, batch_size=128, lr=1e-3,
        seed=args.seed, quiet=True,
    )  # fmt: skip
    return RunConfig(model, train)


def training_data(name: str, rc: RunConfig, limit: int | None) -> tuple[Dataset, Dataset]:
    """(train, validation): `name`-train (its first `limit` examples) split as `vaekit train` splits it."""
    ds = vaekit.data.load(name, "train")
    if limit:
        ds = ds.subset(torch.arange(min(limit, len(ds))))
    return split_validation(ds, rc.train.val_fraction, seeds.weights(rc.train.seed))


def trained(name: str, args) -> tuple[torch.nn.Module, Dataset, dict]:
    """The model of `name` in its run folder (trained now unless a run with the same config is there), its
    validation split, and what the training took."""
    rc, folder = run_config(name, args), args.runs / name
    train_ds, val_ds = training_data(name, rc, args.limit)
    cfg_file = folder / "config.json"
    same = cfg_file.exists() and (folder / "model.safetensors").exists()
    same = same and RunConfig.from_json_file(cfg_file).to_json() == rc.to_json()
    info = {"folder": str(folder), "train_examples": len(train_ds), "val_examples": len(val_ds)}
    if same and not args.retrain:
        print(f"{NAMES[name]}: reusing {folder} (same config)", flush=True)
        return vaekit.load(folder).eval(), val_ds, {**info, "reused": True}
    torch.manual_seed(seeds.weights(rc.train.seed))  # as `vaekit train` does
    model = vaekit.build_model(rc.model)
    t0 = time.perf_counter()
    run = vaekit.fit(model, train_ds, rc.train, folder, val=val_ds, overwrite=True, run_config=rc)
    seconds = time.perf_counter() - t0
    best = max(m["val_elbo"] for m in run.metrics)
    print(f"{NAMES[name]}: trained {len(run.metrics)} epochs in {seconds:.0f} s, best val ELBO {best:.2f}", flush=True)
    return vaekit.load(folder).eval(), val_ds, {**info, "reused": False, "seconds": seconds, "val_elbo": best}


# ------------------------------------------------------------------------------------- the data sets


def capped(ds: Dataset, limit: int | None) -> Dataset:
    return ds if not limit or len(ds) <= limit else ds.subset(torch.arange(limit))


def sklearn_digits() -> Dataset:
    """scikit-learn's 1797 8x8 digits (0..16), scaled to 0..255 and resized to 28x28 (PIL bilinear)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    u8 = np.round(d.images * (255 / 16)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in u8])
    return Dataset(torch.from_numpy(big)[:, None].contiguous(), torch.from_numpy(d.target), "sklearn-digits")


def test_sets(name: str, limit: int | None) -> tuple[Dataset, dict[str, Dataset]]:
    """`name`-test and its OOD sets {label: Dataset}, each capped at `limit` examples."""
    other = "fashion-mnist" if name == "mnist" else "mnist"
    ds_in = capped(vaekit.data.load(name, "test"), limit)
    g = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.rand((len(ds_in), 1, 28, 28), generator=g).mul_(255).round_().to(torch.uint8)
    ood = {
        f"{NAMES[other]}-test": capped(vaekit.data.load(other, "test"), limit),
        f"uniform noise (seed {NOISE_SEED})": Dataset(noise, None, "noise"),
        f"upside-down {NAMES[name]}-test": Dataset(ds_in.x.flip(-2).contiguous(), ds_in.y, f"{name}-upside-down"),
        "scikit-learn digits, 28x28": capped(sklearn_digits(), limit),
    }
    return ds_in, ood


# ---------------------------------------------------------------------------------------- the scores


def zlib_length(ds: Dataset, binarize: str) -> torch.Tensor:
    """L by zlib (anomaly.complexity) of the images as scored: the complexity term of the score shipped before."""
    return torch.cat([anomaly.complexity(x) for x in eval_batches(ds, 100, binarize, 0)])


def scores(det, background, ds: Dataset, k: int) -> dict[str, np.ndarray]:
    """Every score of `ds`, (N,) float64 each (nats, the recommended one -log tail p against `det`'s
    calibration); `ratio` uses `background`'s -ELBO of the same images."""
    t = det.table(ds, iw_samples=k)
    t["likelihood"] = anomaly.components(t)[anomaly.LIKELIHOOD]
    t["zlib"] = t["neg_elbo"] - zlib_length(ds, det.binarize)
    t["ratio"] = t["neg_elbo"] - anomaly.score_table(background, ds)["neg_elbo"]
    return {key: t[key].numpy() for key in SCORES}


def costs(det, background, ds: Dataset, k: int, rounds: int = 2) -> dict[str, float]:
    """Seconds per 10k images of computing each score of `ds` on its own (the fastest of `rounds` timed calls:
    the machine is shared); the recommended score with the detector already calibrated."""
    model, binarize = det.model, det.binarize
    batches = list(eval_batches(ds, 100, binarize, 0))

    def timed(f) -> float:
        best = math.inf
        for _ in range(rounds):
            t0 = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t0)
        return best * 10_000 / len(ds)

    def elbo(m):
        return evaluate(m, ds, binarize=binarize, iw_samples=0, batch_size=100, per_example=True)

    def orient():
        with torch.inference_mode():
            return [anomaly.orientation(model, x) for x in batches]

    return {
        "complexity": timed(lambda: [anomaly.context_complexity(x) for x in batches]),
        "orientation": timed(orient),
        "neg_elbo": timed(lambda: elbo(model)),
        "likelihood": timed(lambda: (elbo(model), [anomaly.context_complexity(x) for x in batches])),
        "zlib": timed(lambda: (elbo(model), [anomaly.complexity(x) for x in batches])),
        "score": timed(lambda: det.table(ds)),
        "nll": timed(lambda: evaluate(model, ds, binarize=binarize, iw_samples=k, batch_size=100, per_example=True)),
        "ratio": timed(lambda: (elbo(model), elbo(background))),
    }


def study(name: str, models: dict, vals: dict, args) -> dict:
    """The separation of every OOD set of `name`'s model by every score, its calibrated Detector, costs."""
    model, background = models[name], models["fashion-mnist" if name == "mnist" else "mnist"]
    ds_in, ood = test_sets(name, args.limit)
    t0 = time.perf_counter()
    det = anomaly.Detector(model).fit(vals[name], fpr=args.fpr, source=f"{name} validation split")
    det.save(args.runs / name)
    s_in = scores(det, background, ds_in, args.iw_samples)
    flag_in = det.flag(torch.from_numpy(s_in["score"]))
    res = {
        "n_in": len(ds_in),
        "threshold": det.threshold.value,
        "n_calibration": det.threshold.n,
        "fpr_in_test": float(flag_in.double().mean()),
        "pairs": {},
    }
    for label, ds in ood.items():
        s_out = scores(det, background, ds, args.iw_samples)
        tpr = float(det.flag(torch.from_numpy(s_out["score"])).double().mean())
        sep = {key: separation(s_in[key], s_out[key]) for key in SCORES}
        res["pairs"][label] = {"n": len(ds), "tpr": tpr, "scores": sep}
        if label.startswith("upside-down"):
            res["pairs"][label].update(flip_ceiling(s_in, s_out, ds_in.y))
        print(f"  {NAMES[name]} vs {label}: AUROC of the score {sep['score']['auroc']:.4f}", flush=True)
    res["scoring_seconds"] = time.perf_counter() - t0
    res["cost_per_10k"] = costs(det, background, ds_in, args.iw_samples)
    return res


def flip_ceiling(s_in: dict, s_out: dict, labels: torch.Tensor) -> dict:
    """How far the upside-down pair can be told apart at all. The most powerful test of x against its flip
    F(x) is the likelihood ratio p(F x) / p(x) (Neyman-Pearson); with the model's -log p(x) as the density (the
    OOD set is the in-distribution set flipped, example for example), its AUROC is achieved by a detector
    that knows the transformation, so the best achievable AUROC is at least this. Also the recommended
    score's AUROC per label of the flipped images (against all inliers), to show where the near-symmetric
    ones (0, 1, 8) fall."""
    lr_in, lr_out = s_in["nll"] - s_out["nll"], s_out["nll"] - s_in["nll"]
    y = labels.numpy()
    per_label = {int(c): separation(s_in["score"], s_out["score"][y == c])["auroc"] for c in np.unique(y)}
    return {"flip_lr_auroc": separation(lr_in, lr_out)["auroc"], "score_auroc_per_label": per_label}


# ---------------------------------------------------------------------------------------- the report


def tables(results: dict, args) -> list[str]:
    k = args.iw_samples
    head = " | ".join(SCORES[s] + (f", k={k}" if s == "nll" else "") for s in SCORES)
    out = []
    for metric, what in (
        ("auroc", "AUROC (higher is better)"),
        ("auprc", "AUPRC, OOD = positive (higher is better)"),
        ("fpr95", "FPR at 95% TPR (lower is better)"),
    ):
        out += [f"{what}:", "", f"| in-distribution (test) | OOD set (n) | {head} |"]
        out.append("|---|---|" + "---|" * len(SCORES))
        for name, r in results.items():
            for label, p in r["pairs"].items():
                cells = " | ".join(f"{p['scores'][s][metric]:.4f}" for s in SCORES)
                out.append(f"| {NAMES[name]} (n={r['n_in']}) | {label} ({p['n']}) | {cells} |")
        out.append("")
    out += [
        f"A `Detector` fit on each model's validation split at FPR {args.fpr} (threshold.json in the run folder):",
        "",
        "| model | threshold (-log p) | calibrated on | FPR on its test split | OOD set | TPR |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        first = f"| {NAMES[name]} | {r['threshold']:.2f} | {r['n_calibration']} validation images"
        first += f" | {r['fpr_in_test']:.4f}"
        for i, (label, p) in enumerate(r["pairs"].items()):
            out.append(f"{first if i == 0 else '| | | |'} | {label} | {p['tpr']:.4f} |")
    out += ["", *ceiling_lines(results, k)]
    out += [
        "",
        "Cost per 10k images (seconds, each score computed on its own over the model's test split, the"
        " faster of two runs; the likelihood ratio is two ELBO passes; the recommended score with its"
        " calibration done, so -ELBO, L and the orientation of each image):",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(SCORES),
    ]
    for name, r in results.items():
        out.append(f"| {NAMES[name]} | " + " | ".join(f"{r['cost_per_10k'][s]:.1f}" for s in SCORES) + " |")
    return out


def ceiling_lines(results: dict, k: int) -> list[str]:
    """The upside-down pairs: the AUROC a detector that knows the flip reaches, and the score's per label."""
    out = []
    for name, r in results.items():
        for label, p in r["pairs"].items():
            if "flip_lr_auroc" not in p:
                continue
            per = ", ".join(f"{c}: {a:.3f}" for c, a in p["score_auroc_per_label"].items())
            out.append(
                f"- {NAMES[name]} vs {label}: the likelihood ratio p(flip x) / p(x) (-log p(x), k={k}; the most "
                f"powerful test when the flip is known, so the best achievable AUROC is at least this) reaches "
                f"{p['flip_lr_auroc']:.4f}; the recommended score per label of the flipped images: {per}."
            )
    return out


def targets(results: dict) -> list[str]:
    auroc = {(n, lab): p["scores"]["score"]["auroc"] for n, r in results.items() for lab, p in r["pairs"].items()}
    main = {key: a for key, a in auroc.items() if key[1] in ("MNIST-test", "Fashion-MNIST-test")}
    missed = {key: a for key, a in auroc.items() if a < TARGET_ALL}

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    both = ", ".join(f"{NAMES[n]} vs {lab}: {a:.4f}" for (n, lab), a in main.items())
    worst = min(auroc.items(), key=lambda kv: kv[1])
    under = "; below: " + ", ".join(f"{NAMES[n]} vs {lab} {a:.4f}" for (n, lab), a in missed.items()) if missed else ""
    return [
        "| target (recommended score, one setting for all pairs) | measured | |",
        "|---|---|---|",
        f"| AUROC >= {TARGET_BOTH} on MNIST vs Fashion-MNIST, both directions | {both} "
        f"| {verdict(all(a >= TARGET_BOTH for a in main.values()))} |",
        f"| AUROC >= {TARGET_ALL} on every pair | lowest {worst[1]:.4f} ({NAMES[worst[0][0]]} vs {worst[0][1]})"
        f"{under} | {verdict(not missed)} |",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10, help="training epochs per model (default 10)")
    ap.add_argument("--iw-samples", type=int, default=100, help="importance samples for -log p(x) (default 100)")
    ap.add_argument("--fpr", type=float, default=0.05, help="the Detector's false-positive rate (default 0.05)")
    ap.add_argument("--limit", type=int, default=None, help="cap the training set and every scored set at N")
    ap.add_argument("--out", type=Path, default=Path("runs/ood"), help="the two run folders go here (default runs/ood)")
    ap.add_argument("--retrain", action="store_true", help="train even when a run with the same config exists")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=common.RESULTS, help="the Markdown file the section is appended to")
    args = ap.parse_args(argv)
    for flag in ("epochs", "iw_samples", "limit"):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be a positive integer, got {v}")
    if not 0 < args.fpr < 1:
        ap.error(f"--fpr must be in (0, 1), got {args.fpr}")
    args.runs = args.out / f"limit-{args.limit}" if args.limit else args.out  # a capped run is not a full one

    t_start = time.perf_counter()
    models, vals, training = {}, {}, {}
    for name in NAMES:
        models[name], vals[name], training[name] = trained(name, args)
    results = {name: study(name, models, vals, args) for name in NAMES}
    total = time.perf_counter() - t_start

    trained_how = "; ".join(
        f"{NAMES[n]}: {t['train_examples']} training + {t['val_examples']} validation images, "
        + ("reused" if t["reused"] else f"trained in {t['seconds']:.0f} s")
        for n, t in training.items()
    )
    setting = (
        f"784-400-20 MLP VAE (ReLU, Bernoulli likelihood, dynamic binarization), Adam 1e-3, batch 128, "
        f"{args.epochs} epochs, best validation epoch kept ({trained_how}). Scores from `vaekit.anomaly`: the "
        f"recommended score is {anomaly.SCORE} (tail p-values against the model's validation split, so "
        f"in [0, log(n + 1)]); L = {anomaly.COMPLEXITY}; L(zlib) = {anomaly.COMPLEXITY_GREY}, the score shipped "
        f"before; -log p(x) with k={args.iw_samples}; the ratio's background is the other "
        f"dataset's model (for MNIST vs Fashion-MNIST it was trained on the OOD set itself, so that cell is "
        f"not a fair comparison). Total {total / 60:.1f} min; ISA: {common.cpu_flags()}."
    )
    if args.limit:
        setting += f" **--limit {args.limit}: a quick check, not a result.**"
    body = "\n".join([setting, "", *targets(results), "", *tables(results, args)])
    common.RESULTS = args.results  # append_results writes to common.RESULTS
    command = " ".join(["python benchmarks/ood.py", *(sys.argv[1:] if argv is None else map(str, argv))])
    common.append_results("OOD detection: four OOD sets per model (benchmarks/ood.py)", command, body)
    summary = {"training": training, "results": results, "seconds": total, "args": vars(args)}
    (args.runs / "ood.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
