"""claims, claims_latent, claims_table on small untrained models and synthetic data, each measure on a case with
a known answer: a decoder that draws one fixed digit everywhere (no holes, full agreement) or noise (all holes)
under a classifier whose confidence is known exactly; the two ELBO forms and the gradient estimators on a
linear-Gaussian VAE, where the expectations and gradients are in closed form; the codes' KL against
torch.distributions; the table's rows and its decision rules. The real classifier: tests/integration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_studies import SHAPE, FakeClassifier, images, tiny
from torch import nn

from vaekit.claims import ClaimResults, ClaimSettings, elbo_forms, measure_claims
from vaekit.claims_latent import (
    Neighbourhood,
    aggregate_codes,
    code_prior_kl,
    fit_typicality,
    gaussian_kl_to_standard,
    hole_map,
    interpolation_compare,
    neighbourhood_agreement,
    sampling_scores,
)
from vaekit.claims_table import Claim, claims_table, combine, ratio_margin
from vaekit.classifier import Classifier, ClassifierConfig, generation_scores
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.evaluate import posterior_means
from vaekit.models import build_model
from vaekit.studies import ReportSettings, compare_interp, interp_study
from vaekit.vae_studies import reparam_gradients

TEMPLATE = (torch.arange(math.prod(SHAPE)).float().view(SHAPE) % 3 == 0).float()  # "the digit", binary


class TemplateClassifier:
    """Class 7 with probability w = exp(-MSE(x, TEMPLATE) / 0.01), the rest spread evenly:
    confidence exactly 1 on the template, about 0.1 on noise."""

    def predict_proba(self, x):
        w = torch.exp(-((x - TEMPLATE) ** 2).flatten(1).mean(1) / 0.01)[:, None]  # (B, 1)
        return w * nn.functional.one_hot(torch.tensor(7), 10).float() + (1 - w) / 10

    def predict(self, x):
        return self.predict_proba(x).argmax(-1)


class ConstDecoder(nn.Module):
    """Logits that make the Bernoulli mean the template (to float precision) whatever z is."""

    def forward(self, z):
        return (TEMPLATE * 40 - 20).expand(len(z), *SHAPE)


class NoiseDecoder(nn.Module):
    def forward(self, z):
        return 3 * torch.randn(len(z), *SHAPE)


def with_decoder(decoder, model="ae", latent_dim=2):
    m = tiny(model, latent_dim)
    m.decoder = decoder
    return m


# ------------------------------------------------------------------------------------------- C1


def test_hole_map_known_answers():
    x = images(200)
    const = with_decoder(ConstDecoder())
    h = hole_map(const, TemplateClassifier(), posterior_means(const, x), grid=7)
    assert h.hole_fraction == 0.0 and np.allclose(h.confidence, 1.0, atol=1e-4) and (h.label == 7).all()
    torch.manual_seed(0)
    noise = with_decoder(NoiseDecoder())
    h = hole_map(noise, TemplateClassifier(), posterior_means(noise, x), grid=7)
    assert h.hole_fraction == 1.0 and h.confidence.max() < 0.2


def test_hole_map_grid():
    m, clf = tiny("ae", 2), FakeClassifier()
    codes = torch.randn(1000, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    h = hole_map(m, clf, codes, grid=5, lo_q=0.1, hi_q=0.9, threshold=0.3)
    q = torch.tensor([0.1, 0.9], dtype=torch.float64)
    np.testing.assert_allclose(h.xs[[0, -1]], torch.quantile(codes[:, 0].double(), q).numpy(), rtol=1e-5)
    np.testing.assert_allclose(h.ys[[-1, 0]], torch.quantile(codes[:, 1].double(), q).numpy(), rtol=1e-5)
    assert (np.diff(h.xs) > 0).all() and (np.diff(h.ys) < 0).all()
    z = h.z.view(5, 5, 2)  # row-major: z1 along a row, z2 decreasing down the rows
    np.testing.assert_allclose(z[2, :, 0].numpy(), h.xs) and np.testing.assert_allclose(z[:, 2, 1].numpy(), h.ys)
    with torch.no_grad():
        want = m.decode(h.z).mean
    torch.testing.assert_close(h.images, want)
    p = clf.predict_proba(want).max(-1).values.view(5, 5).numpy()
    np.testing.assert_allclose(h.confidence, p, rtol=1e-6)
    assert h.hole_fraction == pytest.approx(float((p < 0.3).mean()))
    # a code at every grid point but the top-left one and the centre: exactly those two cells are empty
    few = hole_map(m, clf, h.z[[i for i in range(25) if i not in (0, 12)]], grid=5, lo_q=0.0, hi_q=1.0)
    assert few.empty.sum() == 2 and few.empty[0, 0] and few.empty[2, 2] and few.empty_fraction == 2 / 25
    assert few.empty_holes == float(((few.confidence < 0.5) | few.atypical)[few.empty].mean())
    with pytest.raises(ValueError, match="2-D codes"):
        hole_map(m, clf, torch.randn(10, 3))


class Embedder(TemplateClassifier):
    def embed(self, x):
        return x.flatten(1)[:, :3]


def test_typicality():
    """Two classes of 3-D 'features', N((0,0,0), I) and N((5,0,0), diag(1, 4, 1)) (shared covariance
    pooled): the distance is the squared Mahalanobis to the nearest mean, the threshold its 0.99 quantile."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4000) % 2
    f = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 1.0]) + y[:, None] * torch.tensor([5.0, 0, 0])
    x = torch.cat([f, torch.zeros(4000, math.prod(SHAPE) - 3)], 1).view(4000, *SHAPE)
    t = fit_typicality(Embedder(), x, y)
    assert float(t.atypical(x[:2000]).float().mean()) == pytest.approx(0.01, abs=0.001)  # the calibration half
    fresh = torch.randn(20000, 3, generator=g) * torch.tensor([1.0, 2.0, 1.0])  # class 0, never seen
    fresh = torch.cat([fresh, torch.zeros(20000, math.prod(SHAPE) - 3)], 1).view(20000, *SHAPE)
    assert 0.002 < float(t.atypical(fresh).float().mean()) < 0.02  # about 1%, up to the threshold's noise
    probe = torch.zeros(1, *SHAPE)
    probe.view(-1)[:3] = torch.tensor([2.0, 2.0, 0.0])
    half, yh = f[2000:].double(), y[2000:]
    means = torch.stack([half[yh == c].mean(0) for c in (0, 1)])
    cov = (half - means[yh]).T @ (half - means[yh]) / 2000 + 1e-3 * torch.eye(3, dtype=torch.float64)
    d = torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64) - means  # (2, 3)
    want = min(float(v @ torch.linalg.solve(cov, v)) for v in d)
    assert float(t.score(probe)) == pytest.approx(want, rel=1e-6)
    far = torch.zeros(1, *SHAPE)
    far.view(-1)[2] = 20.0
    assert t.atypical(far).item() and not t.atypical(torch.zeros(1, *SHAPE)).item()
    const = with_decoder(ConstDecoder())
    h = hole_map(const, Embedder(), torch.randn(100, 2), grid=4, typical=t)
    assert h.low_confidence == 0.0 and h.hole_fraction == float(t.atypical(TEMPLATE[None]).item())


