"""evaluate against known answers: the importance-sampled log p(x) on a linear-Gaussian VAE whose log p(x) is exact,
chunking over k, the compiled path, active units, posterior means in batches, and evaluate() on a small dataset
(a mixture prior too). The toy VAEs are test_objectives'."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import failing_compile
from test_objectives import (
    _binary,
    _gen,
    _lg_conditional_data,
    _lg_data,
    _linear_gaussian,
    _linear_gaussian_conditional,
    _Mixture,
    _mixture,
    _mlp_vae,
    _vae_with,
)

import vaekit
from vaekit.config import ModelConfig
from vaekit.data import Dataset
from vaekit.evaluate import active_units, evaluate, log_likelihood, posterior_means
from vaekit.objectives import elbo

# -------------------------------------------------------------------------------------- log p(x) by importance sampling


def test_is_estimator_is_exact_with_the_true_posterior():
    """With q = p(z|x) every importance weight equals p(x): any k gives log p(x) to rounding."""
    model, p_x = _linear_gaussian(exact_posterior=True)
    x = _lg_data(p_x)
    exact = p_x.log_prob(x)
    for k in (1, 7, 100):
        torch.testing.assert_close(log_likelihood(model, x, k=k, generator=_gen(k)), exact, rtol=0, atol=1e-9)
    t = elbo(model, x, analytic_kl=False)
    torch.testing.assert_close(t.elbo, exact, rtol=0, atol=1e-9)


def test_is_estimator_converges_to_exact_log_px_with_a_poor_encoder():
    model, p_x = _linear_gaussian(exact_posterior=False)
    x = _lg_data(p_x)
    exact = p_x.log_prob(x)
    torch.manual_seed(0)
    mean_elbo = elbo(model, x.repeat(500, 1)).elbo.view(500, -1).mean(0)
    assert (exact - mean_elbo).mean() > 0.5  # the encoder really is poor: the ELBO is far below log p(x)
    est = log_likelihood(model, x, k=5000, generator=_gen(0))
    torch.testing.assert_close(est, exact, rtol=0, atol=0.1)  # ~5 standard deviations of the estimator
    assert (est - exact).mean().abs() < 0.03
    # and it is a lower bound on average: over repeats, E[estimate] <= log p(x)
    x_rep = x.repeat(50, 1)
    est_k10 = log_likelihood(model, x_rep, k=10, generator=_gen(1)).view(50, -1)
    assert (est_k10.mean(0) <= exact + 3 * est_k10.std(0) / math.sqrt(50)).all()
    assert (exact - est_k10.mean(0)).mean() > 0.01


def test_chunking_over_k_gives_the_same_estimate():
    model, p_x = _linear_gaussian(exact_posterior=False)
    x = _lg_data(p_x, n=5)
    ref = log_likelihood(model, x, k=60, chunk=60, generator=_gen(7))
    for chunk in (1, 7, 59):
        torch.testing.assert_close(
            log_likelihood(model, x, k=60, chunk=chunk, generator=_gen(7)), ref, rtol=0, atol=1e-10
        )
    other = log_likelihood(model, x, k=60, chunk=60, generator=_gen(8))
    assert (other - ref).abs().max() > 1e-6  # the comparison is not vacuous


def test_default_chunking_on_images_matches_one_chunk():
    """784 pixels x B=4: the default chunk is ~1300 samples, so k=3000 runs in three chunks."""
    model = _mlp_vae(shape=(1, 28, 28), latent=5, hidden=(32,)).float()
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3), generator=_gen(9))
    a = log_likelihood(model, x, k=3000, generator=_gen(10))
    b = log_likelihood(model, x, k=3000, chunk=3000, generator=_gen(10))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    with pytest.raises(ValueError):
        log_likelihood(model, x, k=0)


def test_log_likelihood_refuses_an_autoencoder():
    ae = _mlp_vae(model="ae")
    with pytest.raises(ValueError, match="autoencoder"):
        log_likelihood(ae, _binary((2, 1, 6, 5)), k=3)


# --------------------------------------------------------------------------------------------------- evaluation helpers


def test_active_units_on_a_constructed_case():
    g = _gen(20)
    n = 4000
    mu = torch.stack(
        [
            torch.randn(n, generator=g) * 1.0,  # var 1: active
            torch.randn(n, generator=g) * 0.2,  # var 0.04: active
            torch.randn(n, generator=g) * 0.05,  # var 0.0025: inactive
            torch.full((n,), 3.0),  # constant (collapsed to a non-zero mean): inactive
            torch.randn(n, generator=g) * 0.5 + 7,  # var 0.25: active
            torch.randn(n, generator=g) * 0.09,
        ],
        1,
    )  # var 0.0081: inactive (just under 0.01)
    assert active_units(mu) == 3
    assert active_units(mu, threshold=0.005) == 4
    assert active_units(mu, threshold=2.0) == 0


def test_posterior_means_and_evaluate_on_a_small_dataset():
    model = _mlp_vae(seed=21).float()
    x = (torch.rand(30, 1, 6, 5, generator=_gen(22)) * 255).to(torch.uint8)
    ds = Dataset(x, torch.arange(30) % 3, "toy")
    mu = posterior_means(model, ds, batch_size=7)
    assert mu.shape == (30, 4)
    with torch.inference_mode():
        assert torch.allclose(mu, model.encode(ds.batch(slice(0, 30))).mean, atol=1e-6)  # batching changes nothing
        assert torch.allclose(posterior_means(model, ds.batch(slice(0, 30)), batch_size=4), mu, atol=1e-6)  # a tensor
    res = evaluate(model, ds, binarize="dynamic", iw_samples=50, batch_size=8, per_example=True)
    for key in ("split", "n", "elbo", "recon", "kl", "nll", "iw_samples", "active_units", "seconds"):
        assert key in res
    assert res["n"] == 30 and res["iw_samples"] == 50
    assert res["elbo"] == pytest.approx(res["recon"] - res["kl"], rel=1e-5)
    assert res["nll"] <= -res["elbo"] + 1e-3  # log p(x) >= ELBO (IS with 50 samples vs one-sample ELBO)
    pe = res["per_example"]
    assert pe["elbo"].shape == (30,) and pe["nll"].shape == (30,)
    again = evaluate(model, ds, binarize="dynamic", iw_samples=50, batch_size=8)
    assert again["nll"] == res["nll"] and again["elbo"] == res["elbo"]  # seeded: reproducible

    torch.manual_seed(123)
    before = torch.get_rng_state()
    evaluate(model, ds, iw_samples=5, batch_size=8)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is left alone
    assert active_units(mu[:1]) == 0

    ae = _mlp_vae(model="ae", seed=23).float()
    res = evaluate(ae, ds, binarize="none", iw_samples=50)
    assert res["nll"] is None and res["iw_samples"] == 0 and res["kl"] == 0
    assert res["recon_loss"] == pytest.approx(-res["recon"])


@pytest.mark.slow  # torch.compile: seconds with a warm inductor cache, much longer on a fresh machine
def test_compiled_log_likelihood_matches_the_eager_one():
    """Large evaluations compute the log-weights with torch.compile: the same float32 numbers (to rounding)
    from the same noise, and the switch is on for MNIST-sized work, off for small calls."""
    import vaekit.evaluate as E

    model = _mlp_vae(shape=(1, 28, 28), latent=5, hidden=(32,)).float()
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.3), generator=_gen(11))
    eager = log_likelihood(model, x, k=500, generator=_gen(12), compile=False)
    compiled = log_likelihood(model, x, k=500, generator=_gen(12), compile=True)
    assert not E._compiled.get("broken"), "torch.compile failed here: the fast path is not exercised"
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-3)
    other = log_likelihood(model, x, k=500, generator=_gen(13), compile=True)
    assert (other - eager).abs().max() > 1e-3  # a different draw gives a different estimate
    assert 5000 * 100 * 784 < E.COMPILE_MIN_WORK < 5000 * 10000 * 784  # per 100-digit batch: no; a test set: yes


def test_fused_log_weights_equal_the_direct_ones():
    """The fused Bernoulli form (x.a by a small product, softplus as max + log of grouped products) is the same
    function as objectives.log_weights: to 1e-9 in float64 on binary and grey pixels, unconditional and
    conditional, with and without hidden layers, with stochastic layers; in float32 within 1e-4 nats of float64
    for 784 pixels of large logits (the default path of `vaekit eval`)."""
    import vaekit.evaluate as E
    from vaekit.objectives import log_weights

    assert E._group(784) == 112 and E._group(30) == 30 and E._group(127) == 1 and E._group(3072) == 96
    g = _gen(30)
    for kw, x in [
        ({}, _binary((5, 1, 6, 5))),
        ({"hidden": ()}, _binary((5, 1, 6, 5))),
        ({"hidden": (16, 8), "activation": "silu"}, torch.rand(5, 1, 6, 5, generator=g, dtype=torch.float64)),
        ({"num_classes": 3}, _binary((5, 1, 6, 5))),
        ({"latent": [4, 3]}, _binary((5, 1, 6, 5))),  # stochastic layers: p(x|z) reads z1 only
        ({"latent": [4, 3, 2], "prior": "vamp", "prior_components": 3}, _binary((5, 1, 6, 5))),
    ]:
        model = _mlp_vae(seed=31, **kw)
        m = model.given(torch.tensor([0, 2, 1, 1, 0])) if kw.get("num_classes") else model
        with torch.inference_mode():
            q = m.encode(x)
            eps = torch.randn(7, *q.mu.shape, generator=g, dtype=torch.float64)
            want = log_weights(m, x, 7, eps=eps, q=q)
            torch.testing.assert_close(E.fused_log_weights(m, x, 7, eps, q), want, rtol=0, atol=1e-9)
    model = _mlp_vae(shape=(1, 28, 28), latent=5, hidden=(32,), seed=32)
    with torch.no_grad():
        model.decoder.net[-1].weight.mul_(20)  # logits of tens: softplus sums in the thousands
    x = _binary((6, 1, 28, 28))
    with torch.inference_mode():
        q = model.encode(x)
        eps = torch.randn(50, *q.mu.shape, generator=g, dtype=torch.float64)
        want = log_weights(model, x, 50, eps=eps, q=q)
        got = E.fused_log_weights(model.float(), x.float(), 50, eps.float(), model.encode(x.float()))
    assert want.abs().mean() > 300
    assert (got.double() - want).abs().max() < 1e-3 and (got.double() - want).mean().abs() < 1e-4
    for other in (_mlp_vae("gaussian"), _mlp_vae("cbernoulli"), _mlp_vae(arch="conv", shape=(1, 8, 8))):
        assert E._mlp_bernoulli(other) is None  # the generic log-weights for these


def test_amp_evaluation_reports_its_shift_from_float32_and_is_refused_without_native_bf16(monkeypatch):
    """--amp (bf16 decoder products): with one batch its reported shift is exactly its NLL minus float32's
    (same seed, same noise), a few hundredths of a nat at most; refused in one line for a model without the
    fused form and on a CPU without native bf16."""
    from vaekit.config import cpu_has_bf16
    from vaekit.errors import VaekitError

    model = _mlp_vae(shape=(1, 14, 14), latent=5, hidden=(64,), seed=33).float()
    x = (torch.rand(8, 1, 14, 14, generator=_gen(34)) * 255).to(torch.uint8)
    ds = Dataset(x, None, "toy")
    fp32 = evaluate(model, ds, binarize="static", iw_samples=200, batch_size=8)
    assert fp32["amp"] is False and fp32["amp_nll_shift"] is None
    if cpu_has_bf16():
        bf = evaluate(model, ds, binarize="static", iw_samples=200, batch_size=8, amp=True)
        assert bf["amp"] is True and bf["elbo"] == fp32["elbo"]
        assert bf["amp_nll_shift"] == pytest.approx(bf["nll"] - fp32["nll"], abs=1e-4)
        assert 0 < abs(bf["amp_nll_shift"]) < 0.05
    with pytest.raises(VaekitError, match="MLP decoder with a Bernoulli"):
        evaluate(_mlp_vae("gaussian").float(), ds, binarize="none", iw_samples=5, amp=True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(VaekitError, match="native bf16"):
        evaluate(model, ds, binarize="static", iw_samples=5, amp=True)


def test_evaluate_a_vae_whose_prior_does_not_factorise():
    """A mixture prior has no per-dimension KL: evaluate still gives the ELBO (its Monte Carlo KL) and log p(x),
    with kl_per_dim None, and its ELBO is the mean of objectives.elbo under the same seed."""
    mix = _mixture()
    model = _vae_with(_Mixture(torch.tensor([0.0, 0.7, -0.5]), mix.comp.mu.float(), mix.comp.logvar.float())).float()
    x = (torch.rand(12, 1, 6, 5, generator=_gen(40)) * 255).to(torch.uint8)
    ds = Dataset(x, None, "toy")
    res = evaluate(model, ds, binarize="none", iw_samples=20, batch_size=12, seed=3)
    assert res["kl_per_dim"] is None and res["nll"] is not None and math.isfinite(res["nll"])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        want = elbo(model, ds.batch(slice(0, 12)))
    assert res["elbo"] == pytest.approx(want.elbo.mean().item(), rel=1e-6)
    assert res["kl"] == pytest.approx(want.kl.mean().item(), rel=1e-6)


def test_evaluation_falls_back_to_eager_when_compile_fails(digits, monkeypatch):
    import vaekit.evaluate as E

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(E, "_compiled", {})
    model = vaekit.build_model(ModelConfig(hidden=(16,), latent_dim=2))
    x = digits.batch(slice(0, 5))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    got = E.log_likelihood(model, x, k=20, generator=g(), compile=True)
    assert E._compiled.get("broken")
    torch.testing.assert_close(got, E.log_likelihood(model, x, k=20, generator=g(), compile=False), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- conditional


def test_is_estimator_of_log_p_x_given_y_against_the_closed_form():
    """log p(x|y) = log N(x; b_y, W W^T + sigma^2 I) for the conditional linear-Gaussian VAE: exact with the
    true posterior at any k, within the estimator's noise with a poor encoder and k = 5000."""
    model, p_x_given = _linear_gaussian_conditional(exact_posterior=True)
    x, y, exact = _lg_conditional_data(p_x_given)
    for k in (1, 50):
        torch.testing.assert_close(log_likelihood(model.given(y), x, k=k, generator=_gen(k)), exact, rtol=0, atol=1e-9)
    model, p_x_given = _linear_gaussian_conditional(exact_posterior=False)
    x, y, exact = _lg_conditional_data(p_x_given)
    torch.manual_seed(0)
    assert (exact - elbo(model.given(y), x).elbo).mean() > 0.5  # the encoder really is poor
    est = log_likelihood(model.given(y), x, k=5000, generator=_gen(0))
    torch.testing.assert_close(est, exact, rtol=0, atol=0.1)
    assert (est - exact).mean().abs() < 0.03


