"""Conditional generation, measured (issue 16): a conditional VAE's samples and restyled digits judged by the
reference classifier, and what the label is worth in nats. Trains nothing.

    python benchmarks/conditional.py [--cvae /tmp/cond/cvae] [--vae /tmp/cond/vae]
        [--classifier /work/main/runs/demo/classifier] [--per-label 1000] [--n-restyle 1000]
        [--n-nats 10000] [--k 100] [--prior train] [--seed 0] [--temperatures 1,0.8,0.7,0.6,0.5]
        [--results benchmarks/RESULTS.md]        (--n-nats 0: no nats)

--cvae: a conditional run (`vaekit train --conditional`), --vae: an unconditional run of the same size and
training (the same flags without --conditional), --classifier: the reference classifier. The numbers, all
from vaekit.conditional:

- label accuracy: the classifier's agreement with the requested label over --per-label prior draws of each
  label (decoded means), per label, with the confusion matrix. Target: at least 95% for every label.
- restyle consistency: the first --n-restyle test digits, each encoded with its own label and decoded under
  every label: the classifier's agreement with the target label, per target label.
- beside them, to read a miss: the classifier's own accuracy on the real test digits of each label (the
  whole test set: a ceiling for this measure) and on the conditional model's reconstructions of them.
- the temperature sweep (--temperatures): label accuracy of draws z ~ N(0, T^2 I) per label and T, with the
  Frechet distance of the samples' classifier features to the real test digits' (what T < 1 costs in
  variety), and the highest T at which every label reaches 95% (`vaekit sample --temperature T`).
- nats: -log p(x|y) vs the unconditional -log p(x) on the first --n-nats test digits (importance-sampled,
  --k samples for every label), the gap split by the conditional model's own marginal into the label's
  information and a better model of x, and the conditional model as a classifier (argmax_y p(x|y) p(y)).

The defaults took 9.5 minutes on the shared 2-core dev machine (busy with other jobs), all but 6 s of it the
nats (10000 digits x 11 likelihoods x k=100). The section is appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import common
import torch
from common import cpu_flags

import vaekit
from vaekit.classifier import load_classifier
from vaekit.conditional import (
    confusion,
    coolest_needed,
    label_nats,
    restyle_consistency,
    same_size,
    temperature_sweep,
)

TARGET = 0.95
PRIORS = {"train": "the training label frequencies", "uniform": "uniform, 1/K"}


def per_label_accuracy(clf, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The classifier's accuracy on images x (N, *shape) of labels y (N,), per label: (K,)."""
    m = confusion(y, clf.predict(x).cpu(), k, clf.config.classes)
    return m.diagonal().double() / m.sum(1).clamp(min=1).double()


@torch.inference_mode()
def diagnostics(model, clf, ds) -> dict[str, torch.Tensor]:
    """Per label (K,): the classifier on the real test digits and on their reconstructions (each encoded and
    decoded with its own label)."""
    k = model.num_classes
    x, y = ds.batch(slice(0, len(ds))), ds.y
    recon = torch.cat([model.reconstruct(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(x), 1000)])
    return {"real": per_label_accuracy(clf, x, y, k), "recon": per_label_accuracy(clf, recon, y, k)}


def sweep_table(sweep, k: int) -> str:
    """Per temperature: the accuracy of each label, all, the lowest, and the Frechet distance."""
    lines = [
        "| T | " + " | ".join(map(str, range(k))) + " | all | lowest (label) | Frechet distance to real digits |",
        "|---" * (k + 4) + "|",
    ]
    for p in sweep:
        c, w = p.accuracy.worst
        per = " | ".join(f"{100 * float(v):.1f}" for v in p.accuracy.per_label)
        lines.append(
            f"| {p.temperature:g} | {per} | {100 * p.accuracy.accuracy:.1f} | {100 * w:.1f} ({c}) | {p.frechet:.1f} |"
        )
    return "\n".join(lines)


def tables(acc, cons, diag, k: int) -> str:
    pct = lambda v: f"{100 * float(v):.1f}%"  # noqa: E731
    lines = [
        "| label | samples called that label | restyled digits called the target label | real test digits | "
        "reconstructions |",
        "|---|---|---|---|---|",
    ]
    for c in range(k):
        mark = "" if acc.per_label[c] >= TARGET else " (below 95%)"
        lines.append(
            f"| {c} | {pct(acc.per_label[c])}{mark} | {pct(cons.per_label[c])} | {pct(diag['real'][c])} | "
            f"{pct(diag['recon'][c])} |"
        )
    lines.append(
        f"| all | {pct(acc.accuracy)} | {pct(cons.accuracy)} ({pct(cons.transfers)} under another label) | "
        f"{pct(diag['real'].mean())} | {pct(diag['recon'].mean())} |"
    )
    classes = acc.confusion.shape[1]
    conf = ["| asked \\ classified | " + " | ".join(map(str, range(classes))) + " |", "|---" * (classes + 1) + "|"]
    conf += [f"| {c} | " + " | ".join(str(int(v)) for v in acc.confusion[c]) + " |" for c in range(k)]
    return "\n".join(lines) + "\n\nConfusion matrix of the samples (rows: the label asked for):\n\n" + "\n".join(conf)