# ------------------------------------------------------------------------------------------- C2


@pytest.mark.parametrize("model,d", [("ae", 2), ("vae", 20)])
def test_neighbourhood_constant_decoder_agrees_everywhere(model, d):
    m = with_decoder(ConstDecoder(), model, d)
    nb = neighbourhood_agreement(m, TemplateClassifier(), images(30), torch.full((30,), 7), [0, 0.5, 2, 10], 3)
    assert nb.agreement == [1.0] * 4 and nb.consistency == [1.0] * 4
    assert nb.confidence == pytest.approx([1.0] * 4, abs=1e-4) and nb.mean_agreement() == 1.0


def test_neighbourhood_radius_zero_and_scale_free():
    m, clf, x = tiny("ae", 3), FakeClassifier(), images(40)
    y = torch.arange(40) % 10
    nb = neighbourhood_agreement(m, clf, x, y, [0.0, 1.0], draws=2, seed=3)
    assert nb.agreement[0] == pytest.approx(float((clf.predict(m.reconstruct(x)) == y).float().mean()))
    assert nb.consistency[0] == 1.0 and nb.n == 40 and nb.draws == 2
    # codes 100x larger, decoder undoing it: r is in the codes' own spread, so nothing changes
    big = tiny("ae", 3)
    with torch.no_grad():
        big.encoder.net[-1].weight.mul_(100)
        big.encoder.net[-1].bias.mul_(100)
        big.decoder.net[0].weight.div_(100)
    again = neighbourhood_agreement(big, clf, x, y, [0.0, 1.0], draws=2, seed=3)
    assert again.agreement == nb.agreement and again.confidence == pytest.approx(nb.confidence, rel=1e-4)


