"""Choose time_to_quality.py's vaekit recipe on a validation split, never on the test set.

    python benchmarks/select_recipe.py [--seeds 2] [--ref-epochs 10]

MNIST's 60k training digits are split: the first 50k to train on, the last 10k to validate on (the test set is
not read). For each seed, the reference trains 10 epochs on the 50k and its loss on the 10k is that seed's
target; then every candidate (flags, epochs) of CANDIDATES trains from scratch on the 50k with that seed and
is scored on the 10k, in the same run. The choice: among candidates that reach the target on every seed, the
one with the smallest median training seconds. It prints the table and the choice and appends them to
RESULTS.md; time_to_quality.py's RECIPE and EPOCHS are set from it by hand.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
from pathlib import Path

from common import append_results, mnist_validation_split
from time_to_quality import AMP, reference_run, vaekit_run

SILU = ["--schedule", "cosine", *AMP, "--activation", "silu"]
CANDIDATES = [  # around the boundary the 2026-12-01 selection found (RESULTS.md): batch 80 reached, 128 just missed
    (["--batch-size", "80", "--lr", "5e-3", *SILU], 3),  # the recipe chosen then
    (["--batch-size", "96", "--lr", "5e-3", *SILU], 3),
    (["--batch-size", "96", "--lr", "6e-3", *SILU], 3),
    (["--batch-size", "112", "--lr", "6e-3", *SILU], 3),
    (["--batch-size", "112", "--lr", "7e-3", *SILU], 3),
    (["--batch-size", "128", "--lr", "6e-3", *SILU], 3),
    (["--batch-size", "128", "--lr", "8e-3", *SILU], 3),
    (["--batch-size", "64", "--lr", "4e-3", *SILU], 2),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ref-epochs", type=int, default=10)
    args = ap.parse_args()
    secs = {i: [] for i in range(len(CANDIDATES))}
    reached = {i: [] for i in range(len(CANDIDATES))}
    losses = {i: [] for i in range(len(CANDIDATES))}
    refs = []
    with tempfile.TemporaryDirectory() as d:
        train, val, idx = mnist_validation_split(Path(d))
        for seed in range(1, args.seeds + 1):
            ref_secs, target = reference_run(idx, args.ref_epochs, seed)
            refs.append((ref_secs, target))
            print(f"seed {seed}: reference validation loss {target:.2f} in {ref_secs:.1f}s", flush=True)
            for i, (flags, epochs) in enumerate(CANDIDATES):
                s, loss = vaekit_run(flags, epochs, seed, data=train, eval_data=val)
                secs[i].append(s)
                losses[i].append(loss)
                reached[i].append(loss <= target)
                print(f"  {shlex.join(flags)}, {epochs} epochs: {loss:.2f} in {s:.1f}s", flush=True)
    ok = [i for i in secs if all(reached[i])]
    best = min(ok, key=lambda i: statistics.median(secs[i])) if ok else None
    ref_med = statistics.median(r[0] for r in refs)
    rows = [
        f"| `{shlex.join(f)}` | {e} | {statistics.median(secs[i]):.1f} | "
        + " / ".join(f"{x:.2f}" for x in losses[i])
        + f" | {sum(reached[i])}/{len(reached[i])} | {ref_med / statistics.median(secs[i]):.2f}x |"
        + (" **chosen** |" if i == best else " |")
        for i, (f, e) in enumerate(CANDIDATES)
    ]
    targets = " / ".join(f"{t:.2f}" for _, t in refs)
    body = (
        f"Validation split: MNIST training digits 1-50000 to train, 50001-60000 to validate (the test set unread). "
        f"Reference ({args.ref_epochs} epochs on the 50k): median {ref_med:.1f} s, validation loss {targets} "
        "(one per seed) = the targets.\n\n"
        "| vaekit flags | epochs | median training s | validation loss per seed | reached | faster (median s) | |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Chosen: the smallest median training time among candidates reaching the target on every seed"
        + (f": `{shlex.join(CANDIDATES[best][0])}`, {CANDIDATES[best][1]} epochs.\n" if ok else ": none reached it.\n")
    )
    append_results(
        "Time to quality: the recipe chosen on a validation split",
        f"python benchmarks/select_recipe.py --seeds {args.seeds} --ref-epochs {args.ref_epochs}",
        body,
    )


if __name__ == "__main__":
    main()
