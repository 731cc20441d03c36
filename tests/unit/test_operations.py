"""The run-folder operations behind the CLI (vaekit.operations), on a tiny untrained model and synthetic 8x8
data: quick, no download. The numbers are checked against the lower-level functions they must reproduce
(anomaly.score_table, objectives.elbo, evaluate.log_likelihood, posterior_means), the files against what
was computed."""

from __future__ import annotations

import csv
import errno
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line
from PIL import Image

import vaekit
from vaekit.anomaly import (
    Detector,
    calibrate,
    calibrate_components,
    combined_score,
    complexity,
    components,
    load_threshold,
    orientation,
    score_table,
)
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.data import split_validation
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate, log_likelihood, posterior_means
from vaekit.objectives import elbo
from vaekit.operations import (
    calibration_data,
    evaluate_run,
    run_data,
    save_codes,
    save_interpolation,
    save_reconstructions,
    save_restyle,
    save_samples,
    save_scores,
)

N = 30
COLUMNS = ["score", "neg_elbo", "complexity", "orientation"]  # score_table's, without nll


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
            TrainConfig(data=str(root / "imgs.npz"), binarize="none", val_fraction=0.2),  # 6 held out
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


def _rows(path) -> list[list[str]]:
    return list(csv.reader(Path(path).open()))


@pytest.fixture
def vae_copy(runs, tmp_path):
    """A private copy of the VAE folder: the tests that calibrate write threshold.json into it."""
    run = tmp_path / "vae"
    shutil.copytree(runs[1]["vae"], run)
    return run


def test_save_scores_writes_anomaly_score_table_as_csv(runs, tmp_path):
    root, f = runs
    out = tmp_path / "sub" / "scores.csv"
    res = save_scores(f["vae"], root / "imgs.npz", out, iw_samples=5, limit=9)
    det = Detector(vaekit.load(f["vae"]))  # no threshold.json: the score calibrated on the validation split
    det.calibrate(*calibration_data(det.model, f["vae"]))
    want = det.table(vaekit.data.load(root / "imgs.npz").subset(slice(0, 9)), iw_samples=5)
    rows = _rows(out)
    assert rows[0] == ["index", "label", *COLUMNS[:2], "nll", *COLUMNS[2:]] and len(rows) == 10
    for i, row in enumerate(rows[1:]):
        keys = ("score", "neg_elbo", "nll", "complexity", "orientation")
        assert row == [str(i), str(i % 4), *(f"{want[k][i]:.4f}" for k in keys)]
    assert (res["calibrated_on"], res["n_calibration"]) == ("the validation split of imgs.npz", 6)
    assert res["threshold"] is None and not res["calibrated"] and "is_outlier" not in res["columns"]
    assert res["columns"]["score"] == want["score"].tolist()
    save_scores(f["vae"], root / "nolabel.npy", out)  # iw_samples 0 by default: no nll column
    rows = _rows(out)
    assert rows[0] == ["index", "label", *COLUMNS] and len(rows) == 13 and rows[1][1] == ""
    with pytest.raises(VaekitError, match="iw-samples"):
        save_scores(f["vae"], root / "imgs.npz", out, iw_samples=-1)


