"""What the `vaekit` commands do to a run folder, one function each, usable from Python as well.

    run_data            the dataset a command works on (the run's own data, or --data), shape-checked
    evaluate_run        `vaekit eval`: evaluate.evaluate on a run's data, its split named
    save_scores         `vaekit score`: anomaly.score_table written as CSV, with a threshold's verdicts
    calibration_data    held-out inliers to calibrate a threshold on (--calibrate-on, or the validation split)
    save_codes          `vaekit encode`: posterior means E[z|x] as .npy, (N, D)
    save_samples / save_reconstructions / save_interpolation / save_restyle: the picture commands, one image
                        grid each (save_samples and save_restyle: or a .npy array, save_images)

These load a model folder and data and write files; the maths they call lives in evaluate.py, anomaly.py,
models.py and latent.py, which work on a model and tensors and touch no files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vaekit.errors import VaekitError
from vaekit.models import NOT_CONDITIONAL


def run_data(model, source: str | Path | None = None, split: str = "test", flag: str = "--data"):
    """The Dataset a command works on: `source` (a dataset name, at `split`, or a file/folder) if given,
    else the data `model`'s run was trained on, at `split`. Refused unless its examples have the model's
    input shape and, for a conditional model, labels in its classes (the error names `flag`)."""
    from vaekit.data import load

    source = source or model.run_config.train.data
    return check_shape(model, load(source, split), source, flag)


def check_shape(model, ds, source, flag: str = "--data"):
    """`ds` if its examples have the model's input shape, and labels in its classes when the model is
    conditional; else a one-line error naming `flag` and `source`."""
    from vaekit.data import expect_labels, expect_shape

    expect_shape(ds, model.config.input_shape, f"{flag} {source}")
    return expect_labels(ds, model.config.num_classes, f"{flag} {source}")


def evaluate_run(
    run: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    iw_samples: int = 5000,
    batch_size: int = 100,
    seed: int = 0,
    device: str = "auto",
    amp: bool = False,
) -> dict:
    """evaluate.evaluate of the model in `run` on run_data(data, split), its first `limit` examples if
    given: per-example means in nats; split "val" is the validation split the run held out (validation_split).
    Returns the dict `vaekit eval --json` prints, with "split" ("train", "val", "test", or "file" for data given
    as a file) and "model" ("vae" or "ae") filled in."""
    import vaekit
    from vaekit.evaluate import evaluate
    from vaekit.train import resolve_device

    device = resolve_device(device)
    model = vaekit.load(run, device)
    cfg = model.run_config
    if split == "val" and data is not None:
        raise VaekitError("--split val is the run's own validation split: it cannot be combined with --data")
    if split == "val":
        ds = validation_split(model, run, "evaluate; train with --val-fraction > 0 or use --split test")
    else:
        ds = run_data(model, data, split)
    if limit:
        ds = ds.subset(slice(0, limit))
    if iw_samples < 0:
        raise VaekitError("--iw-samples must be >= 0")
    res = evaluate(
        model,
        ds,
        binarize=cfg.train.binarize,
        iw_samples=iw_samples if model.is_vae else 0,
        batch_size=batch_size,
        seed=seed,
        device=device,
        amp=amp,
    )
    res["split"] = split if data is None or data in vaekit.data.DATASETS else "file"
    res["model"] = cfg.model.model
    return res


def save_scores(
    run: str | Path,
    data: str | Path,
    output: str | Path,
    *,
    split: str = "test",
    iw_samples: int = 0,
    limit: int | None = None,
    fpr: float | None = None,
    calibrate_on: str | Path | None = None,
) -> dict:
    """anomaly.score_table of the model in `run` on run_data(data, split) (its first `limit` examples if
    given), written to `output` as CSV: index, label (empty where the data has none), score (the recommended
    one, -log tail p), neg_elbo, nll (with iw_samples > 0), complexity, orientation -- in nats, 4 decimals --
    and is_outlier (1/0) when there is a threshold.

    The calibration and threshold: with `fpr` and/or `calibrate_on` (fpr 0.05 if only that is given), an
    anomaly.Detector fitted on calibration_data(run, calibrate_on) and stored as RUN/threshold.json; else
    RUN/threshold.json if it exists (refused if damaged, another model's or another score's); else the
    score is calibrated on the run's validation split, nothing stored and no threshold. Everything is
    computed before anything is written, and the CSV is written atomically: a refusal leaves no file.

    Returns {"columns": {name: N values, as written}, "threshold": anomaly.Threshold or None,
    "calibrated": whether it was calibrated now (else read from RUN/threshold.json), "calibrated_on": the
    calibration set's description, "n_calibration": its size}."""
    import vaekit
    from vaekit.anomaly import Detector, check_fpr

    if iw_samples < 0:
        raise VaekitError("--iw-samples must be >= 0 (0 skips -log p(x))")
    calibrate = fpr is not None or calibrate_on is not None
    fpr = check_fpr(0.05 if fpr is None else fpr)
    model = vaekit.load(run)
    ds = run_data(model, data, split)
    if limit:
        ds = ds.subset(slice(0, limit))
    if iw_samples > 0 and not model.is_vae:
        raise VaekitError("--iw-samples: an autoencoder defines no density, so it has no -log p(x); use 0")
    det = Detector(model)
    if calibrate:
        held_out, source = calibration_data(model, run, calibrate_on)
        det.fit(held_out, fpr, source)
    else:
        det.load(run)  # the stored threshold and calibration (and the binarization they were made with), if any
        if det.calibration is None:
            det.calibrate(*calibration_data(model, run, None))
    scores = det.table(ds, iw_samples)  # refuses non-finite scores
    columns = {
        "index": list(range(len(ds))),
        "label": [None] * len(ds) if ds.y is None else ds.y.tolist(),
        **{k: v.tolist() for k, v in scores.items()},
    }
    if det.threshold is not None:
        columns["is_outlier"] = det.flag(scores["score"]).int().tolist()
    if calibrate:
        det.save(run)  # first: a valid threshold on its own, even if the CSV then cannot be written
    _write_csv(Path(output), columns)
    n_cal = len(next(iter(det.calibration.values())))
    return {
        "columns": columns,
        "threshold": det.threshold,
        "calibrated": calibrate,
        "calibrated_on": det.calibrated_on,
        "n_calibration": n_cal,
    }


def calibration_data(model, run: str | Path, source: str | Path | None = None):
    """Held-out in-distribution data to calibrate a threshold on, and a description of it (for threshold.json
    and the summary line): `source` if given -- a dataset name: its test split, which training never saw (its
    train split holds the very examples the model was fit to, whose scores are lower, so a threshold set on
    them flags more than `fpr` of new inliers); a file or folder: all of it -- else the validation split the
    run held out from its training data, drawn exactly as train.train draws it."""
    from vaekit.data import DATASETS, load

    if source is not None:
        try:
            ds = load(source, "test")
        except VaekitError as e:  # a source that cannot be read
            raise VaekitError(f"--calibrate-on: {e}") from None
        ds = check_shape(model, ds, source, "--calibrate-on")
        return ds, (f"the test split of {source}" if str(source) in DATASETS else str(source))
    hint = "calibrate the threshold on; give held-out in-distribution data with --calibrate-on SRC"
    val = validation_split(model, run, hint)
    return val, f"the validation split of {val.name}"


def validation_split(model, run: str | Path, hint: str):
    """The validation split `run` held out from its training data, drawn exactly as train.train draws it; a
    one-line error ending in `hint` (what the caller needed it for) when the run held out none."""
    from vaekit import seeds
    from vaekit.data import split_validation

    cfg = model.run_config.train
    val = None
    if cfg.val_fraction > 0:
        _, val = split_validation(run_data(model, None, "train"), cfg.val_fraction, seeds.weights(cfg.seed))
    if val is None:  # --val-fraction 0, or a fraction of so few examples that it rounds to none
        raise VaekitError(
            f"{run}: its training held out no validation split (--val-fraction {cfg.val_fraction:g}) to {hint}"
        )
    return val


def _write_csv(path: Path, columns: dict[str, list]) -> None:
    """The columns as CSV, written atomically (a temp file renamed over `path`): floats to 4 decimals,
    None as an empty field."""
    import csv
    import io as _io

    from vaekit.io import atomic_write_text

    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(columns))
    for row in zip(*columns.values()):
        w.writerow(["" if v is None else f"{v:.4f}" if isinstance(v, float) else v for v in row])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())


