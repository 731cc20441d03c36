"""The claims table: one Claim row per claim of the lecture, built from claims.measure_claims' results.

Each row's `reading` is generated from its numbers and its `holds`, so it never asserts what they
contradict, and it names the settings where a claim holds and where it does not. The decision rules are in
claims_table's docstring; the margins are sampling errors of the measures, or (C1) a fixed 5 points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vaekit.claims import PAIRS, ClaimResults

MC_QUIET = (
    " (the MC form is exact when q(z|x) is the true posterior, log p(x, z) - log q(z|x) = log p(x) for every z, "
    "so a well-fitted q makes it the quieter one: Roeder et al. 2017)"
)
HOLE_MARGIN = 0.05  # C1: the AE's hole (and empty-cell) fraction must exceed the VAE's by 5 points of the grid


@dataclass
class Claim:
    """One row of the claims table. `ae` and `vae`: measured numbers by setting (e.g. {"D=2": 0.31}), a
    number None where that run is missing; the whole column None where the claim has no AE (or VAE) side.
    `holds`: True, False, "partly" (holds in some settings or on some of its parts only), or None when
    nothing could be measured."""

    id: str
    claim: str
    setting: str
    measure: str
    ae: dict[str, float | None] | None
    vae: dict[str, float | None] | None
    holds: bool | str | None
    reading: str

    def __post_init__(self):  # plain Python numbers (JSON), whatever numpy or torch scalars were given
        for col in ("ae", "vae"):
            d = getattr(self, col)
            if d is not None:
                setattr(self, col, {k: None if v is None else float(v) for k, v in d.items()})
        if self.holds is not None and not isinstance(self.holds, str):
            self.holds = bool(self.holds)

    def to_dict(self) -> dict:
        return asdict(self)


def combine(verdicts: list) -> bool | str | None:
    """Per-setting verdicts (True, False, "partly", None = not measured) -> the row's `holds`."""
    v = [x if isinstance(x, str) else bool(x) for x in verdicts if x is not None]
    if not v:
        return None
    if all(x is True for x in v):
        return True
    if all(x is False for x in v):
        return False
    return "partly"


def ratio_margin(n: int) -> float:
    """The smallest ratio of two variances, each estimated from n draws, that is beyond twice its sampling
    error: each log-variance has standard error about sqrt(2 / (n - 1)), their difference sqrt(4 / (n - 1))."""
    return math.exp(2 * math.sqrt(4 / max(n - 1, 1)))


def _lower(ratio: float, n: int) -> str:
    """How a variance ratio other / ours, each from n draws, reads for ours."""
    m = ratio_margin(n)
    return "lower" if ratio > m else "higher" if ratio < 1 / m else "not clearly different"


def _f(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _missing(res: ClaimResults, names) -> str:
    gone = [n for n in names if n not in res.runs]
    return f"no {' or '.join(gone)} run" if gone else "no classifier"


def _say(holds, found: str, parts: list[str]) -> str:
    head = {True: "Holds", False: "Does not hold", "partly": "Holds in part", None: "Not measured"}[holds]
    return f"{head}{': ' + found if found else ''}. " + "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------- the rows


def c1_row(res: ClaimResults) -> Claim:
    h, st = res.holes, res.settings
    keys = ("hole fraction", "empty cells", "holes in empty cells")
    col = {k: dict.fromkeys(f"D=2 {q}" for q in keys) for k in ("ae2d", "vae2d")}
    for k in (k for k in col if k in h):
        col[k] |= dict(zip(col[k], (h[k].hole_fraction, h[k].empty_fraction, _nan_none(h[k].empty_holes))))
    if "ae2d" in h and "vae2d" in h:
        a, v = h["ae2d"], h["vae2d"]
        gaps, holes = a.empty_fraction - v.empty_fraction > HOLE_MARGIN, a.hole_fraction - v.hole_fraction > HOLE_MARGIN
        verdict = combine([gaps, holes])
        parts = [
            f"D=2: the AE's codes leave {a.empty_fraction:.0%} of their box's cells empty, the VAE's "
            f"{v.empty_fraction:.0%} ({'more gaps' if gaps else 'no more gaps'} for the AE)",
            f"holes: {a.hole_fraction:.1%} of the AE's grid vs {v.hole_fraction:.1%} of the VAE's (by confidence "
            f"alone {a.low_confidence:.1%} vs {v.low_confidence:.1%}; "
            + ("more" if holes else "not more beyond 5 points")
            + " for the AE)",
            f"{_pct(a.empty_holes)} of the AE's empty cells decode to a hole, {_pct(v.empty_holes)} of the VAE's",
        ]
    else:
        verdict, parts = None, [f"D=2: {_missing(res, ('ae2d', 'vae2d'))}"]
    return Claim(
        "C1",
        "An autoencoder's codes leave gaps in the latent space where the decoder draws no recognisable digit; a "
        "VAE's leave fewer.",
        f"ae2d vs vae2d (D=2), {st.grid}x{st.grid} grid over the 1st-99th percentile box of {st.n_codes} test codes",
        f"hole fraction: share of grid points whose decoded image the classifier gives confidence < {st.threshold}"
        + (
            f" or features farther from every class than {st.typical_q:.0%} of real test digits' (Mahalanobis)"
            if res.typicality is not None
            else ""
        )
        + "; empty cells: share of grid cells holding no test code",
        col["ae2d"],
        col["vae2d"],
        verdict,
        _say(verdict, "", parts),
    )


def _nan_none(v):
    return None if v is None or math.isnan(v) else v


def _pct(v) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1%}"