# ------------------------------------------------------------------------------------------- C3, C4


def test_sampling_scores_and_interpolation():
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(input_shape=SHAPE, hidden=(8,))).eval()
    x = images(100)
    ae, vae = tiny("ae", 3), tiny("vae", 3)
    ae.fit_code_gaussian(posterior_means(ae, x))
    sv, sa = sampling_scores(vae, clf, x, 30, seed=5), sampling_scores(ae, clf, x, 30, seed=5)
    assert set(sv) == {"prior"} and set(sa) == {"prior", "fitted"}
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(30, 3, generator=g)
    with torch.no_grad():
        assert sa["prior"] == generation_scores(clf, ae.decode(z0).mean, x[:30])
        assert sa["fitted"] == generation_scores(clf, ae.decode(ae.latent_sampler(30, g)).mean, x[:30])
    y = torch.arange(100) % 10
    cmp = interpolation_compare(ae, vae, clf, x, y, pairs=2, steps=6)
    from vaekit.studies import Entry

    st = interp_study(
        [Entry("ae", None, ae, []), Entry("vae", None, vae, [])], clf, x, y, ReportSettings(pairs=2, steps=6)
    )
    assert {k: cmp[k] for k in ("modes", "wins", "n")} == compare_interp(st.summary, "ae", "vae") and cmp["n"] == 4


# ------------------------------------------------------------------------------------------- C8


def test_gaussian_kl_against_torch():
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 20):
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        cov, m = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal
        want = torch.distributions.kl_divergence(mvn(m, cov), mvn(torch.zeros(d).double(), torch.eye(d).double()))
        got = gaussian_kl_to_standard(m, cov)
        assert got["kl"] == pytest.approx(float(want), rel=1e-9)
        assert got["mean_part"] == pytest.approx(0.5 * float(m @ m)) and got["cov_part"] >= 0
    codes = torch.randn(500, 4, generator=g) * 3 + 1
    fit = code_prior_kl(codes)
    cov = torch.cov(codes.double().T) + 1e-6 * torch.eye(4, dtype=torch.float64)
    want = torch.distributions.kl_divergence(
        mvn(codes.double().mean(0), cov), mvn(torch.zeros(4).double(), torch.eye(4).double())
    )
    assert fit["kl"] == pytest.approx(float(want), rel=1e-9)


def test_code_prior_kl_floor():
    """N samples of N(0, I) itself: the fitted Gaussian's KL averages the floor (2N KL ~ chi-square)."""
    g = torch.Generator().manual_seed(1)
    kls = [code_prior_kl(torch.randn(4000, 5, generator=g)) for _ in range(20)]
    assert kls[0]["floor"] == pytest.approx((5 + 15) / 8000)
    assert np.mean([k["kl"] for k in kls]) / kls[0]["floor"] == pytest.approx(1.0, abs=0.25)


