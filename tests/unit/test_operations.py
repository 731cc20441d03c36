"""The run-folder operations behind the CLI (vaekit.operations) and evaluate.score_table, on a tiny
untrained model and synthetic 8x8 data: quick, no download. The numbers are checked against the lower-level
functions they must reproduce (objectives.elbo, evaluate.log_likelihood, posterior_means), the files
against what was computed."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, log_likelihood, posterior_means, score_table
from vaekit.objectives import elbo
from vaekit.operations import (
    evaluate_run,
    run_data,
    save_codes,
    save_interpolation,
    save_reconstructions,
    save_samples,
    save_scores,
)

N = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Binary 8x8 images with labels (and a copy without), a VAE and an AE folder built on them (untrained)."""
    root = tmp_path_factory.mktemp("ops")
    g = np.random.default_rng(0)
    x = (g.random((N, 8, 8)) < 0.3).astype(np.uint8) * 255
    np.savez(root / "imgs.npz", x=x, y=np.arange(N) % 4)
    np.save(root / "nolabel.npy", x[:12])
    np.save(root / "vectors.npy", g.random((N, 10)).astype(np.float32))
    folders = {}
    for kind in ("vae", "ae"):
        rc = RunConfig(
            ModelConfig(model=kind, input_shape=(1, 8, 8), latent_dim=2, hidden=(16,)),
            TrainConfig(data=str(root / "imgs.npz"), binarize="none"),
        )
        torch.manual_seed(1)
        vaekit.save(vaekit.build_model(rc.model), root / kind, rc)
        folders[kind] = root / kind
    return root, folders


def _x(root, n=N):
    return vaekit.data.load(root / "imgs.npz").batch(slice(0, n))


def test_run_data_is_the_runs_data_or_the_given_one_with_the_models_shape(runs):
    root, f = runs
    model = vaekit.load(f["vae"])
    assert torch.equal(run_data(model).x, vaekit.data.load(root / "imgs.npz").x)
    assert len(run_data(model, root / "nolabel.npy")) == 12
    with pytest.raises(VaekitError) as e:
        run_data(model, root / "vectors.npy")
    assert str(e.value) == f"--data {root / 'vectors.npy'}: examples have shape (10,), the model expects (1, 8, 8)"


def test_score_table_vae_against_elbo_and_log_likelihood(runs):
    root, f = runs
    model = vaekit.load(f["vae"])
    table = score_table(model, vaekit.data.load(root / "imgs.npz"), iw_samples=7)
    assert list(table) == ["index", "label", "neg_elbo", "neg_log_px"]
    assert table["index"] == list(range(N)) and table["label"] == [i % 4 for i in range(N)]
    x = _x(root)  # one batch of evaluate's 100, not binarized (binarize none): the same draws as evaluate's
    with torch.random.fork_rng():
        torch.manual_seed(0)  # evaluate's seed for the ELBO's sample
        want_elbo = -elbo(model, x).elbo
    want_nll = -log_likelihood(model, x, 7, generator=torch.Generator().manual_seed(1))  # evaluate's seed + 1
    assert table["neg_elbo"] == pytest.approx(want_elbo.tolist(), abs=1e-5)
    assert table["neg_log_px"] == pytest.approx(want_nll.tolist(), abs=1e-5)
    assert all(isinstance(v, float) for v in table["neg_elbo"] + table["neg_log_px"])


def test_score_table_ae_is_the_reconstruction_loss_and_has_no_density(runs):
    root, f = runs
    model = vaekit.load(f["ae"])
    table = score_table(model, vaekit.data.load(root / "nolabel.npy"), iw_samples=50)
    assert list(table) == ["index", "label", "neg_elbo"] and table["label"] == [None] * 12
    x = _x(root, 12)
    with torch.no_grad():  # oracle: the Bernoulli negative log-likelihood of x under the decoded code
        p = model.decode(model.encode(x).mean).mean
        want = torch.nn.functional.binary_cross_entropy(p, x, reduction="none").flatten(1).sum(1)
    assert table["neg_elbo"] == pytest.approx(want.tolist(), rel=1e-4)


