"""The report's sections 3-6 as HTML, from the numbers the studies return (studies.py, vae_studies.py,
claims.py).

Each `section_*` takes the Page being written (report.py), the study's result and the runs, draws its
figures, records every number through page.num and adds one <section>. A section testing a claim of the
lecture opens with that claim and its measured verdict (report_claims.claim_html, given as `claim`) instead
of asserting it. No measuring here.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from vaekit import figures
from vaekit.distributions import StandardNormal
from vaekit.priors import describe
from vaekit.studies import (
    SHIFTS,
    Entry,
    InterpStudy,
    LatentStudy,
    ManifoldStudy,
    ReportSettings,
    compare_generation,
    compare_interp,
)
from vaekit.vae_studies import ShiftReading

if TYPE_CHECKING:
    from vaekit.report import Page


def esc(s) -> str:
    return html.escape(str(s))


def kind(e: Entry) -> str:
    return ("VAE" if e.is_vae else "AE") + (" 2-D" if e.latent_dim == 2 else "")


def label(e: Entry) -> str:
    return f"{e.name} ({kind(e)}, D={e.latent_dim})"


def sampler_text(e: Entry) -> str:
    if e.is_vae:
        return f"draws from the prior {describe(e.model.prior)}"
    return "draws from a Gaussian N(m, S) fitted to its training codes"


def prior_note(e: Entry) -> str:
    """A sentence for a VAE whose prior is not N(0, I), where a figure or number assumes N(0, I); else ""."""
    if not e.is_vae or isinstance(e.model.prior, StandardNormal):
        return ""
    return f" This model's prior is {describe(e.model.prior)}, not N(0, I): the grid and the 81% refer to N(0, I)."


# ------------------------------------------------------------------------------------------- section 3


def section_latent(
    page: Page, study: LatentStudy, entries, main, clf, pair, s: ReportSettings, gaps: list[str], claim: str
) -> None:
    """Section 3: `gaps` (C1's paragraph and figures, HTML), then `claim` (C3's paragraph), the latent scatters
    and generated digits; with a classifier, its scores and the verdict. `pair`: (AE, VAE) among `main` from
    studies.ae_and_vae."""
    panels = []
    for e in main:
        p = study.panels[e.name]
        if p.share is None:
            how, xl, yl = "the 2-D latent itself", "z1", "z2"
        else:
            how, xl, yl = f"PCA projection ({100 * p.share:.0f}% of variance)", "PC 1", "PC 2"
        panels.append(
            {
                "title": f"{label(e)}: test codes, {how}",
                "xy": p.xy,
                "labels": study.labels,
                "xlabel": xl,
                "ylabel": yl,
                "extra": p.extra,
                "extra_label": sampler_text(e),
            }
        )
    scatter = figures.latent_scatter(panels, page.fig_dir / "latent_scatter.png")
    samples = figures.sample_panels(
        [(f"{label(e)}:\n{sampler_text(e)}", study.samples[e.name][:100]) for e in entries],
        page.fig_dir / "samples.png",
    )
    body = [
        *gaps,
        "<h3>Generating by sampling the latent space</h3>",
        claim,
        page.figure(
            "latent_scatter",
            scatter,
            "Posterior means (codes) of test digits coloured by digit; grey "
            "crosses: the codes each model generates from, projected the same way. A wide latent is "
            "shown through a linear PCA projection (named above each plot), which keeps gaps visible "
            "as gaps.",
        ),
        page.figure(
            "samples",
            samples,
            "Generated digits: decoded means of latent draws. The AE has no prior, "
            "so its draws come from a Gaussian fitted to its own training codes (the usual fair "
            "stand-in); a VAE's come from its prior (N(0, I) unless the row's label names another).",
        ),
    ]
    if clf is not None:
        body += _generation_scores(page, study, entries, clf, s)
        ae, vae = pair
        if ae is not None and vae is not None:
            body.append(_verdict(study.scores[ae.name], study.scores[vae.name], ae, vae))
    page.section(3, "gaps", "Problem 1: gaps in the latent space", body)


def _generation_scores(page: Page, study: LatentStudy, entries, clf, s: ReportSettings) -> list[str]:
    """The classifier's scores of every run's generated digits (and of real ones), as a table."""
    cpath, c = clf
    scores, n_ref = study.scores, study.n_ref
    cols = [(e.name, esc(label(e))) for e in entries] + [("real", f"real test digits ({n_ref})")]
    rows = [
        ["mean max-class confidence"] + [page.num(f"{k}.gen_confidence", scores[k]["confidence"], 3) for k, _ in cols],
        ["class coverage"] + [page.num(f"{k}.gen_coverage", scores[k]["coverage"], 3) for k, _ in cols],
        ["Frechet distance (classifier features)"]
        + [page.num(f"{k}.gen_frechet", scores[k]["frechet"], 2) for k, _ in cols],
        ["predicted labels 0..9"] + [" ".join(map(str, scores[k]["label_counts"])) for k, _ in cols],
    ]
    head = ["measure"] + [lab for _, lab in cols]
    layers = "-".join(map(str, [math.prod(c.config.input_shape), *c.config.hidden, c.config.classes]))
    return [
        f"<p>A reference classifier ({esc(cpath.name)}: an MLP "
        f"{layers} "
        f"trained by vaekit on greyscale training digits) has test accuracy "
        f"{page.num('classifier.test_accuracy', c.test_accuracy, 4)} on the 10,000 test digits. It scores "
        f"{s.n_gen} generated digits per model:</p>",
        page.table(head, rows),
        '<p class="meta"><b>Mean max-class confidence</b>: the classifier\'s top probability averaged over the '
        "digits (a clear digit scores near 1, an ambiguous blob lower). <b>Class coverage</b>: "
        "exp(H) / 10, where H is the entropy of the histogram of predicted labels: the effective number of "
        "classes as a fraction of the ten (1 = all ten equally often; 0.1 = one class only). <b>Frechet "
        "distance</b>: |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) between Gaussians fitted to the "
        f"classifier's {c.config.hidden[-1]} last-hidden-layer features of the generated digits and of "
        f"{n_ref} real test digits (the idea of FID, with an MNIST classifier); lower is better. The last "
        f"column scores {n_ref} other real test digits the same way: the floor that finite samples allow.</p>",
    ]


def _verdict(a: dict, v: dict, ae: Entry, vae: Entry) -> str:
    """The AE-vs-VAE sentence, from the generation scores and studies.compare_generation."""
    cmp = compare_generation(a, v)
    won = cmp["vae_wins"]
    fa, fv, gap = a["frechet"], v["frechet"], cmp["frechet_gap"]
    if won["frechet"]:
        times = f"{cmp['frechet_ratio']:.1f}x" if math.isfinite(cmp["frechet_ratio"]) else "infinitely"
        parts = [f"The VAE wins on the Frechet distance by {gap:.2f} ({fv:.2f} vs {fa:.2f}, {times} lower)"]
    else:
        parts = [f"The AE wins on the Frechet distance by {gap:.2f} ({fa:.2f} vs {fv:.2f})"]
    ca, cv = a["confidence"], v["confidence"]
    parts.append(
        f"the {'VAE' if won['confidence'] else 'AE'}'s digits are the more recognisable (mean confidence {cv:.3f} "
        f"for the VAE vs {ca:.3f} for the AE, a difference of {cmp['confidence_gap']:.3f})"
    )
    parts.append(
        f"and the {'VAE' if won['coverage'] else 'AE'} covers the classes more evenly "
        f"(coverage {v['coverage']:.3f} vs {a['coverage']:.3f})"
    )
    note = (
        ""
        if won["frechet"]
        else " A full-covariance Gaussian fitted to the AE's codes is a strong stand-in for a prior, not a blind "
        'guess: sampling an AE this way is competitive with a VAE (Ghosh et al. 2020, "From Variational to '
        "Deterministic Autoencoders\", found the same); the VAE's advantage is that it needs no such "
        "after-the-fact fit, and that it has a likelihood (section 1)."
    )
    return (
        f'<p class="claim" data-verdict="{cmp["wins"]}">{"; ".join(parts)}. The VAE wins {cmp["wins"]} of the 3 '
        f"measures ({esc(vae.name)} vs {esc(ae.name)}).{note}</p>"
    )


# ------------------------------------------------------------------------------------------- section 4


def section_interp(
    page: Page, study: InterpStudy, y_eval, has_clf: bool, pair, s: ReportSettings, claim: str, nearby: list[str]
) -> None:
    """Section 4: `claim` (C4's paragraph), a figure per pair of test digits, the smoothness table, the verdict
    (`pair`: (AE, VAE)), then `nearby` (C2's paragraph and figure, HTML)."""
    body = [
        claim,
        "<p>Spherical interpolation (slerp) keeps the norm of the code near that of typical prior draws, where a "
        "straight line passes closer to the origin.</p>",
    ]
    details = []
    for p, ((i, j), paths) in enumerate(zip(study.pairs, study.paths)):
        caps, conf_rows = [], []
        for q in paths:
            caps.append([""] * s.steps)
            if q.confidence is not None:
                caps[-1] = [f"{int(l_)}: {float(v_):.2f}" for l_, v_ in zip(q.label, q.confidence)]
                conf_rows.append(
                    [f"{esc(q.name)} {q.mode}"]
                    + [
                        page.num(f"{q.name}.interp_{q.mode}.pair{p}.frame{t}", q.confidence[t], 2)
                        for t in range(s.steps)
                    ]
                )
        lab = "" if y_eval is None else f" (a {int(y_eval[i])} to a {int(y_eval[j])})"
        rows = [(f"{q.name}\n{q.mode}", q.frames) for q in paths]
        path = figures.image_rows(
            rows, page.fig_dir / f"interpolation_{p + 1}.png", captions=caps if has_clf else None, size=0.7
        )
        body.append(
            page.figure(
                f"interpolation_{p + 1}",
                path,
                f"Test digits {i} and {j}{lab}: decoded means along linear and spherical paths "
                f"between their codes ({s.steps} frames, ends included)"
                + ("; under each frame, the classifier's label and confidence." if has_clf else "."),
            )
        )
        if conf_rows:
            details.append(
                f"<p>Pair {p + 1}, test digits {i} and {j}{lab}:</p>"
                + page.table(["path"] + [f"frame {t}" for t in range(s.steps)], conf_rows)
            )
    body += _smoothness_table(page, study, s)
    ae, vae = pair
    if ae is not None and vae is not None:
        body.append(_interp_verdict(compare_interp(study.summary, ae.name, vae.name), ae.name, vae.name))
    if details:
        body.append(
            "<details><summary>classifier confidence of every frame</summary>" + "".join(details) + "</details>"
        )
    page.section(4, "interpolation", "Interpolation and nearby codes", body + nearby)


def _smoothness_table(page: Page, study: InterpStudy, s: ReportSettings) -> list[str]:
    rows = []
    for (name, mode), m in study.summary.items():
        key = f"{name}.interp_{mode}"
        rows.append(
            [
                f"{esc(name)}",
                mode,
                page.num(f"{key}.mean_change", m["mean_change"], 4),
                page.num(f"{key}.max_change", m["max_change"], 4),
                page.num(f"{key}.max_over_mean", m["max_over_mean"], 2),
                page.num(f"{key}.mean_confidence", m["mean_confidence"], 3),
                page.num(f"{key}.min_confidence", m["min_confidence"], 3),
            ]
        )
    return [
        page.table(
            ["run", "path", "mean pixel change", "max pixel change", "max / mean", "mean confidence", "min confidence"],
            rows,
        ),
        f'<p class="meta">Pixel change between consecutive frames: mean |x_t+1 - x_t| over pixels (values in '
        f'[0, 1]); "mean" and "max" over the {s.steps - 1} steps of all {len(study.pairs)} pairs. A smooth path '
        f"spreads its change evenly (max / mean near 1); a jump shows as a large max. Confidence: the "
        f"classifier's top probability per frame, over all frames of all pairs; a low minimum marks frames "
        f"that look like no digit.</p>",
    ]


def _interp_verdict(cmp: dict, ae: str, vae: str) -> str:
    """The AE-vs-VAE sentence for interpolation, from studies.compare_interp."""
    parts = []
    for mode, m in cmp["modes"].items():
        ra, rv = m["ratio_ae"], m["ratio_vae"]
        text = (
            f"{mode.capitalize()} paths: the largest step is {rv:.2f}x the mean step for the VAE and {ra:.2f}x for the "
            f"AE (the {'VAE' if rv < ra else 'AE'} changes more evenly)"
        )
        if "min_confidence_ae" in m:
            text += (
                f", and the least recognisable frame scores {m['min_confidence_vae']:.2f} for the VAE vs "
                f"{m['min_confidence_ae']:.2f} for the AE"
            )
        parts.append(text)
    return (
        f'<p class="claim" data-verdict="{cmp["wins"]}">{". ".join(parts)}. The VAE wins {cmp["wins"]} of these '
        f"{cmp['n']} comparisons ({esc(vae)} vs {esc(ae)}).</p>"
    )


# ------------------------------------------------------------------------------------------- section 5


def section_manifold(page: Page, e: Entry, study: ManifoldStudy, y_eval, s: ReportSettings) -> None:
    n = s.manifold_n
    labels = None if y_eval is None else y_eval[: s.scatter_n].numpy()
    path = figures.manifold(study.images, n, study.axis, study.z, labels, page.fig_dir / "manifold.png")
    page.section(
        5,
        "manifold",
        "The 2-D manifold",
        [
            '<p class="claim">With a 2-D latent the whole generative model fits in one picture: decoding a grid of '
            "codes spaced by the inverse normal CDF (equal prior probability between neighbours) shows every digit "
            "the model can draw, morphing continuously, with each class where its codes are in the scatter.</p>",
            page.figure(
                "manifold",
                path,
                f"{esc(label(e))}. Left: decoded means on an {n} x {n} grid, "
                f"z = Phi^-1(q) for q evenly spaced in [0.05, 0.95] on each axis. Right: the posterior means of "
                f"{len(study.z)} test digits, coloured by digit; the dashed square is the extent of the grid.",
            ),
            f"<p>{page.num(f'{e.name}.manifold_inside', 100 * study.inside, 1, '%')} of the test codes fall inside "
            f"the plotted square (the prior puts 81% there). Test NLL of this model: "
            f"{page.metrics.get(f'{e.name}.nll', float('nan')):.2f} nats.{esc(prior_note(e))}</p>",
        ],
    )


# ------------------------------------------------------------------------------------------- section 6


def section_shift(page: Page, e: Entry, j: int, st: dict, rd: ShiftReading, s, claim: str) -> None:
    """Section 6 from vae_studies.shift_study (`st`: images, mse, logp) of test digit 0 and test digit j, and
    read_shift (`rd`), measured with s.iw_k and s.shift_draws (ReportSettings or claims.ClaimSettings); opening
    with `claim` (C5's paragraph)."""
    names = ["original"] + [f"shifted {k} px" for k in SHIFTS] + ["different digit"]
    keys = ["orig"] + [f"shift{k}" for k in SHIFTS] + ["other"]
    m, lp, pred = st["mse"], st["logp"], rd.label is not None
    caps = [f"MSE {a:.4f}\nlog p {b:.1f}" for a, b in zip(m, lp)]
    if pred:
        caps = [f"{c}\n{int(l_)}: {float(p_):.2f}" for c, l_, p_ in zip(caps, rd.label, rd.confidence)]
    path = figures.image_rows(
        [("", st["images"])], page.fig_dir / "shift.png", captions=[caps], col_titles=names, size=1.3
    )
    rows = []
    for i, (nm, k) in enumerate(zip(names, keys)):
        rows.append(
            [nm, page.num(f"shift.{k}.mse", m[i], 4), page.num(f"shift.{k}.logp", lp[i], 2)]
            + ([f"{int(rd.label[i])}", page.num(f"shift.{k}.confidence", rd.confidence[i], 3)] if pred else [])
        )
    head = ["image", "pixel MSE to the original", f"log p(x) under {esc(e.name)} (nats)"] + (
        ["classifier label", "confidence"] if pred else []
    )
    page.section(
        6,
        "good-reconstruction",
        'Problem 2: what "good reconstruction" means',
        [
            claim,
            '<p>A reconstruction loss in pixel space decides what counts as "similar": a digit moved by a pixel or '
            "two is the same digit to us.</p>",
            page.figure(
                "shift",
                path,
                f"Test digit 0, shifted right by 1-3 pixels, and the test digit of another "
                f"class nearest to it in pixel MSE (test digit {j}"
                + ("; among those the classifier also assigns to their own class" if pred else "")
                + "). Under each: pixel MSE to the original, "
                f"log p(x) under {esc(e.name)}" + (", classifier label and confidence." if pred else "."),
            ),
            page.table(head, rows),
            f'<p>{_shift_text(m, lp, rd)} Neither pixel MSE nor likelihood measures "the same digit": choose '
            f'the metric for the question. Pixel error for copying, log p(x) for "is this a plausible digit", '
            f"features of a trained network for semantic similarity, which is why section 3 compares generated "
            f"digits in classifier-feature space and not in pixels.</p>",
            f'<p class="meta">{_shift_method(e, s)}</p>',
        ],
    )


def _shift_text(m: list[float], lp: list[float], rd: ShiftReading) -> str:
    """What pixel MSE, log p(x) and the classifier say about the shifted digits, in three sentences."""
    w = rd.first_worse
    mse_text = (
        f"By pixel MSE, the digit shifted by {w} pixel{'s' if w > 1 else ''} is already "
        f"farther from the original ({m[SHIFTS.index(w) + 1]:.4f}) than a different digit "
        f"({m[-1]:.4f}): pixel error calls the same digit, moved slightly, a worse copy than another digit."
        if w is not None
        else f"Pixel MSE grows with the shift ({', '.join(f'{v:.4f}' for v in m[1:-1])} for 1-3 pixels) "
        f"towards that of a different digit ({m[-1]:.4f})."
    )
    lp_text = (
        f"The VAE's log-likelihood falls by {rd.logp_drop:.1f} nats from the original to the {SHIFTS[-1]}-pixel "
        f"shift, and gives the different (but centred, typical) digit {lp[-1]:.1f} nats against "
        f"{lp[0]:.1f} for the original: log p(x) scores how typical an image is of the training data, not "
        f"how close it is to a given digit."
    )
    cl_text = ""
    if rd.label is not None:
        cl_text = (
            " The classifier "
            + (
                "keeps the original's label through every shift"
                if rd.same_label
                else "changes its label under some shifts"
            )
            + f" and labels the different digit {int(rd.label[-1])}."
        )
    return f"{mse_text} {lp_text}{cl_text}"


def _shift_method(e: Entry, s: ReportSettings) -> str:
    if e.model.run_config.train.binarize == "none":
        return f"Log p(x) is importance-sampled (k = {s.iw_k})."
    return (
        f"Log p(x) is importance-sampled (k = {s.iw_k}) and averaged over {s.shift_draws} Bernoulli "
        "binarizations of the "
        "greyscale digit, each shifted exactly as the greyscale image, since the model is a Bernoulli model "
        "of binary digits; MSE is on the greyscale images."
    )
