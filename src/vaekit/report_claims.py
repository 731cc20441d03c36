"""The lecture's claims in the report: the claims table at the top of report.html, each section's claim
paragraph (the claim as the lecture states it, then the measured verdict), the claims' figures and section 7.

    claims = measure(entries, clf, ds, settings)     # claims.measure_claims on the runs that fit, and its rows
    claims_html(page, claims)                         # the table, and how each measure is defined
    claim_html(claims.row("C1"))                      # a section's opening paragraph
    gaps_html / nearby_html / section_kl              # C1's hole maps and the latent formation animation; C2's
                                                      # curves; section 7 (C6 and C8)

The numbers come from claims.py (measure_claims) and claims_table.py (the rows, their `holds` and `reading`);
this module chooses which runs play which part and renders, also sections 7 (the KL term: C6, C8) and 8 (the
reparameterization trick: C7). No measuring here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch

from vaekit import figures_claims
from vaekit.claims import PAIRS, QUICK_CLAIMS, ClaimResults, ClaimSettings, measure_claims
from vaekit.claims_table import Claim, claims_table
from vaekit.distributions import StandardNormal
from vaekit.report_sections import esc, label
from vaekit.snapshots import latent_animation, load_snapshots
from vaekit.studies import Entry, ReportSettings

if TYPE_CHECKING:
    from vaekit.report import Page

CLAIM_DIM = 20  # the latent size of the claims' "ae" and "vae" runs (claims_table calls that setting D=20)
MAX_TEST = 10000  # test examples handed to measure_claims (each claim uses its first n_codes, n_gen, ...)
HOLDS = {True: ("true", "true"), False: ("false", "false"), "partly": ("partly", "partly")}
NOT_MEASURED = ("not measured", "none")

# How each row's measure is read and when its claim holds (claims_table's decision rules, in words).
RULES = {
    "C1": "A hole is a grid point whose decoded image the classifier cannot place: top class probability below "
    "0.5, or classifier features farther from every class mean than 99% of real test digits' (Mahalanobis). "
    "Holds when the AE exceeds the VAE by more than 5 points of the grid in both empty cells (gaps) and holes; "
    "partly in one of the two.",
    "C2": "Each test digit's code z is moved to z + r s eps (eps ~ N(0, I), s the per-dimension spread of the "
    "codes, so r is in the codes' own units) and decoded; agreement is the share the classifier labels as the "
    "digit. Holds where the VAE's agreement exceeds the AE's by more than 2 binomial standard errors over the "
    "test digits.",
    "C3": "The Frechet distance between Gaussians fitted to the classifier's last-hidden-layer features of "
    "generated and of real test digits (the idea of FID); lower is better. Holds where the VAE's distance plus "
    "the real-vs-real distance at the same size is below the AE's, for each AE sampler: N(0, I) (what sampling "
    "the latent space means without a prior) and a Gaussian fitted to its codes (the fair stand-in).",
    "C4": "Four comparisons per pair of models: on linear and on spherical paths, the largest step between "
    "frames over the mean step (lower: more even), and the least confident frame (higher: more recognisable). "
    "Holds where the VAE wins more than half.",
    "C5": "Pixel MSE between the greyscale digit and its shifts, against a test digit of another class; log "
    "p(x) importance-sampled. Holds when a shift of 1-3 px is farther in pixel MSE than the other digit.",
    "C6": "Both forms of the ELBO on one batch with the same eps. They agree when the mean difference is within "
    "3 standard errors; the closed form is lower-variance when the variance ratio MC / analytic exceeds what "
    "two variances estimated from that many draws differ by at random (claims_table.ratio_margin), for "
    "one-draw values and for encoder gradients. Holds on both parts, partly on one.",
    "C7": "Single-sample estimates of the encoder's gradient of E_q[log p(x|z)]: reparameterized, with z "
    "detached (no trick), and by the score function (REINFORCE). Holds when the detached gradient is exactly 0 "
    "and REINFORCE's variance exceeds the reparameterized one's beyond the same margin as C6.",
    "C8": "KL( N(m, S) || N(0, I) ) in closed form, for N(m, S) fitted to one code per test digit (a draw of "
    "q(z|x) for a VAE). Holds where the VAE's KL plus the KL expected from fitting N(0, I) samples themselves "
    "(the finite-sample floor) is below the AE's.",
}


@dataclass
class Claims:
    """The claims as the report sees them: the rows, the measurements behind them, and which run played
    which part (measure_claims' names "ae", "vae", "ae2d", "vae2d" -> the report's entries)."""

    rows: list[Claim]
    res: ClaimResults
    runs: dict[str, Entry]
    labels: torch.Tensor | None  # (N,) labels of the test examples measured (None for unlabelled data)

    def row(self, cid: str) -> Claim:
        return next(r for r in self.rows if r.id == cid)

    def key(self, e: Entry) -> str | None:
        """The claims' name for the report's run e, if it played a part."""
        return next((k for k, v in self.runs.items() if v is e), None)


def claim_runs(entries: list[Entry]) -> dict[str, Entry]:
    """The first AE and VAE with latent size CLAIM_DIM ("ae", "vae") and with 2 ("ae2d", "vae2d"). The claims
    are about the VAE with the prior N(0, I) (C6's closed-form KL, C8's distance to N(0, I)): a VAE with a learned
    prior (priors.py) is none of their runs; the sections for every run still show it, with its own prior."""
    out: dict[str, Entry] = {}
    standard = [e for e in entries if not e.is_vae or isinstance(e.model.prior, StandardNormal)]
    for e in (e for e in standard if e.latent_dim in (2, CLAIM_DIM)):
        out.setdefault(("vae" if e.is_vae else "ae") + ("2d" if e.latent_dim == 2 else ""), e)
    return out


def claim_settings(s: ReportSettings) -> ClaimSettings:
    return replace(QUICK_CLAIMS if s.quick_claims else ClaimSettings(), seed=s.seed)


def measure(entries: list[Entry], clf, ds, s: ReportSettings) -> Claims:
    """claims.measure_claims on the runs of claim_runs(entries), with the classifier `clf` (or None), on the
    first MAX_TEST examples of the test set ds; the rows from claims_table."""
    runs = claim_runs(entries)
    n = min(len(ds), MAX_TEST)
    y = None if ds.y is None else ds.y[:n]
    res = measure_claims({k: e.model for k, e in runs.items()}, clf, ds.batch(slice(0, n)), y, claim_settings(s))
    return Claims(claims_table(res), res, runs, y)


def claims_json(rows: list[Claim]) -> list[dict]:
    """report.json's "claims": each row's keys, numbers as plain JSON numbers (a non-finite one as null)."""

    def plain(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    out = []
    for r in rows:
        d = asdict(r)
        for col in ("ae", "vae"):
            d[col] = None if d[col] is None else {k: plain(v) for k, v in d[col].items()}
        out.append(d)
    return out


# ------------------------------------------------------------------------------------------- the table


def _holds(holds) -> tuple[str, str]:
    """(the word, the data-holds key) of a row's `holds`."""
    return HOLDS.get(holds, NOT_MEASURED) if holds is not None else NOT_MEASURED


