"""The HTML report: each claim of the lecture with a picture and a number, on the test set.

    write_report(["runs/demo/ae", "runs/demo/vae", "runs/demo/ae2d", "runs/demo/vae2d", "runs/demo/classifier"],
                 "runs/demo/report.html")

At the top, the claims table (report_claims.py: claims C1-C8, each measured AE vs VAE, with its verdict);
then the sections, each where it applies to the runs given, the claims ones opening with their claim and
the measured verdict:
    1 training curves; test ELBO, NLL (importance-sampled), active units    every run
    2 reconstructions                                                       every run
    3 gaps (C1: hole maps, the latent space forming over training) and      scores need a classifier
      generating by sampling (C3: latent scatters, generated digits, scores)
    4 interpolation (C4), nearby codes decode to the same digit (C2)        every non-2-D run
    5 the 2-D manifold beside its latent scatter                            a VAE with latent size 2
    6 what "good reconstruction" means: shifts, pixel MSE vs log p(x) (C5)  a VAE
    7 the KL term: the two forms of the ELBO (C6), codes vs the prior (C8)  a VAE, or an AE at D=2 or 20
    8 the reparameterization trick: encoder gradients, REINFORCE (C7)       a VAE

The report is one self-contained file (figures inlined as base64 data URIs: PNGs, and the animation as a
GIF); the same files are written to figures/ beside it. Every number sits in an element with
data-metric="name" and data-value="the full float", so tests and scripts can read them back.

Numbers apart from rendering: studies.py, vae_studies.py and claims.py measure and return numbers; this
module (the page, sections 1-2, the assembly), report_sections.py (sections 3-6, 8) and report_claims.py
(the claims table, the claim paragraphs, section 7) only render them.
"""

from __future__ import annotations

import base64
import html
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vaekit import figures, io
from vaekit.report_claims import (
    Claims,
    claim_html,
    claims_html,
    gaps_html,
    measure,
    nearby_html,
    section_kl,
    section_reparam,
)
from vaekit.report_conditional import section_conditional
from vaekit.report_sections import (
    esc,
    kind,
    label,
    section_interp,
    section_latent,
    section_manifold,
    section_shift,
)
from vaekit.studies import (
    QUICK,
    ReportSettings,
    ae_and_vae,
    binarized,
    evaluate_runs,
    interp_study,
    latent_study,
    load_runs,
    manifold_study,
    test_set,
)
from vaekit.vae_studies import contrast_index, read_shift, reparam_gradients, shift_study

__all__ = ["QUICK", "Report", "ReportSettings", "build_report", "save_report", "write_report"]

# ------------------------------------------------------------------------------------------- HTML bits

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