def c2_row(res: ClaimResults) -> Claim:
    nb, ae, vae, verdicts, parts = res.neighbourhoods, {}, {}, [], []
    for setting, (a, v) in PAIRS.items():
        if a not in nb or v not in nb:
            ae[setting] = nb[a].mean_agreement() if a in nb else None
            vae[setting] = nb[v].mean_agreement() if v in nb else None
            parts.append(f"{setting}: {_missing(res, (a, v))}")
            continue
        pa, pv, n = nb[a].mean_agreement(), nb[v].mean_agreement(), min(nb[a].n, nb[v].n)
        se = math.sqrt((pa * (1 - pa) + pv * (1 - pv)) / n)
        ae[setting], vae[setting] = pa, pv
        ok = pv - pa > 2 * se
        verdicts.append(ok)
        parts.append(
            f"{setting}: VAE {pv:.3f} vs AE {pa:.3f} ({'VAE higher' if ok else 'no VAE advantage'} beyond 2 SE "
            f"= {2 * se:.3f})"
        )
    holds = combine(verdicts)
    r = res.settings.radii
    return Claim(
        "C2",
        "Codes near a digit's code decode to the same digit, more so for a VAE, whose decoder is trained on an area "
        "around each code rather than on the point.",
        f"ae vs vae (D=20), ae2d vs vae2d (D=2); {res.settings.n_neigh} test digits, {res.settings.neigh_draws} "
        f"neighbours each per radius",
        f"agreement of the decoded neighbour z + r s eps with the digit's label, mean over r in "
        f"{', '.join(f'{x:g}' for x in r if x > 0)} code spreads s",
        ae,
        vae,
        holds,
        _say(holds, "", parts),
    )


def c3_row(res: ClaimResults) -> Claim:
    sc, floor = res.sampling, (res.real or {}).get("frechet", 0.0)
    ae, vae, verdicts, parts = {}, {}, [], []
    for setting, (a, v) in PAIRS.items():
        fv = sc[v]["prior"]["frechet"] if v in sc else None
        vae[f"{setting} N(0, I)"] = fv
        for sampler, name in (("prior", "N(0, I)"), ("fitted", "fitted Gaussian")):
            fa = sc[a][sampler]["frechet"] if a in sc else None
            ae[f"{setting} {name}"] = fa
            if fa is None or fv is None:
                continue
            ok = fv + floor < fa
            verdicts.append(ok)
            parts.append(f"{setting}: VAE {fv:.2f} {'beats' if ok else 'does not beat'} the AE's {name} draws {fa:.2f}")
        if a not in sc or v not in sc:
            parts.append(f"{setting}: {_missing(res, (a, v))}")
    holds = combine(verdicts)
    return Claim(
        "C3",
        "Decoding draws from the prior N(0, I) generates digits with a VAE; an AE has no distribution to draw from "
        "(N(0, I) draws miss its codes; a Gaussian fitted to its codes is the fair stand-in).",
        f"ae, vae (D=20), ae2d, vae2d (D=2); {res.settings.n_gen} generated digits per sampler",
        "Frechet distance on the classifier's features to real test digits (lower is better); a difference must "
        f"exceed the real-vs-real distance {_f(floor)}",
        ae,
        vae,
        holds,
        _say(holds, "", parts or ["no classifier"]),
    )