def test_the_score_columns_against_their_definitions(runs, tmp_path):
    """neg_elbo is objectives.elbo's, nll evaluate.log_likelihood's (with evaluate's seeds), complexity
    anomaly.complexity of the images as scored (binarize none here: zlib), orientation anomaly.orientation's,
    score the combined tail p of (neg_elbo - complexity, orientation) against the validation split's."""
    root, f = runs
    model = vaekit.load(f["vae"])
    cols = save_scores(f["vae"], root / "imgs.npz", tmp_path / "s.csv", iw_samples=7)["columns"]
    x = _x(root)  # one batch of evaluate's 100, not binarized (binarize none): the same draws as evaluate's
    with torch.random.fork_rng():
        torch.manual_seed(0)  # evaluate's seed for the ELBO's sample
        want_elbo = -elbo(model, x).elbo
    want_nll = -log_likelihood(model, x, 7, generator=torch.Generator().manual_seed(1))  # evaluate's seed + 1
    assert cols["neg_elbo"] == pytest.approx(want_elbo.tolist(), abs=1e-5)
    assert cols["nll"] == pytest.approx(want_nll.tolist(), abs=1e-5)
    assert cols["complexity"] == complexity(x).tolist()
    with torch.no_grad():
        assert cols["orientation"] == pytest.approx(orientation(model, x).tolist(), abs=1e-5)
    val = calibration_data(model, f["vae"])[0]
    cal = calibrate_components(score_table(model, val))
    t = {k: torch.tensor(cols[k], dtype=torch.float64) for k in ("neg_elbo", "complexity", "orientation")}
    assert cols["score"] == combined_score(cal, components(t)).tolist()
    assert cols["index"] == list(range(N)) and cols["label"] == [i % 4 for i in range(N)]
    assert all(isinstance(v, float) for k in ("score", "neg_elbo", "nll", *COLUMNS[2:]) for v in cols[k])


def test_save_scores_of_an_autoencoder_is_its_reconstruction_loss_and_no_density(runs, tmp_path):
    root, f = runs
    model = vaekit.load(f["ae"])
    out = tmp_path / "ae.csv"
    cols = save_scores(f["ae"], root / "nolabel.npy", out)["columns"]
    assert list(cols) == ["index", "label", *COLUMNS] and cols["label"] == [None] * 12
    x = _x(root, 12)
    with torch.no_grad():  # oracle: the Bernoulli negative log-likelihood of x under the decoded code
        p = model.decode(model.encode(x).mean).mean
        want = torch.nn.functional.binary_cross_entropy(p, x, reduction="none").flatten(1).sum(1)
    assert cols["neg_elbo"] == pytest.approx(want.tolist(), rel=1e-4)
    out.unlink()
    with pytest.raises(VaekitError) as e:
        save_scores(f["ae"], root / "nolabel.npy", out, iw_samples=3)
    assert one_line(e) == "--iw-samples: an autoencoder defines no density, so it has no -log p(x); use 0"
    assert not out.exists()


def test_the_threshold_is_calibrated_on_the_validation_split_training_held_out(runs, vae_copy, tmp_path):
    root, _ = runs
    cfg = json.loads((vae_copy / "config.json").read_text())
    cfg["train"]["seed"] = 7  # the split follows the run's seed (seeds.weights), as in train.train
    (vae_copy / "config.json").write_text(json.dumps(cfg))
    res = save_scores(vae_copy, root / "imgs.npz", tmp_path / "s.csv", fpr=0.2)
    model = vaekit.load(vae_copy)
    every = vaekit.data.load(root / "imgs.npz")
    _, val = split_validation(every, 0.2, 7)
    assert len(val) == 6 and not torch.equal(val.x, split_validation(every, 0.2, 0)[1].x)
    val_scores = Detector(model).calibrate(val)
    t = res["threshold"]
    assert res["calibrated"] and (t.value, t.fpr, t.n) == (calibrate(val_scores, 0.2), 0.2, 6)
    assert t.calibrated_on == "the validation split of imgs.npz"
    assert int((val_scores > t.value).sum()) <= 0.2 * 6  # at most fpr of the calibration inliers above it
    cols = res["columns"]
    assert cols["is_outlier"] == [int(s > t.value) for s in cols["score"]] and set(cols["is_outlier"]) == {0, 1}
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert list(rows[0]) == ["index", "label", *COLUMNS, "is_outlier"]
    assert [r["is_outlier"] for r in rows] == [str(v) for v in cols["is_outlier"]]
    assert load_threshold(vae_copy, model) == t


