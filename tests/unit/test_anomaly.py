"""anomaly.py against oracles computed here: the complexity terms re-derived (zlib; the context model coded pixel
by pixel), the orientation from torch.distributions, -ELBO equal to evaluate()'s for the same seed and
binarization, the tail p-values (uniform on inliers, by hand, monotone), calibrate()'s threshold property on
random scores (hypothesis), the Detector's fit/score/predict/save/load round trip and its FPR on held-out
inliers, and the one-line refusals (damaged, foreign or old threshold files, FPRs outside (0, 1), a non-finite
score naming its example, an AE asked for a density). Untrained tiny models on synthetic 6x5 images: seconds."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from conftest import one_line
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vaekit
from vaekit import anomaly
from vaekit.anomaly import Detector, Threshold, calibrate, check_fpr, complexity, load_threshold, score_table
from vaekit.config import ModelConfig
from vaekit.data import Dataset
from vaekit.errors import VaekitError
from vaekit.evaluate import eval_batches, evaluate

SHAPE = (1, 6, 5)


def tiny(model: str = "vae", seed: int = 0, likelihood: str = "bernoulli"):
    torch.manual_seed(seed)
    cfg = ModelConfig(model=model, input_shape=SHAPE, hidden=(16,), latent_dim=4, likelihood=likelihood)
    return vaekit.build_model(cfg).eval()


def grey(n: int = 12, seed: int = 0) -> Dataset:
    """n grey images (n, 1, 6, 5) in [0, 1]: a bright bar at a random row over faint noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(n, *SHAPE, generator=g)
    rows = torch.randint(0, SHAPE[1], (n,), generator=g)
    x[torch.arange(n), 0, rows] = 0.9
    return Dataset(x, torch.arange(n) % 10, "grey")


# ---------------------------------------------------------------------------------------------- oracle


def deflate(data: bytes) -> int:
    """Raw DEFLATE (no zlib header or checksum), level 9, Z_FILTERED: the code length in bytes."""
    c = zlib.compressobj(level=9, method=zlib.DEFLATED, wbits=-15, memLevel=9, strategy=zlib.Z_FILTERED)
    return len(c.compress(data) + c.flush())


def oracle_complexity(x: torch.Tensor) -> list[float]:
    """For each image of x (B, C, H, W) in [0, 1]: bytes round(255 x), a pixel's C channels adjacent, scanned
    row by row (H, W, C) and column by column (W, H, C); the shorter code in nats, plus one bit for the choice."""
    out = []
    for im in (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy():
        hwc = im.transpose(1, 2, 0)
        by_rows = deflate(np.ascontiguousarray(hwc).tobytes())
        by_cols = deflate(np.ascontiguousarray(hwc.transpose(1, 0, 2)).tobytes())
        out.append(min(by_rows, by_cols) * 8 * math.log(2) + math.log(2))
    return out


# ------------------------------------------------------------------------------------------ complexity


def test_complexity_is_the_shorter_deflate_scan_in_nats():
    g = torch.Generator().manual_seed(1)
    x = torch.cat(
        [
            torch.rand(4, 1, 28, 28, generator=g),
            torch.rand(3, 1, 28, 1, generator=g).expand(3, 1, 28, 28),  # each row one grey
            torch.rand(3, 1, 1, 28, generator=g).expand(3, 1, 28, 28),  # each column one grey
            (torch.rand(2, 1, 28, 28, generator=g) > 0.7).float(),
        ]
    )
    got = complexity(x)
    assert got.dtype == torch.float64 and got.shape == (12,)
    assert got.tolist() == oracle_complexity(x)
    # both scans matter: one 28-byte line repeated 28 times beats 28 runs of 28 bytes, so an image of
    # constant rows compresses best read column by column, and one of constant columns row by row
    u8 = [(im[0] * 255).round().to(torch.uint8).numpy() for im in x[4:10]]
    assert all(deflate(a.T.copy().tobytes()) < deflate(a.tobytes()) for a in u8[:3])
    assert all(deflate(a.tobytes()) < deflate(a.T.copy().tobytes()) for a in u8[3:])


def test_complexity_of_a_constant_image_is_far_below_noise():
    g = torch.Generator().manual_seed(2)
    c = complexity(torch.cat([torch.zeros(1, 1, 28, 28), torch.full((1, 1, 28, 28), 0.5)]))
    noise = complexity(torch.rand(5, 1, 28, 28, generator=g))
    assert c.max() < 0.05 * noise.min()
    assert noise.min() > 0.8 * 784 * 8 * math.log(2)  # 784 random bytes barely compress


def test_complexity_quantizes_clamps_and_ignores_the_dtype():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 1, 6, 5, generator=g)
    assert torch.equal(complexity(x), complexity(x.double()))
    assert torch.equal(complexity(x), complexity(x + 0.4 / 255))  # the same bytes after rounding
    assert torch.equal(complexity(x * 3 - 1), complexity((x * 3 - 1).clamp(0, 1)))