def holds_word(holds) -> str:
    """`holds` as a word: true, false, partly, or not measured (None)."""
    return _holds(holds)[0]


def holds_html(holds) -> str:
    """`holds` as a coloured word: true, false, partly, or not measured (None)."""
    word, key = _holds(holds)
    return f'<span class="holds" data-holds="{key}">{word}</span>'


def _value(page: Page, key: str, v, digits: int | None = None) -> str:
    """A number through page.num, its decimals by its size unless given; a non-finite one shown, not recorded."""
    if v is None:
        return '<span class="na">not measured</span>'
    if not math.isfinite(v):
        return f'<span class="num">{esc(v)}</span>'
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 1000 or v == int(v) else 1 if a >= 100 else 2 if a >= 1 else 3
    return page.num(key, v, digits)


def values_html(page: Page, r: Claim, col: str) -> str:
    """One side of a row (r.ae or r.vae): "setting: number" per line; a dash where the claim has no such side."""
    d = getattr(r, col)
    if d is None:
        return '<span class="na">&ndash;</span>'
    lines = [f"{esc(k)}: {_value(page, f'claims.{r.id}.{col}.{k}', v)}" for k, v in d.items()]
    return "<br>".join(lines) or '<span class="na">not measured</span>'


def table_html(page: Page, rows: list[Claim]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("id", "claim", "setting", "measure", "AE", "VAE", "holds", "reading"))
    body = []
    for r in rows:
        cells = [esc(r.id), esc(r.claim), esc(r.setting), esc(r.measure)]
        cells += [values_html(page, r, "ae"), values_html(page, r, "vae"), holds_html(r.holds), esc(r.reading)]
        key = _holds(r.holds)[1]
        body.append(f'<tr data-claim="{esc(r.id)}" data-holds="{key}">' + "".join(f"<td>{c}</td>" for c in cells))
    return f'<table class="claims"><thead><tr>{head}</tr></thead><tbody>{"</tr>".join(body)}</tr></tbody></table>'