def test_a_stored_threshold_is_used_until_calibrated_again(runs, vae_copy, tmp_path):
    root, _ = runs
    first = save_scores(vae_copy, root / "imgs.npz", tmp_path / "a.csv", fpr=0.2)
    stored = (vae_copy / "threshold.json").read_text()
    assert json.loads(stored) == asdict(first["threshold"])
    again = save_scores(vae_copy, root / "imgs.npz", tmp_path / "b.csv")
    assert not again["calibrated"] and again["threshold"] == first["threshold"]
    assert again["columns"] == first["columns"] and _rows(tmp_path / "a.csv") == _rows(tmp_path / "b.csv")
    assert (vae_copy / "threshold.json").read_text() == stored  # read, not rewritten
    # --calibrate-on a file: all of it, at fpr 0.05 unless given; it replaces the stored threshold
    other = save_scores(vae_copy, root / "imgs.npz", tmp_path / "c.csv", calibrate_on=root / "nolabel.npy")
    t = other["threshold"]
    assert (t.fpr, t.n, t.calibrated_on) == (0.05, 12, str(root / "nolabel.npy"))
    model = vaekit.load(vae_copy)
    assert t.value == calibrate(Detector(model).calibrate(vaekit.data.load(root / "nolabel.npy")), 0.05)
    assert load_threshold(vae_copy, model) == t


def test_bad_thresholds_and_calibration_data_are_refused_before_anything_is_written(runs, vae_copy, tmp_path):
    root, f = runs
    out = tmp_path / "s.csv"
    good = asdict(save_scores(vae_copy, root / "imgs.npz", out, fpr=0.2)["threshold"])
    out.unlink()
    path = vae_copy / "threshold.json"
    damaged = [
        '{"value": 1.0, "fpr": 0.05',
        "[]",
        *(
            json.dumps({**good, **d})
            for d in ({"fpr": 1.5}, {"value": math.nan}, {"n": 0}, {"seed": "x"}, {"binarize": "often"}, {"x": 1})
        ),
    ]
    for text in damaged:
        path.write_text(text)
        with pytest.raises(VaekitError) as e:
            save_scores(vae_copy, root / "imgs.npz", out)
        assert one_line(e) == f"{path}: not a valid threshold file; calibrate again with --fpr", text
        assert path.read_text() == text and not out.exists()
    ae = tmp_path / "ae"
    shutil.copytree(f["ae"], ae)
    (ae / "threshold.json").write_text(json.dumps(good))
    with pytest.raises(VaekitError) as e:
        save_scores(ae, root / "imgs.npz", out)
    assert (
        one_line(e)
        == f"{ae / 'threshold.json'}: calibrated for another model (its weights differ); calibrate again with --fpr"
    )
    path.unlink()
    refusals = [
        (
            dict(data=root / "vectors.npy"),
            f"--data {root / 'vectors.npy'}: examples have shape (10,), the model expects (1, 8, 8)",
        ),
        (
            dict(calibrate_on=root / "vectors.npy"),
            f"--calibrate-on {root / 'vectors.npy'}: examples have shape (10,), the model expects (1, 8, 8)",
        ),
        (dict(calibrate_on="no-such"), "--calibrate-on: unknown dataset 'no-such': not a built-in"),
        (dict(fpr=0), "--fpr must be a false-positive rate in (0, 1), got 0"),
        (dict(fpr=1.0), "--fpr must be a false-positive rate in (0, 1), got 1.0"),
        (dict(fpr=math.nan), "--fpr must be a false-positive rate in (0, 1), got nan"),
    ]
    for kwargs, message in refusals:
        kwargs = {"data": root / "imgs.npz", **kwargs}
        with pytest.raises(VaekitError) as e:
            save_scores(vae_copy, kwargs.pop("data"), out, **kwargs)
        assert one_line(e).startswith(message), (kwargs, one_line(e))
        assert not out.exists() and not path.exists()


