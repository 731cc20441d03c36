"""What the `vaekit` commands do to a run folder, one function each, usable from Python as well.

    run_data            the dataset a command works on (the run's own data, or --data), shape-checked
    evaluate_run        `vaekit eval`: evaluate.evaluate on a run's data, its split named
    save_scores         `vaekit score`: evaluate.score_table written as CSV
    save_codes          `vaekit encode`: posterior means E[z|x] as .npy, (N, D)
    save_samples / save_reconstructions / save_interpolation: the picture commands, one image grid each

These load a model folder and data and write files; the maths they call lives in evaluate.py,
models.py and latent.py, which work on a model and tensors and touch no files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vaekit.errors import VaekitError


def run_data(model, source: str | Path | None = None, split: str = "test"):
    """The Dataset a command works on: `source` (a dataset name, at `split`, or a file/folder) if given,
    else the data `model`'s run was trained on, at `split`. Refused unless its examples have the model's
    input shape."""
    from vaekit.data import load

    cfg = model.run_config
    source = source or cfg.train.data
    ds = load(source, split)
    if ds.shape != tuple(cfg.model.input_shape):
        raise VaekitError(
            f"--data {source}: examples have shape {ds.shape}, the model expects {tuple(cfg.model.input_shape)}"
        )
    return ds


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
) -> dict:
    """evaluate.evaluate of the model in `run` on run_data(data, split), its first `limit` examples if
    given: per-example means in nats. Returns the dict `vaekit eval --json` prints, with "split" ("train",
    "test", or "file" for data given as a file) and "model" ("vae" or "ae") filled in."""
    import vaekit
    from vaekit.evaluate import evaluate
    from vaekit.train import resolve_device

    device = resolve_device(device)
    model = vaekit.load(run, device)
    cfg = model.run_config
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
    iw_samples: int = 1000,
    limit: int | None = None,
) -> dict[str, list]:
    """evaluate.score_table of the model in `run` on run_data(data, split) (its first `limit` examples if
    given), written to `output` as CSV: index,label,neg_elbo[,neg_log_px], scores in nats to 4 decimals,
    an empty label where the data has none. Returns the table."""
    import csv

    import vaekit
    from vaekit.evaluate import score_table

    if iw_samples < 0:
        raise VaekitError("--iw-samples must be >= 0 (0 skips -log p(x))")
    model = vaekit.load(run)
    ds = run_data(model, data, split)
    if limit:
        ds = ds.subset(slice(0, limit))
    table = score_table(model, ds, iw_samples=iw_samples)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(table))
        for row in zip(*table.values()):
            w.writerow(["" if v is None else f"{v:.4f}" if isinstance(v, float) else v for v in row])
    return table


def save_codes(run: str | Path, data: str | Path, output: str | Path, *, split: str = "test") -> torch.Tensor:
    """The posterior means E[z|x] of run_data(data, split) under the model in `run`, saved to `output` with
    numpy.save (which adds .npy to a name without it). Returns them, (N, D) on the CPU."""
    import numpy as np

    import vaekit
    from vaekit.evaluate import posterior_means

    model = vaekit.load(run)
    mu = posterior_means(model, run_data(model, data, split)).cpu()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    np.save(output, mu.numpy())
    return mu


def save_samples(run: str | Path, output: str | Path | None = None, *, n: int = 64, seed: int = 0) -> Path:
    """`n` decoded draws from the prior of the model in `run`, as one grid image at `output` (default
    RUN/figures/samples.png). Returns the path written."""
    import vaekit
    from vaekit.figures import save_grid

    model = vaekit.load(run)
    x = model.sample(n, torch.Generator().manual_seed(seed))
    return save_grid(x, output or Path(run) / "figures" / "samples.png")


def save_reconstructions(
    run: str | Path, output: str | Path | None = None, *, n: int = 16, split: str = "test"
) -> Path:
    """The first `n` examples of the run's data at `split` (one row) above their reconstructions (the row
    below), as a grid image at `output` (default RUN/figures/reconstructions.png). Returns the path."""
    import vaekit
    from vaekit.figures import save_grid

    model = vaekit.load(run)
    x = run_data(model, None, split).batch(slice(0, n))
    x_hat = model.reconstruct(x)
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
    of test examples `src` and `dst`, as one row at `output` (default RUN/figures/interpolation.png)."""
    import vaekit
    from vaekit.figures import save_grid
    from vaekit.latent import interpolate

    model = vaekit.load(run)
    ds = run_data(model, None, "test")
    for i in (src, dst):
        if not 0 <= i < len(ds):
            raise VaekitError(f"--from/--to: index {i} is outside the test set (0..{len(ds) - 1})")
    z = model.encode(ds.batch([src, dst])).mean  # (2, D)
    frames = model.decode(interpolate(z[0], z[1], steps, spherical)).mean
    return save_grid(frames, output or Path(run) / "figures" / "interpolation.png", nrow=steps)
