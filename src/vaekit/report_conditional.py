"""The report's section on conditional runs (issue 16): renders conditional.conditional_study's numbers.

For each conditional run: samples of every label (one row each), test digits restyled under every label, the
reference classifier's agreement with the requested label (per label, with the confusion matrix) and with
the target label of restyled digits, and what the label is worth in nats -- against an unconditional run of
the same size when one is among the runs (conditional.same_size), split by the conditional model's own
marginal into the label's information and a better model of x.
"""

from __future__ import annotations

import torch

from vaekit import figures
from vaekit.conditional import ConditionalSettings, conditional_study, same_size
from vaekit.report_sections import esc, label

INTRO = (
    '<p class="claim">A conditional VAE (Sohn et al. 2015) is given the label y in both networks: q(z|x, y), '
    "p(x|z, y), with the prior p(z) = N(0, I). The label chooses the class; the code z is left to carry "
    "what the label does not say, the style. So a draw from the prior decoded with label c should be a c, "
    "and a test digit's code decoded under another label should be that label's digit, in the test "
    "digit's style.</p>"
)


def section_conditional(page, cond, entries, clf, ds, s, number: int) -> None:
    """Section `number`: every conditional run of `cond` (report Entries) on the labelled test set ds;
    `entries` the unconditional runs (the nats comparison takes the first of the same size), clf (path,
    Classifier) or None; s the report's ReportSettings."""
    cs = ConditionalSettings.for_report(s)
    body = [INTRO]
    for e in cond:
        twin = next((u for u in entries if same_size(e.model, u.model)), None)
        c = None if clf is None else clf[1]
        st = conditional_study(e.model, c, ds, cs, None if twin is None else twin.model)
        if len(cond) > 1:
            body.append(f"<h3>{esc(label(e))}</h3>")
        body += _figures(page, e, st)
        body += _agreement(page, e, st) + _sweep(page, e, st) if st.accuracy is not None else [_no_classifier()]
        if st.nats is not None:
            body += _nats(page, e, st, twin)
    page.section(number, "conditional", "Conditional generation: the label chooses the digit", body)


def _no_classifier() -> str:
    return (
        '<p class="meta">No classifier among the runs: give one (e.g. runs/demo/classifier) to measure how '
        "often samples and restyled digits are the label asked for.</p>"
    )


def _figures(page, e, st) -> list[str]:
    k, n = e.model.num_classes, st.settings.grid
    rows = [(f"label {c}", st.grid[c * n : (c + 1) * n]) for c in range(k)]
    grid = figures.image_rows(rows, page.fig_dir / f"{e.name}_label_grid.png", size=0.62)
    y = [int(ds_y) for ds_y in st.labels]
    rows = [(f"#{i}, a {c}", torch.cat([x[None], r])) for i, c, x, r in zip(st.indices, y, st.x, st.restyled)]
    path = figures.image_rows(
        rows, page.fig_dir / f"{e.name}_restyle.png", col_titles=["test digit", *map(str, range(k))], size=0.62
    )
    return [
        page.figure(
            f"{e.name}_label_grid",
            grid,
            f"{esc(label(e))}: {n} draws z ~ N(0, I) per row, decoded with the row's label (decoded means; "
            f"<code>vaekit sample {esc(e.path)} --label all</code>).",
        ),
        page.figure(
            f"{e.name}_restyle",
            path,
            "Restyle: each test digit (left) is encoded with its own label; its code z (the posterior mean) is "
            f"decoded with every label 0..{k - 1} (<code>vaekit restyle {esc(e.path)} --index "
            f"{' '.join(map(str, st.indices))}</code>).",
        ),
    ]


def _agreement(page, e, st) -> list[str]:
    a, r, real, k = st.accuracy, st.consistency, st.real, e.model.num_classes
    pre = f"{e.name}.cond"
    rows = [
        [
            str(c),
            page.num(f"{pre}.sample_acc.{c}", 100 * float(a.per_label[c]), 1, "%"),
            page.num(f"{pre}.restyle_acc.{c}", 100 * float(r.per_label[c]), 1, "%"),
            page.num(f"{pre}.real_acc.{c}", 100 * float(real[c]), 1, "%"),
        ]
        for c in range(k)
    ]
    rows.append(
        [
            "all",
            page.num(f"{pre}.sample_acc", 100 * a.accuracy, 1, "%"),
            page.num(f"{pre}.restyle_acc", 100 * r.accuracy, 1, "%"),
            page.num(f"{pre}.real_acc", 100 * float(real.mean()), 1, "%"),
        ]
    )
    head = ["label", "samples called that label", "restyled digits called the target label", "real test digits"]
    worst, w = a.worst
    classes = a.confusion.shape[1]
    conf = page.table(
        ["asked \\ classified", *map(str, range(classes))],
        [[str(c), *(str(int(v)) for v in a.confusion[c])] for c in range(k)],
        "confusion",
    )
    s = st.settings
    return [
        page.table(head, rows),
        f"<p>The reference classifier agrees with the requested label on "
        f"{100 * a.accuracy:.1f}% of {s.per_label} samples per label "
        f"(lowest: label {worst}, {100 * w:.1f}%). On restyled digits ({r.n} test digits, each decoded under "
        f"all {k} labels) it agrees with the target label on {100 * r.accuracy:.1f}%, on "
        f"{page.num(f'{pre}.restyle_transfers', 100 * r.transfers, 1, '%')} of those decoded under a label "
        f"other than their own. The last column is the classifier on the same real test digits as they are: "
        f"the most a perfect generator could score by this measure.</p>",
        f"<details><summary>Confusion matrix of the samples ({s.per_label} per label; rows: the label asked "
        f"for, columns: the classifier's)</summary>{conf}</details>",
    ]