def test_without_a_validation_split_calibration_asks_for_calibrate_on(runs, tmp_path):
    root, _ = runs
    rc = RunConfig(
        ModelConfig(model="vae", input_shape=(1, 8, 8), latent_dim=2, hidden=(16,)),
        TrainConfig(data=str(root / "imgs.npz"), binarize="none", val_fraction=0.0),
    )
    run = tmp_path / "noval"
    vaekit.save(vaekit.build_model(rc.model), run, rc)
    out = tmp_path / "s.csv"
    with pytest.raises(VaekitError) as e:
        save_scores(run, root / "imgs.npz", out, fpr=0.1)
    assert one_line(e) == (
        f"{run}: its training held out no validation split (--val-fraction 0) to calibrate the threshold on; "
        "give held-out in-distribution data with --calibrate-on SRC"
    )
    assert not out.exists() and not (run / "threshold.json").exists()
    assert calibration_data(vaekit.load(run), run, root / "nolabel.npy")[1] == str(root / "nolabel.npy")
    assert save_scores(run, root / "imgs.npz", out, calibrate_on=root / "nolabel.npy")["threshold"].n == 12


def test_a_non_finite_score_is_an_error_naming_the_example_and_writes_nothing(runs, tmp_path):
    root, f = runs
    model = vaekit.load(f["vae"])
    with torch.no_grad():  # huge first-layer weights: any image with a lit pixel overflows the KL to inf
        next(p for n, p in model.named_parameters() if n.startswith("encoder") and n.endswith("weight")).mul_(1e30)
    vaekit.save(model, tmp_path / "huge", model.run_config)
    x = (np.random.default_rng(1).random((6, 8, 8)) < 0.3).astype(np.uint8) * 255
    x[:3] = 0  # blank images: only the biases reach the code, finite
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(VaekitError) as e:
        save_scores(tmp_path / "huge", tmp_path / "x.npy", tmp_path / "s.csv")
    assert one_line(e).startswith("calibration set imgs.npz: example 0 has a non-finite ")  # its validation split
    np.save(tmp_path / "blank.npy", x[:3])
    with pytest.raises(VaekitError) as e:
        save_scores(tmp_path / "huge", tmp_path / "x.npy", tmp_path / "s.csv", calibrate_on=tmp_path / "blank.npy")
    assert one_line(e).startswith("x.npy: example 3 has a non-finite ")
    assert not (tmp_path / "s.csv").exists()


def test_a_failed_write_leaves_the_old_csv_and_no_temp_file(runs, tmp_path, monkeypatch):
    root, f = runs
    out = tmp_path / "scores.csv"
    out.write_text("old\n")
    real = Path.write_text

    def half_then_full_disk(self, data, *args, **kwargs):
        if not self.name.startswith(".scores.csv."):
            return real(self, data, *args, **kwargs)
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(VaekitError) as e:
        save_scores(f["vae"], root / "imgs.npz", out)
    assert one_line(e) == f"{out}: cannot write (no space left on device)"
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


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


# ----------------------------------------------------------------------------------------- conditional


@pytest.fixture(scope="module")
def cruns(runs):
    """A conditional VAE and AE (4 classes: the labels of imgs.npz) in model folders (untrained)."""
    root, _ = runs
    folders = {}
    for kind in ("vae", "ae"):
        rc = RunConfig(
            ModelConfig(model=kind, input_shape=(1, 8, 8), latent_dim=2, hidden=(16,), num_classes=4),
            TrainConfig(data=str(root / "imgs.npz"), binarize="none", val_fraction=0.2, conditional=True),
        )
        torch.manual_seed(2)
        vaekit.save(vaekit.build_model(rc.model), root / f"c{kind}", rc)
        folders[kind] = root / f"c{kind}"
    return root, folders