def _labelled(n=24, k=3, seed=31):
    x = (torch.rand(n, 1, 6, 5, generator=_gen(seed)) * 255).to(torch.uint8)
    return Dataset(x, torch.arange(n) % k, "toy")


def test_evaluate_a_conditional_model_is_conditional_on_the_datas_labels():
    model = _mlp_vae(seed=33, num_classes=3).float().eval()
    ds = _labelled()
    res = evaluate(model, ds, binarize="none", iw_samples=40, batch_size=10, seed=2, per_example=True)
    assert res["conditional"] is True
    x = ds.batch(slice(0, len(ds)))
    with torch.random.fork_rng():
        torch.manual_seed(2)
        want = torch.cat([elbo(model.given(ds.y[i : i + 10]), x[i : i + 10]).elbo for i in range(0, len(ds), 10)])
    torch.testing.assert_close(res["per_example"]["elbo"], want)
    g = torch.Generator().manual_seed(vaekit.seeds.importance(2))
    nll = torch.cat(
        [-log_likelihood(model.given(ds.y[i : i + 10]), x[i : i + 10], 40, generator=g) for i in (0, 10, 20)]
    )
    torch.testing.assert_close(res["per_example"]["nll"], nll)
    mu = posterior_means(model, ds, batch_size=7)
    torch.testing.assert_close(mu, model.encode(x, ds.y).mean)
    torch.testing.assert_close(posterior_means(model, x, batch_size=5, y=ds.y), mu)
    # an unconditional model ignores the labels the data has
    assert evaluate(_mlp_vae(seed=33).float(), ds, binarize="none", iw_samples=0)["conditional"] is False


def test_evaluate_a_conditional_model_refuses_data_without_labels_or_beyond_its_classes():
    model = _mlp_vae(seed=33, num_classes=3).float()
    ds = _labelled()
    with pytest.raises(vaekit.VaekitError, match="toy: the model is conditional .3 classes. and needs"):
        evaluate(model, Dataset(ds.x, None, "toy"), iw_samples=0)
    with pytest.raises(vaekit.VaekitError, match="toy: label 3 is outside the model's classes 0..2"):
        evaluate(model, Dataset(ds.x, ds.y + 1, "toy"), iw_samples=0)
    with pytest.raises(vaekit.VaekitError, match="conditional"):
        posterior_means(model, ds.x.float() / 255)
