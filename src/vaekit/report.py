"""The HTML report: each claim of the lecture with a picture and a number, on the test set.

    write_report(["runs/demo/ae", "runs/demo/vae", "runs/demo/vae2d", "runs/demo/classifier"],
                 "runs/demo/report.html")

Sections, each where it applies to the runs given:
    1 training curves; test ELBO, NLL (importance-sampled), active units    every run
    2 reconstructions                                                       every run
    3 latent scatters, generated digits, classifier scores (AE vs VAE)      scores need a classifier
    4 linear and spherical interpolation, smoothness, confidence per frame  every non-2-D run
    5 the 2-D manifold beside its latent scatter                            a VAE with latent size 2
    6 what "good reconstruction" means: shifts, pixel MSE vs log p(x)       a VAE
    7 the reparameterization trick: encoder gradient norms                  a VAE

The report is one self-contained file (figures inlined as base64 PNG); the same PNGs are
written to figures/ beside it. Every number sits in an element with data-metric="name" and
data-value="the full float", so tests and scripts can read them back.
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vaekit import figures, io
from vaekit.classifier import Classifier, generation_scores, is_classifier_folder, load_classifier
from vaekit.data import DATASETS, Dataset, binarize
from vaekit.data import load as load_data
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, log_likelihood, posterior_means
from vaekit.latent import interpolate, normal_grid
from vaekit.objectives import kl_divergence


@dataclass(frozen=True)
class ReportSettings:
    n_eval: int = 2000  # test digits for ELBO, NLL, active units, reconstruction MSE
    iw_k: int = 1000  # importance samples per digit for the NLL
    n_gen: int = 2000  # generated digits per model for the classifier scores
    pairs: int = 3  # interpolation pairs
    steps: int = 10  # frames per interpolation, ends included
    shift_draws: int = 10  # binarizations averaged in section 6
    grad_draws: int = 20  # single-sample gradient estimates in section 7
    grad_batch: int = 100  # the batch they are measured on
    manifold_n: int = 20  # the 2-D manifold is manifold_n x manifold_n
    scatter_n: int = 2000  # test codes in the latent scatters
    seed: int = 0


QUICK = ReportSettings(
    n_eval=200,
    iw_k=50,
    n_gen=300,
    pairs=2,
    steps=8,
    shift_draws=2,
    grad_draws=5,
    grad_batch=50,
    manifold_n=12,
    scatter_n=500,
)

PAIR_LABELS = [(1, 0), (3, 6), (4, 9), (2, 7), (5, 8)]  # interpolation endpoints: first test digit of each label
SHIFTS = (1, 2, 3)


# ------------------------------------------------------------------------------------------- the runs


@dataclass
class Entry:
    """One latent-variable run in the report."""

    name: str
    path: Path
    model: torch.nn.Module
    metrics: list[dict]

    @property
    def is_vae(self) -> bool:
        return self.model.is_vae

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def kind(self) -> str:
        return ("VAE" if self.is_vae else "AE") + (" 2-D" if self.latent_dim == 2 else "")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind}, D={self.latent_dim})"

    @property
    def sampler_text(self) -> str:
        return (
            "draws from the prior N(0, I)"
            if self.is_vae
            else "draws from a Gaussian N(m, S) fitted to its training codes"
        )


def load_runs(paths: list[Path]) -> tuple[list[Entry], tuple[Path, Classifier] | None]:
    """Run folders -> latent-model entries (in the order given) and the classifier, if one is among them."""
    import vaekit

    entries, clf, names = [], None, set()
    for p in map(Path, paths):
        if is_classifier_folder(p):
            if clf is None:
                clf = (p, load_classifier(p))
            continue
        model = vaekit.load(p)
        name = p.name or str(p)
        while name in names:
            name = f"{p.parent.name}/{name}"
        names.add(name)
        entries.append(Entry(name, p, model, io.read_metrics(p)))
    if not entries:
        raise VaekitError("report: no VAE or AE run among " + ", ".join(map(str, paths)))
    return entries, clf


def test_set(entries: list[Entry], source: str | None) -> tuple[Dataset, str]:
    """The held-out data the report measures on: `source`'s test split, else the first run's data's."""
    source = source or entries[0].model.run_config.train.data
    ds = load_data(source, "test")
    where = f"{source} test split" if source in DATASETS else f"{source} (a file: no separate test split)"
    for e in entries:
        if tuple(e.model.config.input_shape) != ds.shape:
            raise VaekitError(
                f"report: {e.path} expects examples of shape {tuple(e.model.config.input_shape)}, "
                f"{source} has {ds.shape}"
            )
    return ds, where