@dataclass
class Page:
    """The report being written: HTML parts, every number by name, figures by name."""

    fig_dir: Path
    parts: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)

    def add(self, *chunks: str) -> None:
        self.parts.extend(chunks)

    def num(self, key: str, value, digits: int = 2, suffix: str = "") -> str:
        """A number as HTML, recorded under `key`; None becomes a dash (and no metric)."""
        if value is None:
            return '<span class="na">&ndash;</span>'
        v = float(value)
        self.metrics[key] = v
        text = f"{v:.{digits}f}"  # digits 0: rounded, not truncated
        return f'<span class="num" data-metric="{html.escape(key)}" data-value="{v!r}">{text}{suffix}</span>'

    def figure(self, name: str, path: Path, caption: str) -> str:
        """The image at `path` inlined as a data URI (its MIME type from the suffix: PNG, GIF), with `caption`."""
        self.figures[name] = path
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        mime = MIME.get(Path(path).suffix.lower(), "image/png")
        return (
            f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}" '
            f'data-figure="{html.escape(name)}"><figcaption>{caption}</figcaption></figure>'
        )

    def table(self, head: list[str], rows: list[list[str]], cls: str = "") -> str:
        th = "".join(f"<th>{h}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'

    def section(self, number: int, anchor: str, title: str, body: list[str]) -> None:
        self.add(f'<section id="{anchor}" data-section="{number}"><h2>{number}. {title}</h2>', *body, "</section>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555} .claim{background:#f6f9ff;border-left:3px solid #4a7bd0;padding:.5em .8em}
p.claim:not([data-verdict])::before{content:'Claim: ';font-weight:600}
.claim[data-verdict]{border-left-color:#2a9d4a;background:#f4fbf6}
.claim[data-verdict]::before{content:'Measured: ';font-weight:600}
div.claim p{margin:.3em 0} div.claim[data-holds=true]{border-left-color:#2a9d4a;background:#f4fbf6}
div.claim[data-holds=false]{border-left-color:#c0392b;background:#fdf4f3}
div.claim[data-holds=partly]{border-left-color:#d68910;background:#fef9f0}
div.claim[data-holds=none]{border-left-color:#999;background:#f6f6f6}
.holds{font-weight:600;padding:0 .3em;border-radius:3px;color:#fff;background:#999;white-space:nowrap}
.holds[data-holds=true]{background:#2a9d4a} .holds[data-holds=false]{background:#c0392b}
.holds[data-holds=partly]{background:#d68910}
table.claims{font-size:.8em} table.claims td,table.claims th{text-align:left;vertical-align:top}
table.claims td:nth-child(2),table.claims td:nth-child(4){min-width:11em} table.claims td:nth-child(8){min-width:16em}
table.claims td:nth-child(5),table.claims td:nth-child(6){min-width:8em} dt{font-weight:600;float:left;width:2.5em}
dd{margin-left:2.5em;margin-bottom:.4em;font-size:.92em}
.na{color:#999} .meta{color:#666;font-size:.9em} details{margin:.5em 0} code{background:#f4f4f4;padding:0 .2em}
nav ul{columns:2;list-style:none;padding-left:0}
"""


# ------------------------------------------------------------------------------------------- sections


def _section_training(page: Page, entries, evals, s: ReportSettings, where: str, n: int) -> None:
    hist = {e.name: e.metrics for e in entries}
    path = figures.training_curves(
        hist, page.fig_dir / "training_curves.png", autoencoders={e.name for e in entries if not e.is_vae}
    )
    rows = []
    for e in entries:
        r, name = evals[e.name], e.name
        rows.append(
            [
                esc(label(e)),
                page.num(f"{name}.epochs", len(e.metrics), 0),
                page.num(f"{name}.train_seconds", e.metrics[-1]["seconds"] if e.metrics else None, 0),
                page.num(f"{name}.elbo", r["elbo"] if e.is_vae else None),
                page.num(f"{name}.recon", r["recon"]),
                page.num(f"{name}.kl", r["kl"] if e.is_vae else None),
                page.num(f"{name}.nll", r["nll"]),
                (page.num(f"{name}.active_units", r["active_units"], 0) + f" / {e.latent_dim}")
                if e.is_vae
                else page.num(None, None),
                page.num(f"{name}.recon_mse", r["recon_mse"], 4),
            ]
        )
    tab = page.table(
        ["run", "epochs", "train s", "ELBO", "E_q log p(x|z)", "KL", "NLL", "active units", "recon MSE"], rows
    )
    vaes = [e for e in entries if e.is_vae]
    bound = ""
    if vaes:
        ok = all(evals[e.name]["bound_holds"] for e in vaes)
        gaps = ", ".join(f"{esc(e.name)} {evals[e.name]['bound_gap']:.2f}" for e in vaes)
        bound = (
            f"<p>The NLL is below the negative ELBO for every VAE{' ' if ok else ' <b>except some</b> '}"
            f"(as it must be: the ELBO is a lower bound on log p(x)); the gap -ELBO - NLL, the part of "
            f"the bound lost to an imperfect posterior, is {gaps} nats.</p>"
        )
    page.section(
        1,
        "training",
        "Training",
        [
            '<p class="claim">A VAE is trained by maximising the ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)); '
            "the reconstruction term rises while the KL settles to the information the code carries.</p>",
            page.figure(
                "training_curves",
                path,
                "ELBO, reconstruction term and KL per epoch (solid: training mean "
                "over the epoch; dashed: validation). The AE appears in the middle panel only: it has no KL.",
            ),
            tab,
            f'<p class="meta">All in nats per digit on the first {page.num("eval.n", n, 0)} digits of the '
            f"{esc(where)}, binarized once with a fixed seed for the binarized models. NLL = -log p(x) estimated "
            f"by importance sampling with k = {page.num('eval.k', s.iw_k, 0)} posterior samples per digit "
            f'(Burda et al. 2015); an AE defines no density, so it has no ELBO or NLL: its column "E_q log p(x|z)" '
            f"is its reconstruction log-likelihood. Active units: latent dimensions whose posterior mean varies "
            f"across the data (variance > 0.01). Recon MSE: mean squared pixel error of the greyscale digit vs the "
            f"decoded mean at the posterior mean.</p>",
            bound,
        ],
    )


def _section_recon(page: Page, entries, x: torch.Tensor, recons: dict[str, torch.Tensor]) -> None:
    """Section 2: test digits x (16, *shape) and each run's reconstructions of them (run name -> images)."""
    rows = [("test digits", x)] + [(label(e), recons[e.name]) for e in entries]
    path = figures.image_rows(rows, page.fig_dir / "reconstructions.png", size=0.62)
    best = min(entries, key=lambda e: page.metrics[f"{e.name}.recon_mse"])
    page.section(
        2,
        "reconstructions",
        "Reconstructions",
        [
            '<p class="claim">Both models reconstruct test digits they never saw; the AE, whose only job is '
            "reconstruction, usually does it more sharply (a lower pixel error in the table above).</p>",
            page.figure(
                "reconstructions",
                path,
                "Top row: test digits (greyscale). Below: each model's "
                "reconstruction, the decoded mean at the posterior mean (for the AE, its code).",
            ),
            f"<p>Lowest reconstruction error: {esc(label(best))}, MSE "
            f"{page.metrics[f'{best.name}.recon_mse']:.4f} per pixel.</p>",
        ],
    )


# ------------------------------------------------------------------------------------------- assembly


@dataclass
class Report:
    html: str
    metrics: dict[str, float]
    figures: dict[str, Path]
    seconds: float
    claims: list = field(default_factory=list)  # the claims table: claims_table.Claim rows, C1-C8


def build_report(
    runs: list[Path], fig_dir: Path, settings: ReportSettings | None = None, test_data: str | None = None
) -> Report:
    """Compute every section that applies to `runs` and render the HTML; figures go to `fig_dir`."""
    t0 = time.perf_counter()
    s = settings or ReportSettings()
    entries, clf = load_runs(runs)
    cond = [e for e in entries if e.model.conditional]  # their own section; claims and sections 1-8 skip them
    entries = [e for e in entries if not e.model.conditional]
    ds, where = test_set(entries or cond, test_data)
    page = Page(Path(fig_dir))
    claims = _sections(page, entries, clf, ds, where, s) if entries else None
    if cond:
        section_conditional(page, cond, entries, clf, ds, s, 9)

    seconds = time.perf_counter() - t0
    runs_html = ", ".join(f"<code>{esc(e.path)}</code> ({esc(kind(e))})" for e in entries)
    runs_html += "".join(f", <code>{esc(e.path)}</code> (conditional {esc(kind(e))})" for e in cond)
    if clf is not None:
        runs_html += f", <code>{esc(clf[0])}</code> (classifier)"
    nav = "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in _nav(page))
    settings_text = ", ".join(f"{k}={v}" for k, v in asdict(s).items())
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vaekit report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f'<h1>vaekit report</h1><p class="meta">Runs: {runs_html}. Measured on the {esc(where)}. '
        f"Settings: {esc(settings_text)}. Computed in {seconds:.0f} s.</p>"
        + (claims_html(page, claims) if claims else "")
        + f"<nav><ul>{nav}</ul></nav>"
        + "".join(page.parts)
        + "</body></html>\n"
    )
    return Report(doc, page.metrics, page.figures, seconds, claims.rows if claims else [])


def _sections(page: Page, entries, clf, ds, where: str, s: ReportSettings) -> Claims:
    """The claims and sections 1-8 for the unconditional runs `entries`; returns the claims."""
    n = min(s.n_eval, len(ds))
    x_eval = ds.batch(slice(0, n))
    y_eval = None if ds.y is None else ds.y[:n]
    c = None if clf is None else clf[1]

    main = [e for e in entries if e.latent_dim != 2] or entries
    twod = [e for e in entries if e.is_vae and e.latent_dim == 2]
    vae = next((e for e in main if e.is_vae), None) or (twod[0] if twod else None)

    # the claims first (their numbers open sections 3-8); each study then runs just before its section renders
    claims = measure(entries, c, ds, s)
    _section_training(page, entries, evaluate_runs(entries, ds, n, s), s, where, n)
    with torch.inference_mode():
        recons = {e.name: e.model.reconstruct(x_eval[:16]) for e in entries}
    _section_recon(page, entries, x_eval[:16], recons)
    latent = latent_study(entries, main, c, x_eval, y_eval, ds, s)
    gaps, c3 = gaps_html(page, claims), claim_html(claims.row("C3"))
    section_latent(page, latent, entries, main, clf, ae_and_vae(main), s, [claim_html(claims.row("C1")), *gaps], c3)
    interp = interp_study(main, c, x_eval, y_eval, s)
    c4, nearby = claim_html(claims.row("C4")), nearby_html(page, claims)
    section_interp(page, interp, y_eval, c is not None, ae_and_vae(main), s, c4, nearby)
    if twod:
        section_manifold(page, twod[0], manifold_study(twod[0].model, x_eval, s), y_eval, s)
    if vae is not None:
        _section_shift(page, vae, claims, x_eval, y_eval, c, s)
    section_kl(page, claims, 7)
    if vae is not None:
        _section_reparam(page, vae, claims, x_eval, s)
    return claims


def _section_shift(page: Page, vae, claims: Claims, x_eval, y_eval, clf, s: ReportSettings) -> None:
    """Section 6 from the C5 measurement when `vae` is the claims' "vae" run, else from its own shift study."""
    c5 = claim_html(claims.row("C5"))
    sh = claims.res.shift
    if sh is not None and claims.key(vae) == "vae":
        section_shift(page, vae, sh["other_index"], sh, sh["reading"], claims.res.settings, c5)
        return
    j = contrast_index(x_eval, y_eval, clf)
    st = shift_study(vae.model, x_eval[0], x_eval[j], s.iw_k, s.shift_draws, s.seed)
    section_shift(page, vae, j, st, read_shift(st, clf), s, c5)


def _section_reparam(page: Page, vae, claims: Claims, x_eval, s: ReportSettings) -> None:
    """Section 8 from the C7 measurement of `vae` when the claims made one, else from its own."""
    r = claims.res.grads.get(claims.key(vae))
    if r is None:
        x_bin = binarized(vae.model, x_eval, torch.Generator().manual_seed(s.seed))
        r = reparam_gradients(vae.model, x_bin[: s.grad_batch], s.grad_draws, s.seed)
    section_reparam(page, vae, r, claim_html(claims.row("C7")), 8)


def _nav(page: Page) -> list[tuple[str, str]]:
    return re.findall(r'<section id="([^"]+)" data-section="\d+"><h2>([^<]+)</h2>', "".join(page.parts))


def save_report(report: Report, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write_text(output, report.html)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(output, 0o666 & ~umask)  # the temp file behind the atomic write is private; a report is to share
    return output


def write_report(
    runs: list[Path], output: Path, settings: ReportSettings | None = None, test_data: str | None = None
) -> Path:
    """The report for `runs` (run folders, and optionally a classifier folder) as one HTML file at
    `output`, figures also written to `output`'s folder/figures/. Returns `output`."""
    output = Path(output)
    return save_report(build_report(runs, output.parent / "figures", settings, test_data), output)