def c4_row(res: ClaimResults) -> Claim:
    ae, vae, verdicts, parts = {}, {}, [], []
    for setting, (a, v) in PAIRS.items():
        cmp = res.interp.get(setting)
        if cmp is None:
            ae[setting] = vae[setting] = None
            parts.append(f"{setting}: {_missing(res, (a, v))}")
            continue
        ae[setting], vae[setting] = cmp["n"] - cmp["wins"], cmp["wins"]
        verdicts.append(cmp["wins"] * 2 > cmp["n"])
        parts.append(f"{setting}: the VAE wins {cmp['wins']} of {cmp['n']}")
    holds = combine(verdicts)
    return Claim(
        "C4",
        "Interpolating between two codes gives a more even path of recognisable digits with a VAE than with an AE.",
        f"ae vs vae (D=20), ae2d vs vae2d (D=2); {res.settings.pairs} test pairs, {res.settings.steps} frames",
        "comparisons won (largest step / mean step, and least confident frame, each on linear and spherical paths)",
        ae,
        vae,
        holds,
        _say(holds, "the VAE wins a majority" if holds is True else "", parts),
    )


def c5_row(res: ClaimResults) -> Claim:
    st = res.shift
    if st is None:
        vae, holds, parts = None, None, ["no vae run (D=20)"]
    else:
        m, w = st["mse"], st["first_worse"]
        vae = {f"MSE {k} px": m[k] for k in (1, 2, 3)} | {"MSE other digit": m[-1], "log p drop 3 px": st["logp_drop"]}
        holds = w is not None
        parts = [
            f"pixel MSE of the {w}-px shift {m[w]:.4f} exceeds the other digit's {m[-1]:.4f}"
            if holds
            else f"no shift up to 3 px is farther in pixel MSE ({m[3]:.4f}) than the other digit ({m[-1]:.4f})",
            f"log p(x) falls {st['logp_drop']:.1f} nats from the original to the 3-px shift",
        ]
        if st["same_label"] is not None:
            parts.append(f"the classifier {'keeps' if st['same_label'] else 'does not keep'} the label")
    return Claim(
        "C5",
        "Pixel distance is not semantic (Problem 2): a digit shifted by a pixel or two is farther in pixel MSE than "
        "a different digit.",
        f"test digit 0 shifted 1-3 px, the nearest test digit of another class; log p(x) under vae (D=20), "
        f"k={res.settings.iw_k}",
        "pixel MSE to the original (greyscale); log p(x) drop in nats",
        None,
        vae,
        holds,
        _say(holds, "", parts),
    )


def c6_row(res: ClaimResults) -> Claim:
    vae, verdicts, parts = {}, [], []
    for k in ("vae", "vae2d"):
        e = res.elbo.get(k)
        s = "D=20" if k == "vae" else "D=2"
        if e is None:
            parts.append(f"{s}: no {k} run")
            continue
        ma, mm = float(e.analytic.mean()), float(e.mc.mean())
        vae |= {f"{s} analytic": ma, f"{s} MC": mm, f"{s} value var ratio": e.value_var_ratio}
        vae[f"{s} grad var ratio"] = e.grad_var_ratio
        agree = abs(e.diff) <= 3 * e.diff_se
        lower = e.value_var_ratio > ratio_margin(e.draws) and e.grad_var_ratio > ratio_margin(e.grad_draws)
        verdicts.append(agree and lower or ("partly" if agree or lower else False))
        parts.append(
            f"{s}: {ma:.2f} vs {mm:.2f} nats ({'agree' if agree else 'differ'}: difference {e.diff:.3f}, 3 SE "
            f"{3 * e.diff_se:.3f}); the closed-form KL's variance is "
            f"{_lower(e.value_var_ratio, e.draws)} per estimate (MC/analytic {e.value_var_ratio:.2f}x) and "
            f"{_lower(e.grad_var_ratio, e.grad_draws)} per encoder gradient ({e.grad_var_ratio:.2f}x)"
            + (MC_QUIET if _lower(e.value_var_ratio, e.draws) == "higher" else "")
        )
    holds = combine(verdicts)
    st = res.settings
    return Claim(
        "C6",
        "The two forms of the ELBO, E_q[log p(x|z)] - KL and E_q[log p(x|z) + log p(z) - log q(z|x)], agree in "
        "expectation, and the closed-form KL gives lower-variance estimates and gradients.",
        f"vae (D=20), vae2d (D=2); {st.grad_batch} binarized test digits, {st.elbo_draws} draws per estimate, "
        f"{st.grad_draws} per gradient, the same eps for both forms",
        "batch-mean ELBO each way (nats); variance ratio MC / analytic of one-draw estimates and encoder gradients",
        None,
        vae,
        holds,
        _say(holds, "", parts),
    )