def save_codes(run: str | Path, data: str | Path, output: str | Path, *, split: str = "test") -> torch.Tensor:
    """The posterior means E[z|x] (E[z|x, y] of a conditional model, with the data's labels) of
    run_data(data, split) under the model in `run`, saved to `output` with numpy.save (which adds .npy to a
    name without it). Returns them, (N, D) on the CPU."""
    import numpy as np

    import vaekit
    from vaekit.evaluate import posterior_means

    model = vaekit.load(run)
    mu = posterior_means(model, run_data(model, data, split)).cpu()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    np.save(output, mu.numpy())
    return mu


def parse_label(model, label) -> int | str | None:
    """`--label` checked against the model: None, "all", or a label in 0..K-1; one-line errors for a label
    given to an unconditional model or outside the model's classes."""
    if label is None:
        return None
    if not model.conditional:
        raise VaekitError(f"--label: {NOT_CONDITIONAL}")
    if label == "all":
        return label
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < model.num_classes:
        raise VaekitError(f"--label {label} is outside this model's classes 0..{model.num_classes - 1} (or 'all')")
    return label


def sample_images(model, n: int | None = None, seed: int = 0, label: int | str | None = None, temperature: float = 1.0):
    """The images of `vaekit sample`: (N, *shape) decoded means and the images per row of their grid.
    Unconditional: n (default 64) prior draws. A conditional model: with label c, n (default 64) draws all
    decoded with label c; with label "all" or None, n (default 10) draws per label, label-major (row c =
    label c: image c*n + i), as conditional.label_grid. `temperature`: Prior.sample's."""
    from vaekit.conditional import label_grid

    label = parse_label(model, label)
    g = torch.Generator().manual_seed(seed)
    if model.conditional and label in (None, "all"):
        n = n or 10
        if n * model.num_classes > MAX_SAMPLES:
            raise VaekitError(f"-n {n} per label x {model.num_classes} labels is over {MAX_SAMPLES} images")
        return label_grid(model, n, g, temperature), n
    n = n or 64
    return model.sample(n, g, y=label, temperature=temperature), None