def claims_html(page: Page, c: Claims) -> str:
    """The claims table and, under it, how each measure is defined and when each claim holds."""
    st = c.res.settings
    rules = "".join(f"<dt>{esc(r.id)}</dt><dd>{esc(RULES.get(r.id, r.measure))}</dd>" for r in c.rows)
    return (
        '<div id="claims"><h2>The lecture\'s claims, measured</h2>'
        "<p>Each row is a claim of the lecture, tested where the lecture makes it, AE against VAE. <b>holds</b>: "
        '<span class="holds" data-holds="true">true</span> in every setting measured, '
        '<span class="holds" data-holds="partly">partly</span> in some settings or on some of its parts only '
        "(the reading says which), "
        '<span class="holds" data-holds="false">false</span> in none, '
        '<span class="holds" data-holds="none">not measured</span> where the runs or the classifier it needs '
        "are missing. The sections below open with the same claims and verdicts.</p>"
        + table_html(page, c.rows)
        + "<details open><summary>How each measure is defined, and when a claim holds</summary><dl>"
        + rules
        + "</dl></details>"
        + f'<p class="meta">Claims measured with {esc(", ".join(f"{k}={v}" for k, v in asdict(st).items()))}, in '
        + esc(", ".join(f"{k} {v:.1f} s" for k, v in c.res.seconds.items()))
        + ".</p></div>"
    )


def claim_html(r: Claim) -> str:
    """A section's opening: the claim as the lecture states it, then the measured verdict and its reading."""
    key = _holds(r.holds)[1]
    return (
        f'<div class="claim" data-claim="{esc(r.id)}" data-holds="{key}"><p><b>The lecture ({esc(r.id)}):</b> '
        f"{esc(r.claim)}</p><p><b>Measured</b> ({esc(r.setting)}): {holds_html(r.holds)} {esc(r.reading)} "
        f'<a href="#claims">(claims table)</a></p></div>'
    )


# ------------------------------------------------------------------------------------------- figures


def gaps_html(page: Page, c: Claims) -> list[str]:
    """Section 3's C1 part: the hole maps of the 2-D runs and the animation of their codes over training."""
    return _hole_maps(page, c) + _formation(page, c)


def _hole_maps(page: Page, c: Claims) -> list[str]:
    keys = [k for k in ("ae2d", "vae2d") if k in c.res.holes]
    if not keys:
        need = [] if c.res.has_classifier else ["the classifier"]
        need += [] if {"ae2d", "vae2d"} & set(c.runs) else ["a 2-D run (ae2d or vae2d)"]
        return [f'<p class="meta">No hole map: it needs {" and ".join(need)}.</p>']
    panels = []
    for k in keys:
        codes = c.res.codes[k].numpy()
        labels = None if c.labels is None else c.labels[: len(codes)].numpy()
        panels.append({"title": label(c.runs[k]), "hole": c.res.holes[k], "codes": codes, "labels": labels})
    st = c.res.settings
    path = figures_claims.hole_maps(panels, page.fig_dir / "hole_maps.png")
    return [
        page.figure(
            "hole_maps",
            path,
            f"Hole maps: each 2-D decoder on a {st.grid} x {st.grid} grid over the 1st-99th percentile box of its "
            f"{st.n_codes} test codes, AE beside VAE. Top: the decoded images. Bottom: the classifier's confidence "
            f"(green: sure, red: unsure), the holes outlined in black (confidence below {st.threshold} or features "
            "unlike a real digit's), and the test codes coloured by digit. A gap (a cell holding no code) is not "
            "necessarily a hole: it can decode to a clear digit.",
        )
    ]