def test_the_commands_on_a_conditional_run_use_the_datas_labels(cruns, tmp_path):
    root, f = cruns
    model = vaekit.load(f["vae"])
    ds = vaekit.data.load(root / "imgs.npz")
    res = evaluate_run(f["vae"], iw_samples=6, seed=1, device="cpu")
    want = evaluate(model, ds, binarize="none", iw_samples=6, seed=1)
    assert res["conditional"] is True and res["nll"] == want["nll"] and res["elbo"] == want["elbo"]
    codes = save_codes(f["vae"], root / "imgs.npz", tmp_path / "codes.npy")
    torch.testing.assert_close(codes, model.encode(ds.batch(slice(0, N)), ds.y).mean)  # E[z|x, y]
    cols = save_scores(f["vae"], root / "imgs.npz", tmp_path / "s.csv", iw_samples=3, fpr=0.2)["columns"]
    want = Detector(model).fit(calibration_data(model, f["vae"])[0], 0.2).table(ds, iw_samples=3)
    assert cols["score"] == want["score"].tolist() and cols["nll"] == want["nll"].tolist()
    save_reconstructions(f["vae"], tmp_path / "r.png", n=4)
    ae = evaluate_run(f["ae"], iw_samples=5)
    assert ae["conditional"] is True and ae["nll"] is None
    save_codes(f["ae"], root / "imgs.npz", tmp_path / "ae.npy")


@pytest.mark.parametrize("command", ["eval", "encode", "score"])
def test_a_conditional_run_refuses_data_without_labels_in_one_line(cruns, tmp_path, command):
    root, f = cruns
    nolabel = root / "nolabel.npy"
    call = {
        "eval": lambda: evaluate_run(f["vae"], data=nolabel, iw_samples=0),
        "encode": lambda: save_codes(f["vae"], nolabel, tmp_path / "c.npy"),
        "score": lambda: save_scores(f["vae"], nolabel, tmp_path / "s.csv"),
    }[command]
    msg = one_line(pytest.raises(VaekitError, call))
    assert msg.startswith(f"--data {nolabel}: the model is conditional (4 classes) and needs the examples' labels")
    assert not any(tmp_path.iterdir())
    beyond = tmp_path / "beyond.npz"
    np.savez(beyond, x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 4, 1]))
    msg = one_line(pytest.raises(VaekitError, evaluate_run, f["vae"], data=beyond, iw_samples=0))
    assert msg == f"--data {beyond}: label 4 is outside the model's classes 0..3"


def test_samples_of_a_conditional_run_one_label_or_one_row_per_label(cruns, tmp_path):
    """--label c: every draw decoded with c; --label all (and no label): n per label, label-major, a row each;
    .npy: the decoded means themselves, float32 (N, C, H, W)."""
    _, f = cruns
    model = vaekit.load(f["vae"])
    path = save_samples(f["vae"], tmp_path / "s.npy", n=5, seed=3, label=2)
    arr = np.load(path)
    want = model.sample(5, torch.Generator().manual_seed(3), y=2)
    assert arr.dtype == np.float32 and arr.shape == (5, 1, 8, 8) and np.array_equal(arr, want.numpy())
    arr = np.load(save_samples(f["vae"], tmp_path / "all.npy", n=3, seed=3, label="all"))
    want = model.sample(12, torch.Generator().manual_seed(3), y=torch.arange(4).repeat_interleave(3))
    assert arr.shape == (12, 1, 8, 8) and np.array_equal(arr, want.numpy())
    assert np.array_equal(np.load(save_samples(f["vae"], tmp_path / "d.npy", n=3, seed=3)), arr)  # the default
    img = np.asarray(Image.open(save_samples(f["vae"], tmp_path / "all.png", seed=3)))  # 10 per row, 4 rows
    assert img.shape == (2 * (4 * 10 + 2), 2 * (10 * 10 + 2))
    assert np.load(save_samples(f["ae"], tmp_path / "ae.npy", n=2, label=3)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "kind,label,message",
    [
        ("c", 4, "--label 4 is outside this model's classes 0..3 (or 'all')"),
        ("c", -1, "--label -1 is outside this model's classes 0..3 (or 'all')"),
        ("", 1, "--label: this model is not conditional: it takes no labels (train with --conditional)"),
        ("", "all", "--label: this model is not conditional: it takes no labels (train with --conditional)"),
    ],
)
def test_bad_labels_are_refused_before_anything_is_written(runs, cruns, tmp_path, kind, label, message):
    folder = (cruns if kind else runs)[1]["vae"]
    assert one_line(pytest.raises(VaekitError, save_samples, folder, tmp_path / "s.npy", label=label)) == message
    assert not any(tmp_path.iterdir())