MAX_SAMPLES = 10_000  # images one sample command decodes


def save_images(images: torch.Tensor, output: str | Path, nrow: int | None = None) -> Path:
    """Decoded means (N, *shape) as a grid picture at `output` (`nrow` images per row) or, for a path ending
    in .npy, as a float32 array (N, *shape) (written atomically). Returns the path."""
    import numpy as np

    from vaekit.figures import save_grid
    from vaekit.io import atomic_write

    output = Path(output)
    if output.suffix.lower() != ".npy":
        return save_grid(images, output, nrow=nrow)
    output.parent.mkdir(parents=True, exist_ok=True)
    arr = images.detach().float().cpu().numpy()

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: numpy.save would add .npy to the temp name
            np.save(f, arr)

    atomic_write(output, write)
    return output


def save_samples(
    run: str | Path,
    output: str | Path | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    label: int | str | None = None,
    temperature: float = 1.0,
) -> Path:
    """sample_images of the model in `run` as one grid image at `output` (default RUN/figures/samples.png;
    one row per label for a conditional model without a single label), or a .npy array (save_images).
    Returns the path written."""
    import vaekit

    images, nrow = sample_images(vaekit.load(run), n, seed, label, temperature)
    return save_images(images, output or Path(run) / "figures" / "samples.png", nrow=nrow)