def nats_table(t) -> str:
    rows = [
        ("-log p(x\\|y), the conditional model, true label", t.nll_given),
        ("-log p(x), the conditional model's own marginal sum_y p(y) p(x\\|y)", t.nll_marginal),
        ("-log p(x), the unconditional model", t.nll_uncond),
        ("gap: unconditional -log p(x) - conditional -log p(x\\|y)", t.gap),
        ("  label information log p(y\\|x) - log p(y)", t.label_info),
        ("  a better model of x: log p_c(x) - log p_u(x)", t.better_model),
        ("the most the label can be worth: mean -log p(y)", t.info_bound),
    ]
    out = ["| nats per digit | value |", "|---|---|"] + [f"| {a} | {b:.3f} |" for a, b in rows]
    out.append(f"| the conditional model as a classifier, argmax_y p(x\\|y) p(y) | {100 * t.accuracy:.2f}% |")
    return "\n".join(out)


def nats_section(nats, seed: int) -> str:
    return (
        f"Nats on the first {nats.n} test digits (binarized once, seed {seed}), k = {nats.k} importance "
        f"samples per digit and label, p(y) = {PRIORS[nats.prior]}:\n\n" + nats_table(nats) + "\n\n"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cvae", type=Path, default=Path("/tmp/cond/cvae"))
    p.add_argument("--vae", type=Path, default=Path("/tmp/cond/vae"))
    p.add_argument("--classifier", type=Path, default=Path("/work/main/runs/demo/classifier"))
    p.add_argument("--per-label", type=int, default=1000)
    p.add_argument("--n-restyle", type=int, default=1000)
    p.add_argument("--n-nats", type=int, default=10000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--prior", default="train", choices=["train", "uniform"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperatures", default="1,0.8,0.7,0.6,0.5", help="comma-separated; 1 gives the main table")
    p.add_argument("--results", type=Path, default=common.RESULTS)
    args = p.parse_args(argv)
    print(f"machine: {common.machine()}; ISA: {cpu_flags()}", flush=True)
    t0 = time.perf_counter()
    cvae, vae, clf = vaekit.load(args.cvae), vaekit.load(args.vae), load_classifier(args.classifier)
    if not same_size(cvae, vae):
        print(f"note: {args.vae} is not {args.cvae}'s unconditional twin (model, data or binarization differ)")
    k = cvae.num_classes
    ds = vaekit.data.load(cvae.run_config.train.data, "test")
    temps = [1.0] + [t for t in map(float, args.temperatures.split(",")) if t != 1.0]
    sweep = temperature_sweep(cvae, clf, ds.batch(slice(0, len(ds))), temps, args.per_label, args.seed)
    acc, cool = sweep[0].accuracy, coolest_needed(sweep, TARGET)
    n = min(args.n_restyle, len(ds))
    cons = restyle_consistency(cvae, clf, ds.batch(slice(0, n)), ds.y[:n])
    diag = diagnostics(cvae, clf, ds)
    t1 = time.perf_counter()
    print(tables(acc, cons, diag, k), sweep_table(sweep, k), sep="\n\n", flush=True)
    nats = None
    if args.n_nats:
        sub = ds.subset(slice(0, min(args.n_nats, len(ds))))
        nats = label_nats(cvae, sub, k=args.k, prior=args.prior, umodel=vae, seed=args.seed)
    t2 = time.perf_counter()
    c, e = cvae.run_config, vae.run_config
    misses = [str(c) for c in range(k) if acc.per_label[c] < TARGET]
    body = (
        f"Conditional run {args.cvae} ({c.model.model}, {c.model.arch} {list(c.model.hidden)}, latent "
        f"{c.model.latent_dim}, {c.train.epochs} epochs on {c.train.data}), unconditional run {args.vae} "
        f"({e.train.epochs} epochs), classifier {args.classifier} (test accuracy {clf.test_accuracy}). "
        f"{args.per_label} samples per label (decoded means, seed {args.seed}); restyle on the first {n} test "
        f"digits x {k} labels; real digits and reconstructions: the whole test split.\n\n"
        + tables(acc, cons, diag, k)
        + f"\n\nLabels below the 95% target at T = 1 (the prior): {', '.join(misses) or 'none'}.\n\n"
        "Sampling temperature: draws z ~ N(0, T^2 I) (the same draws, scaled), per label, with the Frechet "
        "distance of all the samples' classifier features to the real test digits':\n\n"
        + sweep_table(sweep, k)
        + f"\n\nThe highest T at which every label reaches 95%: {cool:g}"
        + (
            ""
            if float(next(p for p in sweep if p.temperature == cool).accuracy.per_label.min()) >= TARGET
            else " (none reaches it; the lowest swept)"
        )
        + ".\n\n"
        + ("" if nats is None else nats_section(nats, args.seed))
        + f"Classifier numbers {t1 - t0:.0f} s, nats {t2 - t1:.0f} s; ISA: {cpu_flags()}."
    )
    common.RESULTS = args.results
    command = "python benchmarks/conditional.py " + " ".join(argv)
    common.append_results("Conditional generation: label accuracy, restyle, the label in nats", command.strip(), body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
