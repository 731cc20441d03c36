"""vaekit.conditional against known answers: the confusion matrix and per-label agreement of a stand-in model
and classifier whose every verdict is known; restyle as the encode/decode it is defined by; the label's nats
on the conditional linear-Gaussian VAE of test_objectives, whose p(x|y) = N(b_y, W W^T + sigma^2 I) is exact
(its encoder is the exact posterior under every label, so the importance-sampled values are exact for any k):
the marginal by logsumexp against the direct sum of densities, the label information, the Bayes classifier,
and the gap to an unconditional linear-Gaussian VAE."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import one_line
from test_objectives import K_CLASSES, _lg_conditional_data, _linear_gaussian, _linear_gaussian_conditional, _mlp_vae

from vaekit.conditional import (
    ConditionalSettings,
    conditional_study,
    confusion,
    coolest_needed,
    first_of_labels,
    label_accuracy,
    label_grid,
    label_log_likelihoods,
    label_nats,
    marginal_log_likelihood,
    restyle,
    restyle_consistency,
    same_size,
    temperature_sweep,
)
from vaekit.config import RunConfig, TrainConfig
from vaekit.data import Dataset
from vaekit.errors import VaekitError

# ------------------------------------------------------------------ a model and a classifier with known verdicts


class _Stamp:
    """A stand-in conditional model of 3 classes: sample(n, g, y) returns 1x2x2 images holding the label
    (pixel 0) and the draw's position in the call (pixel 1)."""

    conditional, num_classes, is_vae = True, 3, True
    config = SimpleNamespace(input_shape=(1, 2, 2))

    def sample(self, n, generator=None, y=None, temperature=1.0):
        x = torch.zeros(n, 1, 2, 2)
        x[:, 0, 0, 0] = torch.as_tensor(y).float()
        x[:, 0, 0, 1] = torch.arange(n).float()
        x[:, 0, 1, 0] = temperature
        return x


class _Judge:
    """A classifier of 4 classes: the stamped label, except label 2 at positions 0, 4, 8 (-> 1) and label 0
    at odd positions (-> 3, a class the model does not have)."""

    config = SimpleNamespace(classes=4, input_shape=(1, 2, 2))

    def predict(self, x):
        y, i = x[:, 0, 0, 0].long(), x[:, 0, 0, 1].long()
        out = y.clone()
        out[(y == 2) & (i % 4 == 0)] = 1
        out[(y == 0) & (i % 2 == 1)] = 3
        return out


def test_confusion_counts_each_pair():
    m = confusion(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 3, 1, 2, 1, 2]), 3, 4)
    assert m.tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 1, 2, 0]]


def test_label_accuracy_of_known_verdicts():
    """4 draws per label, label-major in one call (positions 0-3: label 0, 4-7: label 1, 8-11: label 2)."""
    a = label_accuracy(_Stamp(), _Judge(), n_per_label=4)
    assert a.confusion.tolist() == [[2, 0, 0, 2], [0, 4, 0, 0], [0, 1, 3, 0]]
    assert a.per_label.tolist() == [0.5, 1.0, 0.75]
    assert a.accuracy == pytest.approx(9 / 12) and a.n == 4 and a.worst == (0, 0.5)
    # batched: positions restart at every batch of 6, and the counts follow
    b = label_accuracy(_Stamp(), _Judge(), n_per_label=4, batch=6)
    assert b.confusion.sum().item() == 12 and b.confusion[1].tolist() == [0, 4, 0, 0]


class _ColdJudge(_Judge):
    """_Judge, but right about every draw made at a temperature of 0.6 or below; hidden features = the pixels."""

    def predict(self, x):
        out = super().predict(x)
        cold = x[:, 0, 1, 0] <= 0.6
        out[cold] = x[cold, 0, 0, 0].long()
        return out

    def embed(self, x):
        return x.flatten(1)