def test_a_colour_image_keeps_each_pixels_channels_together():
    """(B, 3, H, W): the bytes are pixel by pixel (R, G, B adjacent) in both scans. Rows of random colours,
    constant along each row, with some noisy columns: which scan wins, and by how much, depends on it."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randint(0, 4, (6, 3, 16, 1), generator=g).float() / 3).expand(6, 3, 16, 16).clone()
    x[:, :, :, ::5] = torch.rand(6, 3, 16, 4, generator=g)
    assert complexity(x).tolist() == oracle_complexity(x)


def test_complexity_of_a_colour_image_does_not_change_when_it_is_transposed():
    """min(rows, columns) of an image is the same number for its transpose (as for greyscale)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randint(0, 4, (6, 3, 16, 1), generator=g).float() / 3).expand(6, 3, 16, 16).clone()
    x[:, :, :, ::5] = torch.rand(6, 3, 16, 4, generator=g)
    assert torch.equal(complexity(x), complexity(x.transpose(-1, -2)))
    bw = x[:, :1]
    assert torch.equal(complexity(bw), complexity(bw.transpose(-1, -2)))


def test_complexity_of_vectors_is_one_scan():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(4, 50, generator=g)
    u8 = (x * 255).round().to(torch.uint8).numpy()
    assert complexity(x).tolist() == [deflate(r.tobytes()) * 8 * math.log(2) + math.log(2) for r in u8]


# ------------------------------------------------------------------------------------------ score_table


def oracle_context_length(b: torch.Tensor) -> float:
    """The sequential KT code length in nats of one binary image b (H, W), pixel by pixel in raster order, each
    predicted from its TEMPLATE neighbours (0 outside) with p(1) = (n1 + 1/2) / (n + 1) of that context so far."""
    h, w = b.shape
    counts: dict[int, list[int]] = {}
    total = 0.0
    for r in range(h):
        for c in range(w):
            ctx = 0
            for j, (dr, dc) in enumerate(anomaly.TEMPLATE):
                rr, cc = r + dr, c + dc
                ctx |= (int(b[rr, cc]) if 0 <= rr < h and 0 <= cc < w else 0) << j
            n0, n1 = counts.setdefault(ctx, [0, 0])
            p1 = (n1 + 0.5) / (n0 + n1 + 1)
            bit = int(b[r, c])
            total -= math.log(p1 if bit else 1 - p1)
            counts[ctx][bit] += 1
    return total


def oracle_neg_elbo_at_mean(model, x):
    with torch.no_grad():
        q = model.encode(x)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(q.mean, q.stddev), torch.distributions.Normal(0.0, 1.0)
        ).sum(-1)
        recon = torch.distributions.Bernoulli(probs=model.decode(q.mean).mean).log_prob(x).flatten(1).sum(1)
    return (kl - recon).double()


def test_context_complexity_is_the_sequential_kt_code_length():
    g = torch.Generator().manual_seed(2)
    x = torch.cat([(torch.rand(5, 1, 6, 5, generator=g) > p).float() for p in (0.2, 0.5, 0.9)])
    x = torch.cat([x, torch.zeros(1, 1, 6, 5), torch.ones(1, 1, 6, 5)])
    want = [oracle_context_length(im[0]) for im in x]
    torch.testing.assert_close(anomaly.context_complexity(x), torch.tensor(want, dtype=torch.float64))
    big = (torch.rand(2, 1, 28, 28, generator=g) > 0.5).float()  # 784 pixels: many contexts, long counts
    torch.testing.assert_close(
        anomaly.context_complexity(big), torch.tensor([oracle_context_length(im[0]) for im in big]).double()
    )