def test_save_scores_writes_the_table_as_csv(runs, tmp_path):
    root, f = runs
    out = tmp_path / "sub" / "scores.csv"
    table = save_scores(f["vae"], root / "imgs.npz", out, iw_samples=5, limit=9)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["index", "label", "neg_elbo", "neg_log_px"] and len(rows) == 10
    for i, row in enumerate(rows[1:]):
        assert row == [str(i), str(i % 4), f"{table['neg_elbo'][i]:.4f}", f"{table['neg_log_px'][i]:.4f}"]
    save_scores(f["vae"], root / "nolabel.npy", out, iw_samples=0)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["index", "label", "neg_elbo"] and len(rows) == 13 and rows[1][1] == ""
    with pytest.raises(VaekitError, match="iw-samples"):
        save_scores(f["vae"], root / "imgs.npz", out, iw_samples=-1)


def test_evaluate_run_is_evaluate_with_the_split_and_model_named(runs):
    root, f = runs
    res = evaluate_run(f["vae"], iw_samples=4, limit=20, seed=3, batch_size=8, device="cpu")
    model = vaekit.load(f["vae"])
    ds = vaekit.data.load(root / "imgs.npz").subset(slice(0, 20))
    want = evaluate(model, ds, binarize="none", iw_samples=4, batch_size=8, seed=3)
    assert res.pop("seconds") >= 0 and want.pop("seconds") >= 0
    assert res == {**want, "split": "test", "model": "vae"}
    assert evaluate_run(f["vae"], split="train", iw_samples=0)["split"] == "train"
    assert evaluate_run(f["vae"], data=root / "nolabel.npy", iw_samples=0)["split"] == "file"
    ae = evaluate_run(f["ae"], iw_samples=5000)  # an AE defines no density: no importance sampling
    assert ae["model"] == "ae" and ae["nll"] is None and ae["iw_samples"] == 0
    with pytest.raises(VaekitError, match="iw-samples"):
        evaluate_run(f["vae"], iw_samples=-1)


def test_save_codes_are_the_posterior_means(runs, tmp_path):
    root, f = runs
    mu = save_codes(f["vae"], root / "imgs.npz", tmp_path / "d" / "codes.npy")
    want = posterior_means(vaekit.load(f["vae"]), vaekit.data.load(root / "imgs.npz"))
    assert mu.shape == (N, 2) and torch.equal(mu, want)
    assert np.array_equal(np.load(tmp_path / "d" / "codes.npy"), want.numpy())


def test_save_samples_follows_the_seed_and_defaults_into_the_run(runs, tmp_path):
    _, f = runs
    a = save_samples(f["vae"], tmp_path / "a.png", n=6, seed=5)
    b = save_samples(f["vae"], tmp_path / "b.png", n=6, seed=5)
    c = save_samples(f["vae"], tmp_path / "c.png", n=6, seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert save_samples(f["vae"], n=4) == f["vae"] / "figures" / "samples.png"
    assert (f["vae"] / "figures" / "samples.png").is_file()


def test_save_reconstructions_is_one_row_of_inputs_above_their_reconstructions(runs, tmp_path):
    root, f = runs
    path = save_reconstructions(f["ae"], tmp_path / "r.png", n=5)
    img = np.asarray(Image.open(path))
    scale, cell = 2, 8 + 2  # save_grid's defaults: doubled pixels, 2-pixel padding
    assert img.shape == (scale * (2 * cell + 2), scale * (5 * cell + 2))
    first = img[scale * 2 : scale * 10 : scale, scale * 2 : scale * 10 : scale]  # top-left tile, unscaled
    assert np.array_equal(first, (_x(root, 1)[0, 0].numpy() * 255).round().astype(np.uint8))


def test_save_interpolation_runs_between_the_two_codes(runs, tmp_path):
    root, f = runs
    path = save_interpolation(f["vae"], 2, 7, tmp_path / "i.png", steps=4)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * (8 + 4), 2 * (4 * 10 + 2))
    model = vaekit.load(f["vae"])
    with torch.no_grad():
        end = model.decode(model.encode(_x(root)[[7]]).mean).mean[0, 0]  # the last frame decodes z_7 itself
    tile = img[4:20:2, 2 * (3 * 10 + 2) : 2 * (3 * 10 + 10) : 2]
    assert np.abs(tile.astype(int) - (end.numpy() * 255).round()).max() <= 1
    with pytest.raises(VaekitError) as e:
        save_interpolation(f["vae"], 0, N, tmp_path / "j.png")
    assert str(e.value) == f"--from/--to: index {N} is outside the test set (0..{N - 1})"