def _formation(page: Page, c: Claims) -> list[str]:
    keys = [k for k in ("ae2d", "vae2d") if k in c.runs]
    panels = [(label(c.runs[k]), load_snapshots(c.runs[k].path)) for k in keys]
    have, missing = [p for p in panels if p[1]], [t for t, f in panels if not f]
    note = (
        [
            f'<p class="meta">No animation of how the latent space forms for {esc(", ".join(missing))}: no '
            "snapshots/ in the run folder (trained before vaekit saved the codes after every epoch, or not by "
            "<code>vaekit demo</code>).</p>"
        ]
        if missing
        else []
    )
    if not have:
        return note
    sizes = {len(f[0][1]) for _, f in have}
    n = sizes.pop() if len(sizes) == 1 else None
    labels = None if n is None or c.labels is None or len(c.labels) < n else c.labels[:n].numpy()
    path = latent_animation(have, labels, page.fig_dir / "latent_formation.gif", page.fig_dir / "latent_formation")
    epochs = ", ".join(f"{esc(t)} {f[-1][0]}" for t, f in have)
    fig = page.figure(
        "latent_formation",
        path,
        f"How the latent space forms: the codes of the first {n or 'few'} test digits after every epoch (epoch 0: "
        f"the initial weights; epochs: {epochs}), coloured by digit, side by side; each panel keeps the axes of its "
        "last epoch. Look for clusters separating with empty space between them (gaps), and for codes filling a "
        "round region around the origin (the prior N(0, I)). The frames are also in figures/latent_formation/.",
    )
    return [fig] + note


def nearby_html(page: Page, c: Claims) -> list[str]:
    """C2 (for section 4): its claim paragraph and the neighbourhood curves, AE vs VAE per setting."""
    nb, curves = c.res.neighbourhoods, {}
    for setting, pair in PAIRS.items():
        got = {name: nb[k] for name, k in zip(("AE", "VAE"), pair) if k in nb}
        if got:
            curves[setting] = got
    body = ["<h3>Nearby codes</h3>", claim_html(c.row("C2"))]
    if curves:
        st = c.res.settings
        path = figures_claims.neighbourhood_curves(curves, page.fig_dir / "neighbourhoods.png")
        body.append(
            page.figure(
                "neighbourhoods",
                path,
                "Decoding codes near a test digit's code: the share of decoded neighbours z + r s eps that the "
                "classifier labels as the digit (solid) and its mean confidence (dashed), against the radius r in "
                f"code spreads s; {st.n_neigh} test digits, {st.neigh_draws} neighbours each per radius. r = 0 is "
                "the code itself, so its agreement is the reconstruction's.",
            )
        )
    return body


# ------------------------------------------------------------------------------------------- section 7


def section_kl(page: Page, c: Claims, number: int = 7) -> None:
    """Section 7, the KL term: C6 (the two forms of the ELBO) and C8 (the codes against the prior)."""
    if not c.res.elbo and not c.res.prior_kl:
        return
    st, r6 = c.res.settings, c.row("C6")
    rows = []
    for k, f in c.res.elbo.items():
        e, s = c.runs[k], "D=20" if k == "vae" else "D=2"
        rows.append(
            [esc(label(e))]
            + [
                _value(page, f"{e.name}.elbo_{n}", (r6.vae or {}).get(f"{s} {m}"), 2)
                for n, m in (("analytic", "analytic"), ("mc", "MC"))
            ]
            + [
                _value(page, f"{e.name}.elbo_forms_diff", f.diff, 3),
                _value(page, f"{e.name}.elbo_forms_diff_se", f.diff_se, 3),
            ]
            + [_value(page, f"{e.name}.value_var_ratio", f.value_var_ratio, 2)]
            + [_value(page, f"{e.name}.grad_var_ratio", f.grad_var_ratio, 2)]
        )
    body = [claim_html(r6)]
    if rows:
        head = ["run", "ELBO, closed-form KL", "ELBO, all Monte Carlo", "MC - closed form", "its SE"]
        body += [
            page.table(head + ["variance ratio MC / closed form, one-draw value", "... encoder gradient"], rows),
            f'<p class="meta">Nats per digit, batch means over {st.grad_batch} test digits (binarized as in '
            f"training) and {st.elbo_draws} draws of eps, the same eps for both forms (so their difference is a "
            f"paired one); gradient variances over {st.grad_draws} single-draw gradients of the encoder.</p>",
        ]
    body += [claim_html(c.row("C8"))] + _prior_kl_table(page, c)
    page.section(number, "kl-term", "The KL term: two forms of the ELBO, and codes pulled to the prior", body)