def test_context_complexity_is_small_for_simple_images_and_near_one_bit_a_pixel_for_noise():
    g = torch.Generator().manual_seed(3)
    noise = (torch.rand(20, 1, 28, 28, generator=g) > 0.5).float()
    bar = torch.zeros(1, 1, 28, 28)
    bar[..., 10:14, 4:24] = 1
    lengths = anomaly.context_complexity(torch.cat([noise, bar]))
    bits = 784 * math.log(2)
    assert (lengths[:20] > 0.95 * bits).all() and (lengths[:20] < 1.3 * bits).all()  # KT's regret on top
    assert lengths[20] < 0.1 * bits
    # channels are coded on their own; a vector is one row
    two = torch.cat([noise[:1], bar], 1)
    assert anomaly.context_complexity(two).item() == pytest.approx(lengths[0].item() + lengths[20].item())
    v = noise[:3].reshape(3, 784)
    want = anomaly.context_complexity(noise[:3].reshape(3, 1, 1, 784))
    assert torch.equal(anomaly.context_complexity(v), want)


def test_orientation_against_its_definition_and_a_symmetric_image():
    model, ds = tiny(), grey(6)
    x = torch.cat(list(eval_batches(ds, 100, "dynamic", 0)))
    e = torch.stack([oracle_neg_elbo_at_mean(model, t) for t in (x, x.flip(-2), x.flip(-1), x.flip(-2, -1))])
    want = e[0] + torch.logsumexp(-e, 0)
    with torch.no_grad():
        got = anomaly.orientation(model, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert (got >= 0).all()
    sym = torch.zeros(1, *SHAPE)
    sym[..., 1:5, 1:4] = 1  # rows 1-4 of 6, columns 1-3 of 5: the same under every flip
    with torch.no_grad():
        assert anomaly.orientation(model, sym).item() == pytest.approx(math.log(4), abs=1e-9)


@pytest.mark.parametrize("binarize", ["dynamic", "none"])
@pytest.mark.parametrize("seed", [0, 7])
def test_score_table_matches_evaluate_and_the_binarized_images(binarize, seed):
    model, ds = tiny(), grey(23)
    t = score_table(model, ds, binarize=binarize, seed=seed, batch_size=10)
    assert list(t) == ["neg_elbo", "complexity", "orientation"]  # no calibration: no score
    assert all(v.dtype == torch.float64 and v.shape == (23,) for v in t.values())
    ref = evaluate(model, ds, binarize=binarize, iw_samples=0, batch_size=10, seed=seed, per_example=True)
    assert torch.equal(t["neg_elbo"], -ref["per_example"]["elbo"].double())
    seen = torch.cat(list(eval_batches(ds, 10, binarize, seed)))
    if binarize == "dynamic":  # the context model of the binarized images (not vacuous: they are not grey)
        assert set(seen.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(t["complexity"], anomaly.context_complexity(seen))
    else:  # grey images: zlib
        assert torch.equal(t["complexity"], complexity(seen))
        assert t["complexity"].tolist() == oracle_complexity(seen)
    with torch.no_grad():
        want = anomaly.orientation(model, seen)  # in one batch, not three: equal up to rounding
    torch.testing.assert_close(t["orientation"], want, rtol=0, atol=1e-5)  # float32 sums
    cal = anomaly.calibrate_components(score_table(model, grey(30, seed=5), binarize=binarize, seed=seed))
    c = score_table(model, ds, binarize=binarize, seed=seed, batch_size=10, calibration=cal)
    assert list(c) == ["score", "neg_elbo", "complexity", "orientation"]
    p1 = anomaly.tail_p(cal[anomaly.LIKELIHOOD], t["neg_elbo"] - t["complexity"])
    p2 = anomaly.tail_p(cal[anomaly.ORIENTATION], t["orientation"])
    assert torch.equal(c["score"], -torch.log(torch.minimum(p1, p2)))


def test_score_table_defaults_to_the_models_binarization_and_is_seeded():
    model, ds = tiny(), grey(9)
    assert anomaly.default_binarize(model) == "dynamic"
    assert anomaly.default_binarize(tiny(likelihood="gaussian")) == "none"
    a = score_table(model, ds)
    assert all(torch.equal(a[k], v) for k, v in score_table(model, ds, binarize="dynamic", seed=0).items())
    assert all(torch.equal(a[k], v) for k, v in score_table(model, ds).items())  # same call, same numbers
    assert not torch.equal(a["neg_elbo"], score_table(model, ds, seed=1)["neg_elbo"])


def test_score_table_with_importance_samples_adds_nll_as_evaluate_computes_it():
    model, ds = tiny(), grey(7)
    t = score_table(model, ds, iw_samples=20, binarize="none")
    assert list(t) == ["neg_elbo", "nll", "complexity", "orientation"]
    ref = evaluate(model, ds, binarize="none", iw_samples=20, per_example=True)
    assert torch.equal(t["nll"], ref["per_example"]["nll"].double())
    assert torch.isfinite(t["nll"]).all()


def test_an_autoencoder_has_no_density_to_sample():
    ae, ds = tiny("ae"), grey(5)
    msg = one_line(pytest.raises(VaekitError, score_table, ae, ds, iw_samples=10))
    assert "autoencoder" in msg and "iw-samples" in msg
    t = score_table(ae, ds)  # -ELBO of an AE is its reconstruction loss
    x = torch.cat(list(eval_batches(ds, 100, "dynamic", 0)))
    with torch.no_grad():
        recon = ae.decode(ae.encode(x).mean).log_prob(x).double()
    torch.testing.assert_close(t["neg_elbo"], -recon, rtol=0, atol=1e-4)


def _nan_for(model, bad: torch.Tensor):
    """Make the model's encoder give NaN for inputs equal to `bad` (one image)."""
    enc = model.encoder
    forward = enc.forward

    def patched(x):
        out = forward(x)
        hit = (x.reshape(len(x), -1) == bad.reshape(1, -1)).all(1)
        return torch.where(hit[:, None], torch.full_like(out, math.nan), out)

    enc.forward = patched


def test_a_non_finite_score_is_an_error_naming_the_example():
    model, ds = tiny(), grey(12)
    det = Detector(model, binarize="none", batch_size=4).fit(grey(10, seed=1), 0.1)
    _nan_for(model, ds.x[7])
    msg = one_line(pytest.raises(VaekitError, score_table, model, ds, binarize="none", batch_size=5))
    assert "example 7 " in msg and "non-finite" in msg and "grey" in msg
    with pytest.raises(VaekitError, match="example 7 "):
        det.score(ds)


def test_no_examples_is_a_one_line_error():
    one_line(pytest.raises(VaekitError, score_table, tiny(), Dataset(torch.zeros(0, *SHAPE), None, "empty")))
    one_line(pytest.raises(VaekitError, Detector(tiny()).fit, torch.zeros(0, *SHAPE)))


def test_a_nan_pixel_is_an_error_naming_the_example():
    x = grey(6).x.clone()
    x[4, 0, 2, 2] = math.nan
    msg = one_line(pytest.raises(VaekitError, score_table, tiny(), Dataset(x, None, "d"), binarize="none"))
    assert "example 4 " in msg


# ------------------------------------------------------------------------------------- tail p-values


def test_tail_p_is_uniform_on_inliers_drawn_like_the_calibration_set():
    """(1 + #{cal >= s}) / (n + 1) of a fresh draw is uniform on {1, ..., n + 1} / (n + 1): a KS-style bound on
    the largest gap between its empirical CDF and that law, over 20000 draws from the calibration's N(0, 1)."""
    g = torch.Generator().manual_seed(0)
    n, m = 99, 20000
    cal = torch.sort(torch.randn(n, generator=g, dtype=torch.float64)).values
    p = anomaly.tail_p(cal, torch.randn(m, generator=g, dtype=torch.float64))
    grid = torch.arange(1, n + 2, dtype=torch.float64) / (n + 1)
    ecdf = (p[None, :] <= grid[:, None] + 1e-12).double().mean(1)
    # not exactly uniform for one fixed calibration set (its draws set the steps), so the bound is the KS
    # distance of n = 99 calibration draws (1.63 / sqrt(n) at 1%) plus that of the m test draws
    assert (ecdf - grid).abs().max() < 1.63 / math.sqrt(n) + 1.63 / math.sqrt(m)
    # and averaged over calibration sets, exactly uniform: P(p <= k / (n + 1)) = k / (n + 1)
    hits = torch.zeros(n + 1, dtype=torch.float64)
    for _ in range(400):
        c = torch.sort(torch.randn(n, generator=g, dtype=torch.float64)).values
        pk = anomaly.tail_p(c, torch.randn(50, generator=g, dtype=torch.float64))
        hits += (pk[None, :] <= grid[:, None] + 1e-12).double().sum(1)
    assert ((hits / 20000) - grid).abs().max() < 1.63 / math.sqrt(20000) * 2


def test_tail_p_by_hand_and_monotone():
    cal = torch.tensor([1.0, 2.0, 2.0, 5.0], dtype=torch.float64)
    s = torch.tensor([0.0, 1.0, 1.5, 2.0, 4.0, 5.0, 9.0], dtype=torch.float64)
    assert anomaly.tail_p(cal, s).tolist() == [1.0, 1.0, 4 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5]  # ties count as above
    g = torch.Generator().manual_seed(1)
    cal = {k: torch.sort(torch.randn(50, generator=g, dtype=torch.float64)).values for k in anomaly.COMPONENTS}
    a = {k: torch.randn(300, generator=g, dtype=torch.float64) for k in anomaly.COMPONENTS}
    base = anomaly.combined_score(cal, a)
    assert ((base >= 0) & (base <= math.log(51) + 1e-12)).all()
    for k in anomaly.COMPONENTS:  # raising either component never lowers the score
        up = dict(a)
        up[k] = a[k] + torch.rand(300, generator=g, dtype=torch.float64)
        assert (anomaly.combined_score(cal, up) >= base).all()
    far = {k: torch.full((1,), 10.0, dtype=torch.float64) for k in anomaly.COMPONENTS}
    assert anomaly.combined_score(cal, far).item() == pytest.approx(math.log(51))


# ---------------------------------------------------------------------------------------------- calibrate


def _check_threshold(scores: torch.Tensor, fpr: float) -> float:
    """calibrate's contract: at most fpr of the scores lie strictly above t, and t is the smallest observed
    score with that property (above the next lower one lies more than fpr)."""
    t = calibrate(scores, fpr)
    n = len(scores)
    assert t in scores.tolist()
    assert (scores > t).sum().item() / n <= fpr
    lower = scores[scores < t]
    if len(lower):
        assert (scores > lower.max()).sum().item() / n > fpr, (t, lower.max().item(), fpr)
    return t


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, width=32) | st.sampled_from([0.0, 1.0, 2.0]), min_size=1, max_size=300
    ),
    st.floats(1e-4, 1 - 1e-4) | st.sampled_from([0.01, 0.05, 0.1, 0.57, 0.99, 1 / 3]),
)
@example(values=list(range(100)), fpr=0.57)  # 57 of 100 above is allowed, 57 / 100 == 0.57
@example(values=[0.0] * 10 + [1.0] * 5, fpr=1 / 3)
def test_calibrate_is_the_smallest_score_with_at_most_fpr_above(values, fpr):
    _check_threshold(torch.tensor(values, dtype=torch.float64), fpr)