def test_aggregate_codes():
    x = images(50)
    ae, vae = tiny("ae", 3), tiny("vae", 3)
    torch.testing.assert_close(aggregate_codes(ae, x), posterior_means(ae, x))
    z = aggregate_codes(vae, x, seed=4)
    q = vae.encode(x)
    eps = torch.randn(50, 3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(z, (q.mean + q.stddev * eps).detach())


# ------------------------------------------------------------------------------------------- C6, C7


def linear_gaussian(seed: int = 0, sigma: float = 0.5, d: int = 2):
    """q(z|x) = N(Ax + a, diag exp(Cx + c)), p(x|z) = N(Wz + b, sigma^2 I), p(z) = N(0, I): every
    expectation in the ELBO has a closed form."""
    torch.manual_seed(seed)
    cfg = ModelConfig(model="vae", input_shape=(4,), latent_dim=d, hidden=(), likelihood="gaussian", sigma=sigma)
    m = build_model(cfg).eval()
    m.run_config = RunConfig(cfg, TrainConfig(binarize="none"))
    with torch.no_grad():
        m.encoder.net[0].weight.mul_(0.5)
    return m


def exact_terms(m, x, sigma: float = 0.5):
    """E_q[log p(x|z)] and KL(q || N(0, I)) per example, (B,) each, differentiable in the encoder."""
    q = m.encode(x)
    lin = m.decoder.net[0]
    mu, var = q.mean, q.stddev**2
    resid = ((x - mu @ lin.weight.T - lin.bias) ** 2).sum(1) + (var @ (lin.weight**2).sum(0)[:, None]).squeeze(1)
    rec = -x.shape[1] * (0.5 * math.log(2 * math.pi) + math.log(sigma)) - resid / (2 * sigma**2)
    return rec, q.kl_std_normal()


def flat_grad(f, params):
    return torch.cat([t.flatten() for t in torch.autograd.grad(f, params)]).double()


def test_elbo_forms_agree_with_the_closed_form():
    m = linear_gaussian()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    e = elbo_forms(m, x, draws=1000, grad_draws=150, seed=1)
    rec, kl = exact_terms(m, x)
    exact = (rec - kl).detach().double()
    assert (abs(e.analytic - exact) < 4 * e.analytic_se).all() and (abs(e.mc - exact) < 4 * e.mc_se).all()
    assert abs(e.diff) < 3 * e.diff_se
    g = flat_grad((rec - kl).mean(), list(m.encoder.parameters()))
    for mean, var in ((e.grad_mean_analytic, e.grad_var_analytic), (e.grad_mean_mc, e.grad_var_mc)):
        assert float(((mean - g) ** 2).sum()) < 3 * var / e.grad_draws  # unbiased within Monte Carlo error
    assert e.value_var_ratio > 1 and e.grad_var_ratio > 1  # here the closed-form KL is the quieter one


def test_elbo_forms_decoder_ignoring_z():
    """With p(x|z) independent of z the analytic form has no noise at all; the MC form keeps the KL's."""
    m = linear_gaussian()
    with torch.no_grad():
        m.decoder.net[0].weight.zero_()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    e = elbo_forms(m, x, draws=50, grad_draws=20)
    assert float(e.analytic_se.max()) < 1e-5 and float(e.mc_se.min()) > 1e-3
    assert e.grad_var_analytic < 1e-10 < e.grad_var_mc and e.grad_var_ratio > 1e6


def test_reparam_and_reinforce_are_unbiased_reparam_quieter():
    m = linear_gaussian(d=3)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    r = reparam_gradients(m, x, draws=300, seed=0, means=True)
    rec, _ = exact_terms(m, x)
    g = flat_grad(rec.mean(), [p for p in m.encoder.parameters()])
    for name in ("reparam", "score"):
        assert float(((r[name]["mean"].double() - g) ** 2).sum()) < 3 * r[name]["variance"] / r["draws"], name
    # the test has power: the detached estimator (exactly 0) is biased and fails the same check
    assert float((g**2).sum()) > 3 * r["reparam"]["variance"] / r["draws"]
    assert r["var_ratio"] == pytest.approx(r["score"]["variance"] / r["reparam"]["variance"])
    assert r["var_ratio"] > ratio_margin(r["draws"])
    assert "mean" not in reparam_gradients(m, x, draws=2, seed=0)["reparam"]


# ------------------------------------------------------------------------------------------- the table

SMALL = ClaimSettings(
    n_codes=60, grid=4, n_neigh=20, radii=(0.0, 0.5), neigh_draws=2, n_gen=20, pairs=2, steps=4, iw_k=4,
    shift_draws=1, elbo_draws=6, grad_draws=3, grad_batch=10,
)  # fmt: skip


def small_runs():
    x = images(80)
    runs = {"ae": tiny("ae", 4), "vae": tiny("vae", 4), "ae2d": tiny("ae", 2), "vae2d": tiny("vae", 2)}
    for m in runs.values():
        if not m.is_vae:
            m.fit_code_gaussian(posterior_means(m, x))
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(input_shape=SHAPE, hidden=(8,))).eval()
    return runs, clf, x, torch.arange(80) % 10