def _sweep(page, e, st) -> list[str]:
    """The label accuracy at each sampling temperature, the Frechet distance it costs, and the grid at `cool`."""
    k, pre, s = e.model.num_classes, f"{e.name}.cond", st.settings
    rows = []
    for p in st.sweep:
        key = f"{pre}.temperature.{p.temperature:g}"
        worst, w = p.accuracy.worst
        rows.append(
            [
                f"{p.temperature:g}",
                *(f"{100 * float(v):.1f}%" for v in p.accuracy.per_label),
                page.num(f"{key}.sample_acc", 100 * p.accuracy.accuracy, 1, "%"),
                page.num(f"{key}.worst_acc", 100 * w, 1, "%") + f" ({worst})",
                page.num(f"{key}.frechet", p.frechet, 1),
            ]
        )
    head = ["T", *map(str, range(k)), "all", "lowest (label)", "Frechet distance"]
    n = s.grid
    grid = [(f"label {c}", st.cool_grid[c * n : (c + 1) * n]) for c in range(k)]
    path = figures.image_rows(grid, page.fig_dir / f"{e.name}_label_grid_cool.png", size=0.62)
    met = all(float(p.accuracy.per_label.min()) >= s.target for p in st.sweep if p.temperature == st.cool)
    verdict = (
        f"every label reaches {100 * s.target:.0f}% from T = {st.cool:g} down"
        if met
        else f"no temperature swept brings every label to {100 * s.target:.0f}%"
    )
    return [
        "<p>Draws from the prior's bulk are the typical codes; the rare ones, far out, decode to the odd digits the "
        "classifier calls something else. Sampling at a temperature T < 1 (z ~ N(0, T<sup>2</sup> I), "
        "<code>vaekit sample --temperature T</code>, the usual remedy) trades them for variety. Per label, the "
        f"classifier's agreement with the requested label at each T ({s.per_label} samples per label, the same "
        f"draws scaled), and the Frechet distance of the classifier's features of all the samples to real test "
        f"digits' (it grows when the samples crowd around each label's typical digit):</p>",
        page.table(head, rows),
        f"<p>Here {verdict}.</p>",
        page.figure(
            f"{e.name}_label_grid_cool",
            path,
            f"{esc(label(e))} at T = {st.cool:g}: the same draws as the grid above, scaled by T, decoded with the "
            f"row's label (<code>vaekit sample {esc(e.path)} --label all --temperature {st.cool:g}</code>).",
        ),
    ]


def _nats(page, e, st, twin) -> list[str]:
    t, pre = st.nats, f"{e.name}.cond"
    rows = [
        ["-log p(x|y), this model, the true label", page.num(f"{pre}.nll_given", t.nll_given)],
        [
            "-log p(x) = -log sum_y p(y) p(x|y), this model's own marginal",
            page.num(f"{pre}.nll_marginal", t.nll_marginal),
        ],
        [
            "label information log p(y|x) - log p(y) = log p(x|y) - log p(x)",
            page.num(f"{pre}.label_info", t.label_info),
        ],
        ["its bound: the mean of -log p(y)", page.num(f"{pre}.info_bound", t.info_bound)],
    ]
    if twin is not None:
        rows += [
            [f"-log p(x), {esc(twin.name)} (unconditional, same size)", page.num(f"{pre}.nll_uncond", t.nll_uncond)],
            ["gap: -log p(x) unconditional - -log p(x|y)", page.num(f"{pre}.gap", t.gap)],
            [
                "of which a better model of x: log p(x) this model - log p(x) unconditional",
                page.num(f"{pre}.better_model", t.better_model),
            ],
        ]
    prior = "the training label frequencies" if t.prior == "train" else "uniform, 1/K"
    text = (
        f"<p>The label is worth {t.label_info:.2f} nats per digit to this model, of the at most {t.info_bound:.2f} "
        f"it could be (its entropy under p(y): it would be worth all of it if the model could always tell the "
        f"label from the digit). "
    )
    if twin is not None:
        text += (
            f"Against the unconditional {esc(twin.name)} the gap is {t.gap:.2f} nats; the label's information "
            f"explains {t.label_info:.2f} of it, and the remaining {t.better_model:.2f} nats are a better model of "
            f"the digits themselves: this model's own marginal p(x) = sum_y p(y) p(x|y), a mixture over the labels, "
            f"is a better density for them than the unconditional model's p(x). "
        )
    else:
        text += "Give an unconditional run of the same size (the same flags without --conditional) to compare. "
    text += (
        f"Used as a classifier, argmax_y p(x|y) p(y), this model labels "
        f"{page.num(f'{pre}.bayes_acc', 100 * t.accuracy, 1, '%')} of the digits correctly.</p>"
    )
    meta = (
        f'<p class="meta">Nats per digit on the first {t.n} test digits, binarized once with a fixed seed; each '
        f"log p(x|y) importance-sampled with k = {t.k} samples for every label (evaluate.log_likelihood); p(y) = "
        f"{prior}. A subset, for speed: benchmarks/conditional.py measures the whole test set.</p>"
    )
    return [page.table(["nats per digit", "value"], rows), text, meta]