def c7_row(res: ClaimResults) -> Claim:
    vae, verdicts, parts = {}, [], []
    for k in ("vae", "vae2d"):
        r = res.grads.get(k)
        s = "D=20" if k == "vae" else "D=2"
        if r is None:
            parts.append(f"{s}: no {k} run")
            continue
        vae |= {f"{s} var ratio": r["var_ratio"], f"{s} detached norm": r["detached"]["norm"]}
        ok = r["detached"]["norm"] == 0 and r["var_ratio"] > ratio_margin(r["draws"])
        verdicts.append(ok)
        parts.append(
            f"{s}: without the trick the encoder's reconstruction gradient is {r['detached']['norm']:.3g}; "
            f"REINFORCE's variance is {r['var_ratio']:.3g}x the reparameterized one's"
        )
    holds = combine(verdicts)
    return Claim(
        "C7",
        "Without the reparameterization trick the reconstruction term sends no gradient to the encoder; the "
        "score-function (REINFORCE) estimator does, with far more variance than the reparameterized gradient.",
        f"vae (D=20), vae2d (D=2); {res.settings.grad_batch} binarized test digits, {res.settings.grad_draws} "
        f"single-sample gradients each",
        "variance of the encoder's gradient of E_q[log p(x|z)], REINFORCE / reparameterized; gradient norm without "
        "the trick",
        None,
        vae,
        holds,
        _say(holds, "", parts),
    )


def c8_row(res: ClaimResults) -> Claim:
    kl, ae, vae, verdicts, parts = res.prior_kl, {}, {}, [], []
    for setting, (a, v) in PAIRS.items():
        ae[setting] = kl[a]["kl"] if a in kl else None
        vae[setting] = kl[v]["kl"] if v in kl else None
        if a not in kl or v not in kl:
            parts.append(f"{setting}: {_missing(res, (a, v))}")
            continue
        ok = vae[setting] + max(kl[a]["floor"], kl[v]["floor"]) < ae[setting]
        verdicts.append(ok)
        parts.append(f"{setting}: VAE {vae[setting]:.3g} vs AE {ae[setting]:.3g} nats")
    holds = combine(verdicts)
    return Claim(
        "C8",
        "The KL term pulls the codes towards the prior: the VAE's aggregate codes are closer to N(0, I) than the AE's.",
        f"ae vs vae (D=20), ae2d vs vae2d (D=2); one code per test digit ({res.settings.n_codes}): a draw of "
        f"q(z|x) for a VAE, the code for an AE",
        "KL( N(m, S) fitted to the codes || N(0, I) ), closed form, nats",
        ae,
        vae,
        holds,
        _say(holds, "", parts),
    )


ROWS = (c1_row, c2_row, c3_row, c4_row, c5_row, c6_row, c7_row, c8_row)


def claims_table(res: ClaimResults) -> list[Claim]:
    """The claims table from claims.measure_claims' results: one Claim per claim, C1-C8. A run or the
    classifier missing leaves that part of a row None and says so in its reading; it never raises.

    Decision rules for `holds` (per setting; a row holds where every measured setting holds, "partly" where
    some do or where one setting holds on some parts only, not at all where none do, None if none measured):
      C1  gaps: AE empty-cell fraction - VAE's > 0.05, and holes: AE hole fraction - VAE's > 0.05; both:
          holds, one: "partly" (HOLE_MARGIN, 5 points of the grid: the fractions have no sampling noise, but a
          grid of 15 to 40 points a side or a box of the 0.5-99.5th to 5-95th percentiles moves the demo
          models' hole fractions by up to 2 points).
      C2  VAE mean agreement - AE mean agreement > 2 standard errors of the difference, binomial over the
          n test digits (the neighbours of one digit are correlated, so n, not n x draws, is the sample size).
      C3  for each AE sampler (N(0, I), fitted Gaussian): VAE Frechet distance + the real-vs-real distance
          at the same n (the finite-sample floor) < the AE's.
      C4  the VAE wins more than half of studies.compare_interp's comparisons.
      C5  some shift of 1-3 px is farther in pixel MSE from the original than the other digit.
      C6  the forms agree (|mean difference| <= 3 standard errors of the paired difference) and the MC form's
          variance exceeds the analytic's by more than ratio_margin, for one-draw values and encoder
          gradients; "partly" for one of the two.
      C7  the detached gradient is exactly 0 and REINFORCE's variance / the reparameterized one's > ratio_margin.
      C8  VAE KL + the finite-sample floor of code_prior_kl < AE KL.
    """
    return [row(res) for row in ROWS]