def check_rows(rows: list[Claim]):
    assert [r.id for r in rows] == [f"C{i}" for i in range(1, 9)]
    for r in rows:
        d = r.to_dict()
        assert set(d) == {"id", "claim", "setting", "measure", "ae", "vae", "holds", "reading"}
        assert r.holds in (True, False, "partly", None) and r.reading and r.claim and r.measure
        head = {True: "Holds", False: "Does not hold", "partly": "Holds in part", None: "Not measured"}[r.holds]
        assert r.reading.startswith(head)


def test_claims_table_complete_and_finite():
    runs, clf, x, y = small_runs()
    res = measure_claims(runs, clf, x, y, SMALL)
    rows = claims_table(res)
    check_rows(rows)
    json.dumps([r.to_dict() for r in rows], allow_nan=False)  # report.json's "claims": plain, finite
    for r in rows:
        assert r.holds is not None, r
        for col in (r.ae, r.vae):
            assert col is None or all(v is not None and math.isfinite(v) for v in col.values()), r
    assert set(res.seconds) == {f"C{i}" for i in range(1, 9)}
    assert set(res.holes) == {"ae2d", "vae2d"} and set(res.elbo) == {"vae", "vae2d"}


def test_claims_table_missing_runs_and_classifier():
    runs, clf, x, y = small_runs()
    res = measure_claims({"vae": runs["vae"], "ae2d": None}, None, x, None, SMALL)
    rows = claims_table(res)
    check_rows(rows)
    by = {r.id: r for r in rows}
    assert by["C1"].holds is None and "no ae2d or vae2d run" in by["C1"].reading
    assert by["C3"].holds is None and by["C8"].holds is None and "no ae run" in by["C8"].reading
    assert by["C5"].holds in (True, False) and by["C6"].holds is not None
    assert by["C8"].vae["D=20"] is not None and by["C8"].ae["D=20"] is None
    check_rows(claims_table(measure_claims({}, None, x, None, SMALL)))


def test_claims_on_a_vae_with_a_learned_prior_sample_it_and_skip_the_closed_form():
    """C3 decodes draws of the VAE's own prior (here a VampPrior, not N(0, I)); C6 compares the closed-form
    KL with the Monte Carlo one, so a prior without a closed form is left out of it; C7 and C8 still run."""
    runs, clf, x, y = small_runs()
    torch.manual_seed(0)
    cfg = ModelConfig(input_shape=SHAPE, latent_dim=4, hidden=(16,), prior="vamp", prior_components=5)
    vamp = build_model(cfg).eval()
    vamp.run_config = RunConfig(cfg, TrainConfig(binarize="none"))
    res = measure_claims({"vae": vamp}, clf, x, y, SMALL)
    assert "vae" not in res.elbo and "vae" in res.grads and "vae" in res.prior_kl
    with torch.no_grad():
        own = generation_scores(
            clf, vamp.decode(vamp.latent_sampler(20, torch.Generator().manual_seed(0))).mean, x[:20]
        )
    assert res.sampling["vae"]["prior"] == own


def results(**kw) -> ClaimResults:
    runs = {k: {} for k in ("ae", "vae", "ae2d", "vae2d")}
    return ClaimResults(runs, ClaimSettings(), True, **kw)