def _prior_kl_table(page: Page, c: Claims) -> list[str]:
    kl = c.res.prior_kl
    if not kl:
        return []
    rows = [
        [esc(label(c.runs[k]))]
        + [_value(page, f"{c.runs[k].name}.prior_kl.{p}", d[p], 3) for p in ("kl", "mean_part", "cov_part", "floor")]
        for k, d in kl.items()
    ]
    head = ["run", "KL(N(m, S) || N(0, I))", "from the mean m", "from the covariance S", "floor"]
    return [
        page.table(head, rows),
        f'<p class="meta">N(m, S) is fitted to one code per test digit ({c.res.settings.n_codes}): a draw of q(z|x) '
        "for a VAE (together, draws of its aggregate posterior q(z), which the prior should match), the code for "
        "an AE. The KL splits into 1/2 |m|^2 and 1/2 (tr S - D - log det S); the floor is the KL expected from "
        "fitting that many samples of N(0, I) itself.</p>",
    ]


# ------------------------------------------------------------------------------------------- section 8


def section_reparam(page: Page, e: Entry, r: dict, claim: str, number: int = 8) -> None:
    """Section `number` from vae_studies.reparam_gradients (`r`), opening with `claim` (C7's paragraph)."""
    rows = [
        [
            "z = mu + sigma * eps (reparameterized)",
            page.num("reparam.reparam.norm", r["reparam"]["norm"], 3),
            page.num("reparam.reparam.rel_std", r["reparam"]["rel_std"], 3),
        ],
        [
            "z sampled without the trick (detached)",
            page.num("reparam.detached.norm", r["detached"]["norm"], 3),
            page.num(None, None),
        ],
        [
            "score function (REINFORCE) on the detached sample",
            page.num("reparam.score.norm", r["score"]["norm"], 3),
            page.num("reparam.score.rel_std", r["score"]["rel_std"], 3),
        ],
    ]
    page.section(
        number,
        "reparameterization",
        "The reparameterization trick",
        [
            claim,
            "<p>Sampling z ~ q(z|x) is not differentiable in the encoder's parameters. Writing z = mu(x) + sigma(x) "
            "* eps with eps ~ N(0, I) moves the randomness into eps, so the gradient of the reconstruction term "
            "flows through z into the encoder.</p>",
            page.table(
                [
                    "gradient of E_q[log p(x|z)] w.r.t. the encoder",
                    "norm (single-sample, mean of draws)",
                    "relative std across draws",
                ],
                rows,
            ),
            f"<p>Measured on one batch of {r['batch']} binarized test digits with {esc(e.name)}, {r['draws']} "
            f"single-sample estimates each. Without the trick the sampled z is a constant to autograd and the encoder "
            f"gets exactly zero gradient from the reconstruction term: only the analytic KL (gradient norm "
            f"{page.num('reparam.kl_norm', r['kl_norm'], 3)}) would reach it, and that term only pulls every q(z|x) "
            f"towards the prior. The score-function estimator gets a gradient without the trick, but its spread "
            f"across draws relative to its norm is {r['noise_ratio']:.0f}x the reparameterized one's, and its "
            f"variance (summed over the encoder's parameters) {r['var_ratio']:.3g}x, on the same batch.</p>",
        ],
    )