def test_temperature_sweep_and_the_coolest_temperature_needed():
    real = torch.randn(50, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sweep = temperature_sweep(_Stamp(), _ColdJudge(), real, (1.0, 0.8, 0.6, 0.4), n_per_label=4)
    assert [p.temperature for p in sweep] == [1.0, 0.8, 0.6, 0.4]
    assert sweep[0].accuracy.per_label.tolist() == [0.5, 1.0, 0.75]  # as label_accuracy at T = 1
    assert sweep[2].accuracy.per_label.tolist() == [1.0, 1.0, 1.0] and sweep[3].accuracy.accuracy == 1.0
    assert all(math.isfinite(p.frechet) and p.frechet > 0 for p in sweep)
    assert coolest_needed(sweep, 0.95) == 0.6  # the highest temperature at which every label reaches 95%
    assert coolest_needed(sweep, 0.7) == 0.6 and coolest_needed(sweep[:2], 0.95) == 0.8  # none: the lowest
    assert coolest_needed(sweep, 0.5) == 1.0


def test_label_grid_at_a_temperature_scales_the_same_draws(cmodel):
    """A VAE with the N(0, I) prior: draws at T are T times the draws at 1 with the same generator."""
    z1 = cmodel.latent_sampler(6, torch.Generator().manual_seed(2))
    zt = cmodel.latent_sampler(6, torch.Generator().manual_seed(2), temperature=0.5)
    torch.testing.assert_close(zt, 0.5 * z1, rtol=0, atol=0)
    y = torch.arange(4).repeat_interleave(3)
    want = cmodel.decode(0.5 * cmodel.latent_sampler(12, torch.Generator().manual_seed(5)), y).mean
    got = label_grid(cmodel, 3, torch.Generator().manual_seed(5), temperature=0.5)
    torch.testing.assert_close(got, want)


def test_label_accuracy_refuses_a_classifier_that_does_not_fit():
    small = SimpleNamespace(config=SimpleNamespace(classes=2, input_shape=(1, 2, 2)))
    with pytest.raises(VaekitError) as e:
        label_accuracy(_Stamp(), small, 4)
    assert one_line(e) == "the classifier knows 2 classes, fewer than the model's 3"
    other = SimpleNamespace(config=SimpleNamespace(classes=4, input_shape=(1, 28, 28)))
    with pytest.raises(VaekitError, match="shape"):
        label_accuracy(_Stamp(), other, 4)
    with pytest.raises(VaekitError, match="not conditional"):
        label_accuracy(_mlp_vae(), _Judge(), 4)


# ------------------------------------------------------------------ restyle on a real (tiny) conditional model


@pytest.fixture(scope="module")
def cmodel():
    return _mlp_vae(num_classes=4, seed=3).float().eval()


def test_restyle_decodes_each_code_under_every_label(cmodel):
    x, y = torch.rand(5, 1, 6, 5), torch.tensor([0, 3, 1, 2, 3])
    out = restyle(cmodel, x, y)
    assert out.shape == (5, 4, 1, 6, 5)
    z = cmodel.encode(x, y).mean
    for c in range(4):
        torch.testing.assert_close(out[:, c], cmodel.decode(z, torch.full((5,), c)).mean)
    grid = label_grid(cmodel, 3, torch.Generator().manual_seed(0))
    ref = cmodel.sample(12, torch.Generator().manual_seed(0), y=torch.arange(4).repeat_interleave(3))
    torch.testing.assert_close(grid, ref)


def test_restyle_consistency_matches_its_definition(cmodel):
    """A classifier that is a fixed function of the pixels: the agreement per target label is recomputed from
    restyle() itself; `transfers` leaves out each digit's own label."""
    judge = SimpleNamespace(
        config=SimpleNamespace(classes=4, input_shape=(1, 6, 5)),
        predict=lambda imgs: (imgs.flatten(1).sum(1) * 7).long() % 4,
    )
    x, y = torch.rand(7, 1, 6, 5), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    r = restyle_consistency(cmodel, judge, x, y, batch=3)
    pred = judge.predict(restyle(cmodel, x, y).flatten(0, 1)).view(7, 4)
    hit = pred == torch.arange(4)
    torch.testing.assert_close(r.per_label, hit.double().mean(0))
    own = torch.nn.functional.one_hot(y, 4).bool()
    assert r.transfers == pytest.approx(hit[~own].double().mean().item())
    assert r.confusion.sum().item() == 28 and r.n == 7


def test_first_of_labels():
    assert first_of_labels(torch.tensor([3, 3, 1, 3, 0, 1, 2]), 3) == [0, 2, 4]
    assert first_of_labels(torch.tensor([1, 1]), 5) == [0]


# ------------------------------------------------------------------ nats on a model whose p(x|y) is exact


def _exact(model_and_dists):
    model, p_x_given = model_and_dists
    return model.float(), p_x_given


def test_marginal_by_logsumexp_is_the_direct_sum_of_densities():
    model, p_x_given = _exact(_linear_gaussian_conditional(exact_posterior=True))
    x, _, _ = _lg_conditional_data(p_x_given, n=8)
    log_py = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    lpxy = label_log_likelihoods(model, x.float(), k=4, generator=torch.Generator().manual_seed(0))  # (8, K)
    exact = torch.stack([d.log_prob(x) for d in p_x_given], 1)
    torch.testing.assert_close(lpxy, exact, atol=2e-3, rtol=0)
    direct = torch.log(sum(log_py[c].exp() * exact[:, c].exp() for c in range(K_CLASSES)))
    torch.testing.assert_close(marginal_log_likelihood(lpxy, log_py), direct, atol=2e-3, rtol=0)


def test_label_nats_against_closed_forms():
    """Every number of label_nats on the exact conditional model (and an exact unconditional one): the
    decomposition gap = label_info + better_model holds, label_info <= the bound, the Bayes classifier is the
    argmax of the exact densities."""
    model, p_x_given = _exact(_linear_gaussian_conditional(exact_posterior=True))
    umodel, p_x = _linear_gaussian(exact_posterior=True)
    umodel = umodel.float()
    x, y, exact = _lg_conditional_data(p_x_given, n=12)
    for m in (model, umodel):
        m.run_config = RunConfig(m.config, TrainConfig(data="lg.npz", binarize="none"))
    log_py = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    t = label_nats(model, Dataset(x.float(), y, "lg"), k=3, log_py=log_py, umodel=umodel, batch_size=5)
    all_y = torch.stack([d.log_prob(x) for d in p_x_given], 1)  # (12, K)
    marg = torch.logsumexp(all_y + log_py, 1)
    unc = p_x.log_prob(x)
    assert t.n == 12 and t.k == 3
    assert t.nll_given == pytest.approx(-exact.mean().item(), abs=2e-3)
    assert t.nll_marginal == pytest.approx(-marg.mean().item(), abs=2e-3)
    assert t.label_info == pytest.approx((exact - marg).mean().item(), abs=2e-3)
    assert t.info_bound == pytest.approx(-log_py[y].mean().item())
    assert t.label_info <= t.info_bound + 1e-9
    assert t.accuracy == pytest.approx(((all_y + log_py).argmax(1) == y).double().mean().item())
    assert t.nll_uncond == pytest.approx(-unc.mean().item(), abs=2e-3)
    assert t.gap == pytest.approx(t.label_info + t.better_model, abs=1e-9)
    assert t.better_model == pytest.approx((marg - unc).mean().item(), abs=2e-3)


def test_label_nats_refusals():
    model, _ = _exact(_linear_gaussian_conditional(exact_posterior=True))
    model.run_config = RunConfig(model.config, TrainConfig(data="lg.npz", binarize="none"))
    x = torch.randn(4, 6)
    with pytest.raises(VaekitError, match="has none"):
        label_nats(model, Dataset(x, None, "nolabels"), k=2, log_py=torch.zeros(3))
    with pytest.raises(VaekitError, match="label 5 is outside"):
        label_nats(model, Dataset(x, torch.tensor([0, 1, 5, 2]), "beyond"), k=2, log_py=torch.zeros(3))
    with pytest.raises(VaekitError, match="unconditional VAE"):
        label_nats(model, Dataset(x, torch.tensor([0, 1, 2, 2]), "d"), k=2, log_py=torch.zeros(3), umodel=model)
    with pytest.raises(VaekitError, match="label prior"):
        label_nats(model, Dataset(x, torch.tensor([0, 1, 2, 2]), "d"), k=2, prior="flat")


def test_same_size_asks_for_the_unconditional_twin(cmodel):
    twin = _mlp_vae(seed=3).float()
    for m in (cmodel, twin):
        m.run_config = RunConfig(m.config, TrainConfig(data="d.npz"))
    assert same_size(cmodel, twin) and not same_size(cmodel, cmodel)
    wider = _mlp_vae(seed=3, hidden=(32,)).float()
    wider.run_config = twin.run_config
    assert not same_size(cmodel, wider)


def test_conditional_study_on_a_tiny_model(cmodel):
    """Shapes and finite numbers of everything the report renders, with a stand-in classifier."""
    g = torch.Generator().manual_seed(0)
    ds = Dataset((torch.rand(40, 1, 6, 5, generator=g) * 255).to(torch.uint8), torch.arange(40) % 4, "d")
    cmodel.run_config = RunConfig(cmodel.config, TrainConfig(data="d.npz", binarize="dynamic"))
    judge = SimpleNamespace(
        config=SimpleNamespace(classes=4, input_shape=(1, 6, 5)),
        predict=lambda imgs: imgs.flatten(1).argmax(1) % 4,
        embed=lambda imgs: imgs.flatten(1),
    )
    s = ConditionalSettings(grid=3, rows=2, per_label=5, n_restyle=10, n_nats=8, k=4, prior="uniform")
    st = conditional_study(cmodel, judge, ds, s)
    assert st.grid.shape == (12, 1, 6, 5) and st.indices == [0, 1] and st.restyled.shape == (2, 4, 1, 6, 5)
    assert st.accuracy.confusion.sum() == 20 and st.consistency.confusion.sum() == 40
    assert [p.temperature for p in st.sweep] == list(s.temperatures) and st.sweep[0].accuracy is st.accuracy
    assert st.cool in s.temperatures and st.cool_grid.shape == st.grid.shape
    assert st.real.shape == (4,)
    assert st.nats.info_bound == pytest.approx(math.log(4))
    for v in (st.nats.nll_given, st.nats.nll_marginal, st.nats.label_info):
        assert math.isfinite(v)
    assert st.nats.nll_uncond is None
    bare = conditional_study(cmodel, None, ds, s)
    assert bare.accuracy is None and bare.consistency is None and bare.real is None and bare.sweep is None