def test_calibrate_on_round_fprs_and_distinct_scores():
    """Decimal FPRs a user types (0.57, 0.99) on n = 100..1000 distinct scores: exactly floor(fpr n) above."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 10, 99, 100, 200, 1000):
        s = torch.randn(n, generator=g, dtype=torch.float64)
        for fpr in (0.001, 0.01, 0.05, 0.07, 0.1, 0.29, 0.5, 0.57, 0.9, 0.99):
            _check_threshold(s, fpr)


def test_calibrate_on_scores_with_ties_and_float32():
    s = torch.tensor([3.0, 1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 0.0, 3.0, 4.0], dtype=torch.float32)
    assert _check_threshold(s, 0.05) == 5.0
    assert _check_threshold(s, 0.2) == 4.0  # 2 of 10 above 4
    assert _check_threshold(s, 0.3) == 3.0  # 3 of 10 above 3 (4, 5, 5): exactly 30%
    assert _check_threshold(s, 0.65) == 3.0  # at most 6 above; above 2 lie 7
    assert _check_threshold(s, 0.75) == 2.0


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, math.nan, math.inf, True, False, "0.05", None])
def test_check_fpr_refuses_what_is_not_a_rate(bad):
    msg = one_line(pytest.raises(VaekitError, check_fpr, bad))
    assert "--fpr" in msg and "(0, 1)" in msg
    with pytest.raises(VaekitError):
        calibrate(torch.arange(10.0), bad)


def test_check_fpr_takes_rates():
    assert check_fpr(0.05) == 0.05 and isinstance(check_fpr(np.float64(0.5)), float)


# ---------------------------------------------------------------------------------------------- Detector


def test_detector_fit_score_predict_round_trip(tmp_path):
    model, inliers = tiny(), grey(40)
    det = Detector(model).fit(inliers, fpr=0.1, source="grey validation")
    cal = anomaly.calibrate_components(score_table(model, inliers))
    assert all(torch.equal(det.calibration[k], cal[k]) for k in anomaly.COMPONENTS)
    s = det.score(inliers)
    assert torch.equal(s, score_table(model, inliers, calibration=cal)["score"])
    t = det.threshold
    assert t.value == calibrate(s, 0.1) and t.fpr == 0.1 and t.n == 40 and t.calibrated_on == "grey validation"
    assert (t.binarize, t.seed, t.score, t.model_sha256) == ("dynamic", 0, anomaly.SCORE, anomaly.model_sha256(model))
    assert t.calibration == {k: v.tolist() for k, v in cal.items()}
    assert det.predict(inliers).float().mean() <= 0.1
    others = grey(15, seed=3).x.clone()
    others[:5] = torch.rand(5, *SHAPE)  # noise
    pred = det.predict(others)
    assert pred.dtype == torch.bool and torch.equal(pred, det.score(others) > t.value)
    assert torch.equal(
        det.flag(torch.tensor([t.value, t.value + 1e-9], dtype=torch.float64)), torch.tensor([False, True])
    )
    # arrays work as well as Datasets: a uint8 numpy array of the same images
    u8 = (inliers.x * 255).round().to(torch.uint8).numpy()
    assert torch.equal(det.score(u8), det.score(Dataset(torch.from_numpy(u8), None, "u8")))

    path = det.save(tmp_path)
    assert path == tmp_path / "threshold.json" and json.loads(path.read_text())["value"] == t.value
    back = Detector(model).load(tmp_path)
    assert back.threshold == t and torch.equal(back.predict(others), pred)
    assert all(torch.equal(back.calibration[k], det.calibration[k]) for k in anomaly.COMPONENTS)  # bit for bit
    assert torch.equal(back.score(others), det.score(others))
    assert load_threshold(tmp_path, model) == t


def test_the_calibrated_threshold_keeps_its_fpr_on_held_out_inliers():
    """Fit at FPR 0.1 on 300 synthetic inliers; 800 more from the same generator are flagged at about that rate:
    within 0.06, three standard deviations of the binomial spread of 800 draws plus that of the threshold's
    quantile estimated from 300."""
    det = Detector(tiny(), batch_size=500).fit(grey(300, seed=10), fpr=0.1)
    held_out = det.predict(grey(800, seed=11)).double().mean().item()
    assert abs(held_out - 0.1) < 0.06, held_out


def test_loading_restores_the_binarization_the_threshold_was_fitted_with(tmp_path):
    model, inliers = tiny(), grey(20)
    det = Detector(model, binarize="none", seed=3).fit(inliers, fpr=0.2)
    det.save(tmp_path)
    assert json.loads((tmp_path / "threshold.json").read_text())["complexity"] == anomaly.COMPLEXITY_GREY
    back = Detector(model).load(tmp_path)
    assert (back.binarize, back.seed) == ("none", 3)
    assert torch.equal(back.score(inliers), det.score(inliers))


def test_detector_without_a_calibration_says_what_to_do(tmp_path):
    det = Detector(tiny())
    assert det.load(tmp_path).threshold is None  # no threshold.json: none, no error
    for f in (det.predict, det.score):  # a model built in Python has no run to calibrate on
        assert "fit" in one_line(pytest.raises(VaekitError, f, grey(3)))
    assert "fit" in one_line(pytest.raises(VaekitError, det.save, tmp_path))
    assert not (tmp_path / "threshold.json").exists()
    det.calibrate(grey(20))  # a calibration without a threshold: scores, no verdicts
    assert det.score(grey(3)).shape == (3,) and det.threshold is None
    assert "fit" in one_line(pytest.raises(VaekitError, det.predict, grey(3)))


def test_detector_refuses_data_of_another_shape_and_bad_fprs():
    det = Detector(tiny()).fit(grey(5), 0.2)
    msg = one_line(pytest.raises(VaekitError, det.score, torch.rand(4, 1, 5, 6)))
    assert "(1, 5, 6)" in msg and "(1, 6, 5)" in msg
    assert "--fpr" in one_line(pytest.raises(VaekitError, det.fit, grey(5), fpr=1.0))
    assert "Dataset" in one_line(pytest.raises(VaekitError, det.score, "mnist"))


def test_an_autoencoder_detector_works_and_refuses_a_density(tmp_path):
    det = Detector(tiny("ae")).fit(grey(20), fpr=0.25)
    assert det.predict(grey(20)).float().mean() <= 0.25
    assert "autoencoder" in one_line(pytest.raises(VaekitError, det.table, grey(3), iw_samples=5))


# ------------------------------------------------------------------------------------- threshold.json


def _saved(tmp_path, model=None):
    model = model or tiny()
    Detector(model).fit(grey(20), fpr=0.05).save(tmp_path)
    return model, tmp_path / "threshold.json"


def _edit(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _cal(path, f):
    d = json.loads(path.read_text())
    f(d["calibration"])
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_text(p.read_text()[:40]),  # truncated
        lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),  # not UTF-8
        lambda p: p.write_text(""),
        lambda p: p.write_text("[1, 2]"),
        lambda p: p.write_text('"a string"'),
        lambda p: p.write_text("[" * 100_000),  # deep nesting
        lambda p: _edit(p, value=math.nan),
        lambda p: _edit(p, value="12.5"),
        lambda p: _edit(p, value=None),
        lambda p: _edit(p, n=0),
        lambda p: _edit(p, n="20"),
        lambda p: _edit(p, fpr="0.05"),
        lambda p: _edit(p, extra_field=1),
        lambda p: (lambda d: p.write_text(json.dumps({k: v for k, v in d.items() if k != "value"})))(
            json.loads(p.read_text())
        ),
        lambda p: (p.unlink(), p.mkdir()),  # a folder named threshold.json
        lambda p: _edit(p, calibration=None),
        lambda p: _edit(p, calibration=[1, 2]),
        lambda p: _cal(p, lambda c: c.pop("orientation")),
        lambda p: _cal(p, lambda c: c.update(extra=c["orientation"])),
        lambda p: _cal(p, lambda c: c["orientation"].pop()),  # n values, not n - 1
        lambda p: _cal(p, lambda c: c["orientation"].reverse()),  # not sorted
        lambda p: _cal(p, lambda c: c["orientation"].__setitem__(0, "1.0")),
        lambda p: _cal(p, lambda c: c["orientation"].__setitem__(-1, math.inf)),
    ],
)
def test_a_damaged_threshold_file_is_a_one_line_error(tmp_path, damage):
    model, path = _saved(tmp_path)
    damage(path)
    msg = one_line(pytest.raises(VaekitError, load_threshold, tmp_path, model))
    assert "threshold.json" in msg and "not a valid threshold file" in msg and "--fpr" in msg
    with pytest.raises(VaekitError):
        Detector(model).load(tmp_path)


@pytest.mark.parametrize("fpr", [0, 1, 1.5, -0.1, 0.0])
def test_a_threshold_file_with_an_fpr_outside_0_1_is_refused(tmp_path, fpr):
    model, path = _saved(tmp_path)
    _edit(path, fpr=fpr)
    assert "not a valid threshold file" in one_line(pytest.raises(VaekitError, load_threshold, tmp_path, model))


def test_a_threshold_file_from_another_model_is_refused(tmp_path):
    model, _ = _saved(tmp_path)
    other = tiny(seed=1)  # same architecture, other weights
    assert anomaly.model_sha256(other) != anomaly.model_sha256(model)
    msg = one_line(pytest.raises(VaekitError, load_threshold, tmp_path, other))
    assert "another model" in msg
    with torch.no_grad():  # one weight changed by a hair is another model too
        next(model.parameters()).view(-1)[0] += 1e-6
    assert "another model" in one_line(pytest.raises(VaekitError, load_threshold, tmp_path, model))


def test_a_threshold_file_of_another_score_is_refused(tmp_path):
    model, path = _saved(tmp_path)
    _edit(path, score="neg_elbo")
    assert "another score" in one_line(pytest.raises(VaekitError, load_threshold, tmp_path, model))


def test_a_threshold_file_from_before_the_calibrated_score_asks_to_calibrate_again(tmp_path):
    """threshold.json as vaekit wrote it for the score -ELBO - L (no calibration): one line, recalibrate."""
    model, path = _saved(tmp_path)
    d = json.loads(path.read_text())
    del d["calibration"]
    d.update(score="neg_elbo - complexity", complexity=anomaly.COMPLEXITY_GREY)
    path.write_text(json.dumps(d, indent=2))
    msg = one_line(pytest.raises(VaekitError, load_threshold, tmp_path, model))
    assert msg == f"{path}: calibrated for another score ('neg_elbo - complexity'); calibrate again with --fpr"


def test_the_threshold_file_is_json_with_what_a_user_needs(tmp_path):
    model, path = _saved(tmp_path)
    d = json.loads(path.read_text())
    assert set(d) == {f for f in Threshold.__dataclass_fields__}
    assert d["fpr"] == 0.05 and d["n"] == 20 and d["score"] == anomaly.SCORE and "context" in d["complexity"]
    assert set(d["calibration"]) == set(anomaly.COMPONENTS) and all(len(v) == 20 for v in d["calibration"].values())


# ----------------------------------------------------------------------------------------- conditional


def test_a_conditional_models_scores_are_conditional_on_the_labels():
    torch.manual_seed(0)
    model = vaekit.build_model(ModelConfig(input_shape=SHAPE, hidden=(16,), latent_dim=4, num_classes=10)).eval()
    ds = grey(12)
    res = score_table(model, ds, iw_samples=8, binarize="none", seed=3)
    want = evaluate(model, ds, binarize="none", iw_samples=8, seed=3, per_example=True)["per_example"]
    torch.testing.assert_close(res["neg_elbo"], -want["elbo"].double())
    torch.testing.assert_close(res["nll"], want["nll"].double())  # -log p(x|y)
    det = Detector(model, binarize="none", seed=3).fit(ds.x, 0.25, y=ds.y)
    torch.testing.assert_close(det.table(ds.x, y=ds.y)["orientation"], res["orientation"])  # array and labels
    torch.testing.assert_close(det.table(ds)["orientation"], res["orientation"])  # a Dataset carries its own
    other = det.table(ds.x, y=(ds.y + 1) % 10)
    assert (other["neg_elbo"] - res["neg_elbo"]).abs().max() > 1e-6  # the labels matter
    assert (other["orientation"] - res["orientation"]).abs().max() > 1e-6
    assert det.predict(ds.x, y=ds.y).sum() <= 3
    with pytest.raises(VaekitError, match="the model is conditional .10 classes. and needs"):
        det.score(ds.x)
    with pytest.raises(VaekitError, match="labels must be 12 integers"):
        det.score(ds.x, y=ds.y[:5])
    with pytest.raises(VaekitError, match="label 12 is outside"):
        det.score(ds.x, y=torch.arange(12) + 1)