def binarized(model, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x as the model saw it in training: a Bernoulli draw when it was trained on binarized data."""
    return binarize(x, g) if model.run_config.train.binarize != "none" else x


# ------------------------------------------------------------------------------------------- measures


@torch.inference_mode()
def reconstruction_mse(model, x: torch.Tensor) -> float:
    """Mean squared pixel error between greyscale x (N, *shape) and its reconstruction (decoded mean at
    the posterior mean), per pixel."""
    return float(
        torch.cat(
            [
                ((model.reconstruct(x[i : i + 1000]) - x[i : i + 1000]) ** 2).flatten(1).mean(1)
                for i in range(0, len(x), 1000)
            ]
        ).mean()
    )


def path_smoothness(frames: torch.Tensor) -> torch.Tensor:
    """Pixel change between consecutive frames (T, *shape): mean |x_{t+1} - x_t| per pixel, (T-1,)."""
    return (frames[1:] - frames[:-1]).abs().flatten(1).mean(1)


def shift_right(x: torch.Tensor, s: int) -> torch.Tensor:
    """x (..., H, W) moved s pixels to the right, zeros coming in from the left."""
    if s == 0:
        return x.clone()
    out = torch.zeros_like(x)
    out[..., s:] = x[..., :-s]
    return out


@torch.no_grad()
def shift_study(model, x: torch.Tensor, other: torch.Tensor, k: int, draws: int, seed: int, shifts=SHIFTS) -> dict:
    """Section 6: x, x shifted by each of `shifts` pixels, and another image `other`, each (*shape).

    Returns per image (1 + len(shifts) + 1 of them): pixel MSE to x (greyscale) and the model's
    importance-sampled log p in nats. For a model trained on binarized data, log p is averaged over
    `draws` Bernoulli draws of x (each draw then shifted exactly like the greyscale image) and of `other`.
    """
    images = torch.stack([x] + [shift_right(x, s) for s in shifts] + [other])  # (M, *shape)
    mse = ((images - x) ** 2).flatten(1).mean(1)
    g = torch.Generator().manual_seed(seed)
    gk = torch.Generator().manual_seed(seed + 1)
    binary = model.run_config.train.binarize != "none"
    logp = torch.zeros(len(images), dtype=torch.float64)
    n = draws if binary else 1
    for _ in range(n):
        b, bo = (binarize(x, g), binarize(other, g)) if binary else (x, other)
        batch = torch.stack([b] + [shift_right(b, s) for s in shifts] + [bo])
        logp += log_likelihood(model, batch, k, generator=gk).double()
    return {"images": images, "mse": mse.tolist(), "logp": (logp / n).tolist()}


def reparam_gradients(model, x: torch.Tensor, draws: int, seed: int) -> dict:
    """Section 7: the encoder's gradient of the reconstruction term E_q[log p(x|z)] (batch mean, nats),
    estimated `draws` times from one sample each, three ways:

        reparam   z = mu + sigma * eps, gradient through z (Kingma & Welling 2013, eq. 10)
        detached  z drawn without the trick (no path from z back to the encoder): exactly zero
        score     the score-function (REINFORCE) estimator  E_q[log p(x|z) grad log q(z|x)], unbiased
                  but noisy (Williams 1992)

    Returns for each: "norm" (mean over draws of the single-sample gradient norm) and "rel_std"
    (sqrt(mean |g - g_mean|^2) / |g_mean|: the estimator's noise relative to its mean; None when the
    mean is zero); plus "kl_norm", the gradient norm of the analytic KL, which reaches the encoder
    with or without the trick.
    """
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()

    def grad(loss):
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])

    torch.manual_seed(seed)
    est = {"reparam": [], "detached": [], "score": []}
    with torch.enable_grad():
        for _ in range(draws):
            q = model.encode(x)
            est["reparam"].append(grad(model.decode(q.rsample()).log_prob(x).mean()))
            q = model.encode(x)
            z = q.rsample().detach()
            est["detached"].append(grad(model.decode(z).log_prob(x).mean()))
            q = model.encode(x)
            z = q.rsample().detach()
            f = model.decode(z).log_prob(x).detach()  # (B,)
            est["score"].append(grad((f * q.log_prob(z)).mean()))
        kl_norm = float(grad(kl_divergence(model.prior, model.encode(x))[0].mean()).norm())  # the prior's KL
    model.train(was_training)
    out = {"kl_norm": kl_norm, "draws": draws, "batch": len(x)}
    for name, gs in est.items():
        g = torch.stack(gs)  # (draws, P)
        mean = g.mean(0)
        spread = float((g - mean).pow(2).sum(1).mean().sqrt())
        out[name] = {
            "norm": float(g.norm(dim=1).mean()),
            "rel_std": spread / float(mean.norm()) if float(mean.norm()) > 0 else None,
        }
    return out


def _pair_indices(y: torch.Tensor | None, n_pairs: int, n: int) -> list[tuple[int, int]]:
    if y is None:
        return [(2 * i, 2 * i + 1) for i in range(n_pairs)]
    pairs = []
    for a, b in PAIR_LABELS:
        ia, ib = (y[:n] == a).nonzero(), (y[:n] == b).nonzero()
        if len(ia) and len(ib):
            pairs.append((int(ia[0]), int(ib[0])))
        if len(pairs) == n_pairs:
            break
    return pairs


# ------------------------------------------------------------------------------------------- HTML bits


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
        text = f"{int(v)}" if digits == 0 else f"{v:.{digits}f}"
        return f'<span class="num" data-metric="{html.escape(key)}" data-value="{v!r}">{text}{suffix}</span>'

    def figure(self, name: str, path: Path, caption: str) -> str:
        self.figures[name] = path
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
            f'data-figure="{html.escape(name)}"><figcaption>{caption}</figcaption></figure>'
        )

    def table(self, head: list[str], rows: list[list[str]], cls: str = "") -> str:
        th = "".join(f"<th>{h}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'

    def section(self, number: int, anchor: str, title: str, body: list[str]) -> None:
        self.add(f'<section id="{anchor}" data-section="{number}"><h2>{number}. {title}</h2>', *body, "</section>")


def _esc(s) -> str:
    return html.escape(str(s))


def _x_times(lo: float, hi: float) -> str:
    return f"{hi / lo:.1f}x" if lo > 0 else "infinitely"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555} .claim{background:#f6f9ff;border-left:3px solid #4a7bd0;padding:.5em .8em}
.claim:not([data-verdict])::before{content:'Claim: ';font-weight:600}
.claim[data-verdict]{border-left-color:#2a9d4a;background:#f4fbf6}
.claim[data-verdict]::before{content:'Measured: ';font-weight:600}
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
                _esc(e.label),
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
        ok = all(evals[e.name]["nll"] <= -evals[e.name]["elbo"] + 1e-6 for e in vaes)
        gaps = ", ".join(f"{_esc(e.name)} {-evals[e.name]['elbo'] - evals[e.name]['nll']:.2f}" for e in vaes)
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
            f"{_esc(where)}, binarized once with a fixed seed for the binarized models. NLL = -log p(x) estimated "
            f"by importance sampling with k = {page.num('eval.k', s.iw_k, 0)} posterior samples per digit "
            f'(Burda et al. 2015); an AE defines no density, so it has no ELBO or NLL: its column "E_q log p(x|z)" '
            f"is its reconstruction log-likelihood. Active units: latent dimensions whose posterior mean varies "
            f"across the data (variance > 0.01). Recon MSE: mean squared pixel error of the greyscale digit vs the "
            f"decoded mean at the posterior mean.</p>",
            bound,
        ],
    )


def _section_recon(page: Page, entries, x_eval) -> None:
    x = x_eval[:16]
    rows = [("test digits", x)] + [(e.label, e.model.reconstruct(x)) for e in entries]
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
            f"<p>Lowest reconstruction error: {_esc(best.label)}, MSE "
            f"{page.metrics[f'{best.name}.recon_mse']:.4f} per pixel.</p>",
        ],
    )


def _section_latent(page: Page, entries, main, clf, x_eval, y_eval, ds, s: ReportSettings) -> dict:
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(s.seed)
    xs = x_eval[: s.scatter_n]
    labels = None if y_eval is None else y_eval[: s.scatter_n].numpy()
    panels = []
    for e in main:
        z = posterior_means(e.model, xs).numpy()
        extra = e.model.latent_sampler(min(500, s.n_gen), g).numpy()
        if e.latent_dim == 2:
            xy, ex, how, xl, yl = z, extra, "the 2-D latent itself", "z1", "z2"
        else:
            pca = PCA(2, random_state=s.seed).fit(z)
            xy, ex = pca.transform(z), pca.transform(extra)
            share = 100 * pca.explained_variance_ratio_.sum()
            how, xl, yl = f"PCA projection ({share:.0f}% of variance)", "PC 1", "PC 2"
        panels.append(
            {
                "title": f"{e.label}: test codes, {how}",
                "xy": xy,
                "labels": labels,
                "xlabel": xl,
                "ylabel": yl,
                "extra": ex,
                "extra_label": e.sampler_text,
            }
        )
    scatter = figures.latent_scatter(panels, page.fig_dir / "latent_scatter.png")
    gens = {e.name: e.model.sample(s.n_gen, torch.Generator().manual_seed(s.seed + 1)) for e in entries}
    samples = figures.sample_panels(
        [(f"{e.label}:\n{e.sampler_text}", gens[e.name][:100]) for e in entries], page.fig_dir / "samples.png"
    )
    body = [
        '<p class="claim">Problem 1: an autoencoder puts codes wherever reconstruction is easiest, in clumps '
        "with empty space between them; nothing tells it what lies in the gaps. To generate with an AE we must "
        "invent a distribution over codes (here: a Gaussian fitted to its training codes) and its draws land "
        "in the gaps, where the decoder was never trained. The VAE's KL term pulls the codes towards the "
        "prior N(0, I), so prior draws land where the decoder has seen data.</p>",
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
            "stand-in); the VAE's come from its prior N(0, I).",
        ),
    ]
    scores = {}
    if clf is not None:
        cpath, c = clf
        n_ref = min(s.n_gen, len(ds) // 2)
        x_ref = ds.batch(slice(0, n_ref))
        x_ref2 = ds.batch(slice(n_ref, 2 * n_ref))
        for e in entries:
            scores[e.name] = generation_scores(c, gens[e.name], x_ref)
        scores["real"] = generation_scores(c, x_ref2, x_ref)
        cols = [(e.name, _esc(e.label)) for e in entries] + [("real", f"real test digits ({n_ref})")]
        rows = [
            ["mean max-class confidence"]
            + [page.num(f"{k}.gen_confidence", scores[k]["confidence"], 3) for k, _ in cols],
            ["class coverage"] + [page.num(f"{k}.gen_coverage", scores[k]["coverage"], 3) for k, _ in cols],
            ["Frechet distance (classifier features)"]
            + [page.num(f"{k}.gen_frechet", scores[k]["frechet"], 2) for k, _ in cols],
            ["predicted labels 0..9"] + [" ".join(map(str, scores[k]["label_counts"])) for k, _ in cols],
        ]
        head = ["measure"] + [label for _, label in cols]
        body += [
            f"<p>A reference classifier ({_esc(cpath.name)}: an MLP "
            f"{'-'.join(map(str, [math.prod(c.config.input_shape), *c.config.hidden, c.config.classes]))} "
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
        ae, vae = _ae_and_vae(main)
        if ae is not None and vae is not None:
            body.append(_verdict(scores[ae.name], scores[vae.name], ae, vae))
    page.section(3, "gaps", "Problem 1: gaps in the AE latent space", body)
    return scores


def _ae_and_vae(entries: list[Entry]) -> tuple[Entry | None, Entry | None]:
    """The first autoencoder and the first VAE among `entries` (None where there is none)."""
    return (next((e for e in entries if not e.is_vae), None), next((e for e in entries if e.is_vae), None))


def _verdict(a: dict, v: dict, ae: Entry, vae: Entry) -> str:
    """The AE-vs-VAE sentence, from the numbers."""
    fa, fv = a["frechet"], v["frechet"]
    parts = []
    if fv < fa:
        parts.append(
            f"The VAE wins on the Frechet distance by {fa - fv:.2f} ({fv:.2f} vs {fa:.2f}, {_x_times(fv, fa)} lower)"
        )
    else:
        parts.append(f"The AE wins on the Frechet distance by {fv - fa:.2f} ({fa:.2f} vs {fv:.2f})")
    ca, cv = a["confidence"], v["confidence"]
    who = "VAE" if cv > ca else "AE"
    parts.append(
        f"the {who}'s digits are the more recognisable (mean confidence {cv:.3f} for the VAE vs "
        f"{ca:.3f} for the AE, a difference of {abs(cv - ca):.3f})"
    )
    ka, kv = a["coverage"], v["coverage"]
    who = "VAE" if kv > ka else "AE"
    parts.append(f"and the {who} covers the classes more evenly (coverage {kv:.3f} vs {ka:.3f})")
    wins = sum([fv < fa, cv > ca, kv > ka])
    note = (
        ""
        if fv < fa
        else " A full-covariance Gaussian fitted to the AE's codes is a strong stand-in for a prior, not a blind "
        'guess: sampling an AE this way is competitive with a VAE (Ghosh et al. 2020, "From Variational to '
        "Deterministic Autoencoders\", found the same); the VAE's advantage is that it needs no such "
        "after-the-fact fit, and that it has a likelihood (section 1)."
    )
    return (
        f'<p class="claim" data-verdict="{wins}">{"; ".join(parts)}. The VAE wins {wins} of the 3 '
        f"measures ({_esc(vae.name)} vs {_esc(ae.name)}).{note}</p>"
    )


def _section_interp(page: Page, main, clf, x_eval, y_eval, s: ReportSettings) -> None:
    pairs = _pair_indices(y_eval, s.pairs, len(x_eval))
    c = clf[1] if clf is not None else None
    stats = {}  # (name, mode) -> (changes, confidences)
    body = [
        '<p class="claim">Walking in a VAE\'s latent space between two digits gives a sequence of '
        "plausible digits that changes gradually; in an AE's, the path can cross gaps where the decoder "
        "produces blurs or sudden jumps. Spherical interpolation (slerp) keeps the norm of the code near "
        "that of typical prior draws, where a straight line passes closer to the origin.</p>"
    ]
    details = []
    for p, (i, j) in enumerate(pairs):
        rows, caps, conf_rows = [], [], []
        for e in main:
            z = posterior_means(e.model, x_eval[[i, j]])
            for mode in ("linear", "spherical"):
                with torch.inference_mode():
                    frames = e.model.decode(interpolate(z[0], z[1], s.steps, mode == "spherical")).mean
                ch, conf = path_smoothness(frames), None
                cap = [""] * s.steps
                if c is not None:
                    prob = c.predict_proba(frames)
                    conf, lab = prob.max(-1)
                    cap = [f"{int(l_)}: {float(v_):.2f}" for l_, v_ in zip(lab, conf)]
                    conf_rows.append(
                        [f"{_esc(e.name)} {mode}"]
                        + [page.num(f"{e.name}.interp_{mode}.pair{p}.frame{t}", conf[t], 2) for t in range(s.steps)]
                    )
                rows.append((f"{e.name}\n{mode}", frames))
                caps.append(cap)
                old = stats.get((e.name, mode), ([], []))
                stats[(e.name, mode)] = (old[0] + ch.tolist(), old[1] + ([] if conf is None else conf.tolist()))
        lab = "" if y_eval is None else f" (a {int(y_eval[i])} to a {int(y_eval[j])})"
        path = figures.image_rows(
            rows, page.fig_dir / f"interpolation_{p + 1}.png", captions=caps if c else None, size=0.7
        )
        body.append(
            page.figure(
                f"interpolation_{p + 1}",
                path,
                f"Test digits {i} and {j}{lab}: decoded means along linear and spherical paths "
                f"between their codes ({s.steps} frames, ends included)"
                + ("; under each frame, the classifier's label and confidence." if c else "."),
            )
        )
        if conf_rows:
            details.append(
                f"<p>Pair {p + 1}, test digits {i} and {j}{lab}:</p>"
                + page.table(["path"] + [f"frame {t}" for t in range(s.steps)], conf_rows)
            )
    rows = []
    for (name, mode), (ch, conf) in stats.items():
        ch = np.asarray(ch)
        rows.append(
            [
                f"{_esc(name)}",
                mode,
                page.num(f"{name}.interp_{mode}.mean_change", ch.mean(), 4),
                page.num(f"{name}.interp_{mode}.max_change", ch.max(), 4),
                page.num(f"{name}.interp_{mode}.max_over_mean", ch.max() / max(ch.mean(), 1e-12), 2),
                page.num(f"{name}.interp_{mode}.mean_confidence", np.mean(conf) if conf else None, 3),
                page.num(f"{name}.interp_{mode}.min_confidence", np.min(conf) if conf else None, 3),
            ]
        )
    body += [
        page.table(
            ["run", "path", "mean pixel change", "max pixel change", "max / mean", "mean confidence", "min confidence"],
            rows,
        ),
        f'<p class="meta">Pixel change between consecutive frames: mean |x_t+1 - x_t| over pixels (values in '
        f'[0, 1]); "mean" and "max" over the {s.steps - 1} steps of all {len(pairs)} pairs. A smooth path '
        f"spreads its change evenly (max / mean near 1); a jump shows as a large max. Confidence: the "
        f"classifier's top probability per frame, over all frames of all pairs; a low minimum marks frames "
        f"that look like no digit.</p>",
    ]
    ae, vae = _ae_and_vae(main)
    if ae is not None and vae is not None:
        body.append(_interp_verdict(stats, ae.name, vae.name))
    if details:
        body.append(
            "<details><summary>classifier confidence of every frame</summary>" + "".join(details) + "</details>"
        )
    page.section(4, "interpolation", "Interpolation", body)


def _interp_verdict(stats: dict, ae: str, vae: str) -> str:
    """The AE-vs-VAE sentence for interpolation, from the numbers: evenness of the steps, worst frame."""
    parts, wins = [], 0
    for mode in ("linear", "spherical"):
        (ca, fa), (cv, fv) = stats[(ae, mode)], stats[(vae, mode)]
        ra, rv = max(ca) / max(np.mean(ca), 1e-12), max(cv) / max(np.mean(cv), 1e-12)
        wins += rv < ra
        text = (
            f"{mode.capitalize()} paths: the largest step is {rv:.2f}x the mean step for the VAE and {ra:.2f}x for the "
            f"AE (the {'VAE' if rv < ra else 'AE'} changes more evenly)"
        )
        if fa and fv:
            wins += min(fv) > min(fa)
            text += f", and the least recognisable frame scores {min(fv):.2f} for the VAE vs {min(fa):.2f} for the AE"
        parts.append(text)
    n = 4 if stats[(ae, "linear")][1] else 2
    return (
        f'<p class="claim" data-verdict="{wins}">{". ".join(parts)}. The VAE wins {wins} of these {n} '
        f"comparisons ({_esc(vae)} vs {_esc(ae)}).</p>"
    )


def _section_manifold(page: Page, e: Entry, x_eval, y_eval, s: ReportSettings) -> None:
    n = s.manifold_n
    zg = normal_grid(n)
    with torch.inference_mode():
        imgs = e.model.decode(zg).mean
    axis = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n, dtype=torch.float64)).numpy()
    xs = x_eval[: s.scatter_n]
    z = posterior_means(e.model, xs)
    lo, hi = float(axis[0]), float(axis[-1])
    inside = float(((z >= lo) & (z <= hi)).all(1).float().mean())
    path = figures.manifold(
        imgs,
        n,
        axis,
        z.numpy(),
        None if y_eval is None else y_eval[: s.scatter_n].numpy(),
        page.fig_dir / "manifold.png",
    )
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
                f"{_esc(e.label)}. Left: decoded means on an {n} x {n} grid, "
                f"z = Phi^-1(q) for q evenly spaced in [0.05, 0.95] on each axis. Right: the posterior means of "
                f"{len(xs)} test digits, coloured by digit; the dashed square is the extent of the grid.",
            ),
            f"<p>{page.num(f'{e.name}.manifold_inside', 100 * inside, 1, '%')} of the test codes fall inside the "
            f"plotted square (the prior puts 81% there). Test NLL of this model: "
            f"{page.metrics.get(f'{e.name}.nll', float('nan')):.2f} nats.</p>",
        ],
    )


def _section_shift(page: Page, e: Entry, clf, x_eval, y_eval, s: ReportSettings) -> None:
    x = x_eval[0]
    mse = ((x_eval - x) ** 2).flatten(1).mean(1)
    mse[0] = math.inf
    if y_eval is not None:  # another class, and (with a classifier) one it recognises as that class
        other = y_eval != y_eval[0]
        if clf is not None:
            other &= clf[1].predict(x_eval) == y_eval
        mse = torch.where(other, mse, torch.full_like(mse, math.inf))
    j = int(mse.argmin())
    st = shift_study(e.model, x, x_eval[j], s.iw_k, s.shift_draws, s.seed)
    names = ["original"] + [f"shifted {k} px" for k in SHIFTS] + ["different digit"]
    keys = ["orig"] + [f"shift{k}" for k in SHIFTS] + ["other"]
    caps = [f"MSE {m:.4f}\nlog p {lp:.1f}" for m, lp in zip(st["mse"], st["logp"])]
    pred = None
    if clf is not None:
        prob = clf[1].predict_proba(st["images"])
        pred = (prob.argmax(-1), prob.max(-1).values)
        caps = [f"{c}\n{int(l_)}: {float(p_):.2f}" for c, l_, p_ in zip(caps, *pred)]
    path = figures.image_rows(
        [("", st["images"])], page.fig_dir / "shift.png", captions=[caps], col_titles=names, size=1.3
    )
    rows = []
    for i, (nm, k) in enumerate(zip(names, keys)):
        rows.append(
            [nm, page.num(f"shift.{k}.mse", st["mse"][i], 4), page.num(f"shift.{k}.logp", st["logp"][i], 2)]
            + ([f"{int(pred[0][i])}", page.num(f"shift.{k}.confidence", pred[1][i], 3)] if pred else [])
        )
    head = ["image", "pixel MSE to the original", f"log p(x) under {_esc(e.name)} (nats)"] + (
        ["classifier label", "confidence"] if pred else []
    )
    m, lp = st["mse"], st["logp"]
    worse = [k for k in SHIFTS if m[SHIFTS.index(k) + 1] > m[-1]]
    mse_text = (
        f"By pixel MSE, the digit shifted by {worse[0]} pixel{'s' if worse[0] > 1 else ''} is already "
        f"farther from the original ({m[SHIFTS.index(worse[0]) + 1]:.4f}) than a different digit "
        f"({m[-1]:.4f}): pixel error calls the same digit, moved slightly, a worse copy than another digit."
        if worse
        else f"Pixel MSE grows with the shift ({', '.join(f'{v:.4f}' for v in m[1:-1])} for 1-3 pixels) "
        f"towards that of a different digit ({m[-1]:.4f})."
    )
    drop = lp[0] - lp[len(SHIFTS)]
    lp_text = (
        f"The VAE's log-likelihood falls by {drop:.1f} nats from the original to the {SHIFTS[-1]}-pixel "
        f"shift, and gives the different (but centred, typical) digit {lp[-1]:.1f} nats against "
        f"{lp[0]:.1f} for the original: log p(x) scores how typical an image is of the training data, not "
        f"how close it is to a given digit."
    )
    cl_text = ""
    if pred:
        same = all(int(pred[0][i]) == int(pred[0][0]) for i in range(len(SHIFTS) + 1))
        cl_text = (
            " The classifier "
            + ("keeps the original's label through every shift" if same else "changes its label under some shifts")
            + f" and labels the different digit {int(pred[0][-1])}."
        )
    binz = (
        (
            f"Log p(x) is importance-sampled (k = {s.iw_k}) and averaged over {s.shift_draws} Bernoulli "
            "binarizations of the "
            "greyscale digit, each shifted exactly as the greyscale image, since the model is a Bernoulli model "
            "of binary digits; MSE is on the greyscale images."
        )
        if e.model.run_config.train.binarize != "none"
        else f"Log p(x) is importance-sampled (k = {s.iw_k})."
    )
    page.section(
        6,
        "good-reconstruction",
        'Problem 2: what "good reconstruction" means',
        [
            '<p class="claim">A reconstruction loss in pixel space decides what counts as "similar". A digit moved '
            "by a pixel or two is the same digit to us, but not to pixel error.</p>",
            page.figure(
                "shift",
                path,
                f"Test digit 0, shifted right by 1-3 pixels, and the test digit of another "
                f"class nearest to it in pixel MSE (test digit {j}"
                + ("; among those the classifier also assigns to their own class" if pred else "")
                + "). Under each: pixel MSE to the original, "
                f"log p(x) under {_esc(e.name)}" + (", classifier label and confidence." if pred else "."),
            ),
            page.table(head, rows),
            f'<p>{mse_text} {lp_text}{cl_text} Neither pixel MSE nor likelihood measures "the same digit": choose '
            f'the metric for the question. Pixel error for copying, log p(x) for "is this a plausible digit", '
            f"features of a trained network for semantic similarity, which is why section 3 compares generated "
            f"digits in classifier-feature space and not in pixels.</p>",
            f'<p class="meta">{binz}</p>',
        ],
    )


def _section_reparam(page: Page, e: Entry, x_bin, s: ReportSettings) -> None:
    r = reparam_gradients(e.model, x_bin[: s.grad_batch], s.grad_draws, s.seed)
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
    ratio = r["score"]["rel_std"] / r["reparam"]["rel_std"] if r["reparam"]["rel_std"] else float("nan")
    page.section(
        7,
        "reparameterization",
        "The reparameterization trick",
        [
            '<p class="claim">Sampling z ~ q(z|x) is not differentiable in the encoder\'s parameters. Writing '
            "z = mu(x) + sigma(x) * eps with eps ~ N(0, I) moves the randomness into eps, so the gradient of the "
            "reconstruction term flows through z into the encoder.</p>",
            page.table(
                [
                    "gradient of E_q[log p(x|z)] w.r.t. the encoder",
                    "norm (single-sample, mean of draws)",
                    "relative std across draws",
                ],
                rows,
            ),
            f"<p>Measured on one batch of {r['batch']} binarized test digits with {_esc(e.name)}, {r['draws']} "
            f"single-sample estimates each. Without the trick the sampled z is a constant to autograd and the encoder "
            f"gets exactly zero gradient from the reconstruction term: only the analytic KL (gradient norm "
            f"{page.num('reparam.kl_norm', r['kl_norm'], 3)}) would reach it, and that term only pulls every q(z|x) "
            f"towards the prior. The score-function estimator gets a gradient without the trick, but its noise is "
            f"{ratio:.0f}x that of the reparameterized one on the same batch.</p>",
        ],
    )


# ------------------------------------------------------------------------------------------- assembly


@dataclass
class Report:
    html: str
    metrics: dict[str, float]
    figures: dict[str, Path]
    seconds: float


def build_report(
    runs: list[Path], fig_dir: Path, settings: ReportSettings | None = None, test_data: str | None = None
) -> Report:
    """Compute every section that applies to `runs` and render the HTML; figures go to `fig_dir`."""
    t0 = time.perf_counter()
    s = settings or ReportSettings()
    entries, clf = load_runs(runs)
    ds, where = test_set(entries, test_data)
    n = min(s.n_eval, len(ds))
    x_eval = ds.batch(slice(0, n))
    y_eval = None if ds.y is None else ds.y[:n]
    page = Page(Path(fig_dir))

    evals = {}
    for e in entries:
        cfg = e.model.run_config.train
        r = evaluate(
            e.model, ds.subset(slice(0, n)), binarize=cfg.binarize, iw_samples=s.iw_k if e.is_vae else 0, seed=s.seed
        )
        r["recon_mse"] = reconstruction_mse(e.model, x_eval)
        evals[e.name] = r

    main = [e for e in entries if e.latent_dim != 2] or entries
    twod = [e for e in entries if e.is_vae and e.latent_dim == 2]
    vae = next((e for e in main if e.is_vae), None) or (twod[0] if twod else None)

    _section_training(page, entries, evals, s, where, n)
    _section_recon(page, entries, x_eval)
    _section_latent(page, entries, main, clf, x_eval, y_eval, ds, s)
    _section_interp(page, main, clf, x_eval, y_eval, s)
    if twod:
        _section_manifold(page, twod[0], x_eval, y_eval, s)
    if vae is not None:
        _section_shift(page, vae, clf, x_eval, y_eval, s)
        x_bin = binarized(vae.model, x_eval, torch.Generator().manual_seed(s.seed))
        _section_reparam(page, vae, x_bin, s)

    seconds = time.perf_counter() - t0
    runs_html = ", ".join(f"<code>{_esc(e.path)}</code> ({_esc(e.kind)})" for e in entries)
    if clf is not None:
        runs_html += f", <code>{_esc(clf[0])}</code> (classifier)"
    nav = "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in _nav(page))
    settings_text = ", ".join(f"{k}={v}" for k, v in asdict(s).items())
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vaekit report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f'<h1>vaekit report</h1><p class="meta">Runs: {runs_html}. Measured on the {_esc(where)}. '
        f"Settings: {_esc(settings_text)}. Computed in {seconds:.0f} s.</p><nav><ul>{nav}</ul></nav>"
        + "".join(page.parts)
        + "</body></html>\n"
    )
    return Report(doc, page.metrics, page.figures, seconds)


def _nav(page: Page) -> list[tuple[str, str]]:
    import re

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