def save_restyle(
    run: str | Path,
    indices: list[int],
    output: str | Path | None = None,
    *,
    data: str | Path | None = None,
    split: str = "test",
) -> Path:
    """For each test example i of `indices` (of run_data(data, split)): the example, then conditional.restyle's
    K decodes of its code under labels 0..K-1, one row each, as a grid image at `output` (default
    RUN/figures/restyle.png); for a .npy path, the decodes alone: float32 (len(indices) * K, *shape), row r's
    label c at r * K + c. One-line errors: an unconditional model, data without labels, an index outside it."""
    import vaekit
    from vaekit.conditional import restyle

    model = vaekit.load(run)
    if not model.conditional:
        raise VaekitError(f"restyle: {run}: {NOT_CONDITIONAL}")
    ds = run_data(model, data, split)
    for i in indices:
        if not 0 <= i < len(ds):
            raise VaekitError(f"--index {i} is outside the data ({len(ds)} examples: 0..{len(ds) - 1})")
    x = ds.batch(torch.as_tensor(indices, dtype=torch.int64))
    out = restyle(model, x, ds.y[indices])  # (R, K, *shape)
    output = Path(output or Path(run) / "figures" / "restyle.png")
    if output.suffix.lower() == ".npy":
        return save_images(out.flatten(0, 1), output)
    rows = torch.cat([x[:, None], out], 1)  # (R, K + 1, *shape): the example first
    return save_images(rows.flatten(0, 1), output, nrow=model.num_classes + 1)


def save_reconstructions(
    run: str | Path, output: str | Path | None = None, *, n: int = 16, split: str = "test"
) -> Path:
    """The first `n` examples of the run's data at `split` (one row) above their reconstructions (the row
    below), as a grid image at `output` (default RUN/figures/reconstructions.png). Returns the path."""
    import vaekit
    from vaekit.figures import save_grid

    model = vaekit.load(run)
    ds = run_data(model, None, split)
    x = ds.batch(slice(0, n))
    x_hat = model.reconstruct(x, ds.y[:n] if model.conditional else None)
    return save_grid(torch.cat([x, x_hat]), output or Path(run) / "figures" / "reconstructions.png", nrow=n)


def save_interpolation(
    run: str | Path,
    src: int,
    dst: int,
    output: str | Path | None = None,
    *,
    steps: int = 10,
    spherical: bool = False,
) -> Path:
    """`steps` frames decoded along the path (straight, or slerp if `spherical`) between the posterior means
    of test examples `src` and `dst`, as one row at `output` (default RUN/figures/interpolation.png). A
    conditional model encodes each end with its own label and decodes frame t with the labels' one-hot codes
    mixed as the codes are, (1 - t) c_src + t c_dst: the label moves from one end's to the other's."""
    import vaekit
    from vaekit.figures import save_grid
    from vaekit.latent import interpolate
    from vaekit.models import Given

    model = vaekit.load(run)
    ds = run_data(model, None, "test")
    for i in (src, dst):
        if not 0 <= i < len(ds):
            raise VaekitError(f"--from/--to: index {i} is outside the test set (0..{len(ds) - 1})")
    y = ds.y[[src, dst]] if model.conditional else None
    z = model.encode(ds.batch([src, dst]), y).mean  # (2, D)
    path = interpolate(z[0], z[1], steps, spherical)  # (steps, D)
    with torch.no_grad():
        if model.conditional:
            c = model.one_hot(y)  # (2, K)
            t = torch.linspace(0, 1, steps, device=c.device)[:, None]
            frames = Given(model, (1 - t) * c[0] + t * c[1]).decode(path).mean
        else:
            frames = model.decode(path).mean
    return save_grid(frames, output or Path(run) / "figures" / "interpolation.png", nrow=steps)