def test_an_unconditional_run_samples_to_npy(runs, tmp_path):
    _, f = runs
    arr = np.load(save_samples(f["vae"], tmp_path / "u.npy", n=4, seed=1))
    assert arr.dtype == np.float32 and arr.shape == (4, 1, 8, 8)
    assert np.array_equal(arr, vaekit.load(f["vae"]).sample(4, torch.Generator().manual_seed(1)).numpy())


def test_an_npy_write_that_fails_leaves_the_old_file_and_no_temp(runs, tmp_path, monkeypatch):
    _, f = runs
    out = tmp_path / "s.npy"
    out.write_bytes(b"old")

    def broken(file, arr, *a, **k):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(VaekitError, match="no space left"):
        save_samples(f["vae"], out, n=2)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["s.npy"]


def test_restyle_rows_and_refusals(runs, cruns, tmp_path):
    """Each row: the example, then its code (encoded with its own label) decoded under labels 0..K-1; .npy: the
    decodes alone, row r's label c at r * K + c."""
    root, f = cruns
    model = vaekit.load(f["vae"])
    ds = vaekit.data.load(root / "imgs.npz")
    arr = np.load(save_restyle(f["vae"], [5, 2], tmp_path / "r.npy"))
    assert arr.shape == (8, 1, 8, 8) and arr.dtype == np.float32
    z = model.encode(ds.batch([5]), ds.y[[5]]).mean
    np.testing.assert_allclose(arr[3], model.decode(z, 3).mean[0].detach().numpy(), atol=1e-6)
    img = np.asarray(Image.open(save_restyle(f["vae"], [5, 2], tmp_path / "r.png")))
    assert img.shape == (2 * (2 * 10 + 2), 2 * (5 * 10 + 2))  # 2 rows of 1 + 4 images
    first = img[2 * 2 : 2 * 10 : 2, 2 * 2 : 2 * 10 : 2]
    assert np.array_equal(first, (ds.batch([5])[0, 0].numpy() * 255).round().astype(np.uint8))
    assert save_restyle(f["vae"], [0]) == f["vae"] / "figures" / "restyle.png"
    bad = {
        (f["vae"], (N,)): f"--index {N} is outside the data ({N} examples: 0..{N - 1})",
        (f["vae"], (-1,)): f"--index -1 is outside the data ({N} examples: 0..{N - 1})",
        (runs[1]["vae"], (0,)): f"restyle: {runs[1]['vae']}: this model is not conditional: it takes no labels "
        "(train with --conditional)",
    }
    for (folder, idx), message in bad.items():
        assert one_line(pytest.raises(VaekitError, save_restyle, folder, list(idx), tmp_path / "x.png")) == message
    msg = one_line(
        pytest.raises(VaekitError, save_restyle, f["vae"], [0], tmp_path / "x.png", data=root / "nolabel.npy")
    )
    assert "needs the examples' labels" in msg and not (tmp_path / "x.png").exists()


def test_interpolation_of_a_conditional_run_moves_the_label_along(cruns, tmp_path):
    """The ends are encoded with their own labels and decoded with them: the last frame is example 7's
    reconstruction under its label."""
    root, f = cruns
    model = vaekit.load(f["vae"])
    ds = vaekit.data.load(root / "imgs.npz")
    img = np.asarray(Image.open(save_interpolation(f["vae"], 2, 7, tmp_path / "i.png", steps=4)))
    end = model.reconstruct(ds.batch([7]), ds.y[[7]])[0, 0]
    tile = img[4:20:2, 2 * (3 * 10 + 2) : 2 * (3 * 10 + 10) : 2]
    assert np.abs(tile.astype(int) - (end.numpy() * 255).round()).max() <= 1