class Hole:
    def __init__(self, f, empty=0.5):
        self.hole_fraction = self.low_confidence = f
        self.empty_fraction, self.empty_holes = empty, math.nan


class Neigh:
    def __init__(self, p, n=500):
        self.p, self.n = p, n

    def mean_agreement(self):
        return self.p


def test_holds_rules():
    assert combine([True, True]) is True and combine([False, None]) is False
    assert combine([np.True_, np.True_]) is True and combine([np.False_]) is False
    assert combine([True, False]) == "partly" and combine([None]) is None and combine([True, "partly"]) == "partly"

    def c1(a, v, ea=0.5, ev=0.5):
        return claims_table(results(holes={"ae2d": Hole(a, ea), "vae2d": Hole(v, ev)}))[0]

    assert c1(0.30, 0.10, 0.6, 0.2).holds is True and c1(0.30, 0.10).holds == "partly"
    assert c1(0.12, 0.10).holds is False and c1(0.1, 0.3).holds is False and c1(0.1, 0.1, 0.6, 0.2).holds == "partly"
    assert "holes: 30.0% of the AE's grid vs 10.0% of the VAE's" in c1(0.30, 0.10).reading
    assert c1(0.3, 0.1).ae == {"D=2 hole fraction": 0.3, "D=2 empty cells": 0.5, "D=2 holes in empty cells": None}
    # C2: 0.80 vs 0.70 on 500 digits is beyond 2 SE (0.055); 0.72 vs 0.70 is not
    nb = {"ae": Neigh(0.70), "vae": Neigh(0.80), "ae2d": Neigh(0.70), "vae2d": Neigh(0.72)}
    row = claims_table(results(neighbourhoods=nb))[1]
    assert row.holds == "partly" and "D=20: VAE 0.800 vs AE 0.700 (VAE higher" in row.reading
    assert "D=2: VAE 0.720 vs AE 0.700 (no VAE advantage" in row.reading
    # C3: the VAE beats N(0, I) draws of the AE, not its fitted Gaussian
    sc = {"ae": {"prior": {"frechet": 50.0}, "fitted": {"frechet": 10.0}}, "vae": {"prior": {"frechet": 20.0}}}
    row = claims_table(results(sampling=sc, real={"frechet": 1.0}))[2]
    assert row.holds == "partly" and row.ae["D=20 fitted Gaussian"] == 10.0 and row.ae["D=2 N(0, I)"] is None
    assert "beats the AE's N(0, I) draws" in row.reading and "does not beat the AE's fitted Gaussian" in row.reading
    row = claims_table(results(interp={"D=20": {"wins": 3, "n": 4}, "D=2": {"wins": 2, "n": 4}}))[3]
    assert row.holds == "partly" and row.vae == {"D=20": 3, "D=2": 2} and row.ae == {"D=20": 1, "D=2": 2}
    kl = {k: {"kl": v, "floor": 0.05} for k, v in {"ae": 40.0, "vae": 0.5, "ae2d": 0.52, "vae2d": 0.5}.items()}
    assert claims_table(results(prior_kl=kl))[7].holds == "partly"
    assert ratio_margin(50) == pytest.approx(math.exp(4 / 7))


def test_figures(tmp_path):
    from PIL import Image

    from vaekit.figures_claims import hole_maps, neighbourhood_curves

    m, clf = tiny("ae", 2), FakeClassifier()
    codes = torch.randn(300, 2)
    labels = (torch.arange(300) % 10).numpy()
    panels = [{"title": t, "hole": hole_map(m, clf, codes, grid=6), "codes": codes, "labels": labels} for t in "ab"]
    w, h = Image.open(hole_maps(panels, tmp_path / "holes.png")).size
    assert w > h * 0.8 and w > 600  # two columns, two rows
    nb = Neighbourhood([0.0, 1.0], [0.9, 0.5], [1.0, 0.6], [0.8, 0.6], 10, 2)
    curves = {"D=2": {"AE": nb, "VAE": nb}, "D=20": {"AE": nb, "VAE": nb}}
    assert Image.open(neighbourhood_curves(curves, tmp_path / "nb.png")).size[0] > 600
