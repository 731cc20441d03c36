"""Pictures and models that show themselves in Jupyter, with no boilerplate.

    vaekit.show(images, nrow=8)      images (N, C, H, W) / (N, H, W) / (N, D) in [0, 1] -> a Picture
    figures.latent_scatter(panels)   every plot of figures.py, called without a path, returns a Picture
    model_html(model)                the table a VAE or AE shows as the last value of a cell (_repr_html_)

A Picture is PNG bytes with `_repr_png_` (what Jupyter calls to draw it), `.image` (a PIL image), `.size`
and `.save(path)` (atomic). Outside Jupyter its repr is one line saying what it is.
"""

from __future__ import annotations

import html
import io as _bytes_io
import math
from pathlib import Path

import torch
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Picture:
    """A PNG image that Jupyter draws inline (`_repr_png_`)."""

    def __init__(self, png: bytes, title: str | None = None):
        if not isinstance(png, bytes) or not png.startswith(PNG_SIGNATURE):
            raise ValueError("Picture: not PNG bytes")
        self.png, self.title = png, title

    @classmethod
    def from_image(cls, image: Image.Image, title: str | None = None) -> Picture:
        buf = _bytes_io.BytesIO()
        image.save(buf, format="PNG")
        return cls(buf.getvalue(), title)

    @property
    def image(self) -> Image.Image:
        return Image.open(_bytes_io.BytesIO(self.png))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header."""
        return int.from_bytes(self.png[16:20], "big"), int.from_bytes(self.png[20:24], "big")

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        w, h = self.size
        return f"<Picture {w}x{h} PNG{': ' + self.title if self.title else ''}>"

    def save(self, path: str | Path) -> Path:
        """Write the PNG to `path` (atomically: a failed write leaves no partial file)."""
        from vaekit.io import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(self.png))
        return path


def show(images: torch.Tensor, nrow: int | None = None, scale: int = 2, pad: int = 2) -> Picture:
    """Tile images (N, C, H, W), (N, H, W) or flat (N, D) with values in [0, 1], `nrow` per row (default:
    a square), each pixel drawn `scale` x `scale` screen pixels: a Picture that draws itself in Jupyter."""
    from vaekit.figures import grid

    x = images.detach()
    return Picture.from_image(grid(x, nrow=nrow, pad=pad, scale=scale), title=f"{len(x)} images")


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_rows(model) -> list[tuple[str, str]]:
    """What a VAE or autoencoder is, as (field, value) rows: the summary model_html draws."""
    c, sizes = model.config, model.latent_sizes
    d = sizes[0]  # the layer next to x: what the encoder and decoder give and take
    n_in, hidden = math.prod(c.input_shape), list(map(str, c.hidden))
    chans = list(map(str, c.channels)) if c.arch == "conv" else []
    enc_in = [f"{n_in} -> conv {'-'.join(chans)}"] if chans else [str(n_in)]  # then the MLP head
    dec_out = [f"deconv {'-'.join(chans[::-1])} -> {n_in}"] if chans else [str(n_in)]
    out = f"{2 * d} = mu and log sigma^2, {d} each" if model.is_vae else f"{d} = the code z"
    if model.is_vae:
        from vaekit.priors import describe

        prior = describe(model.prior)
    else:
        prior = "none (sample() draws from a Gaussian fitted to the training codes)"
    rows = [
        ("model", _kind(model)),
        ("input", f"{' x '.join(map(str, c.input_shape))} = {n_in} pixels"),
        ("encoder", f"{c.arch}: {' -> '.join([*enc_in, *hidden, out])} ({c.activation})"),
        (
            "latent size",
            str(d) if len(sizes) == 1 else f"{','.join(map(str, sizes))}: z1..z{len(sizes)}, D = {sum(sizes)}",
        ),
        *_layer_rows(model),
        ("prior p(z)", prior),
        ("decoder", f"{c.arch}: {' -> '.join([str(d), *hidden[::-1], *dec_out])}"),
        ("likelihood p(x|z)", c.likelihood),
        ("parameters", f"{_parameters(model):,} (encoder {_parameters(model.encoder):,})"),
    ]
    run = getattr(model, "run_config", None)
    if run is not None:
        t = run.train
        rows.append(("trained", f"{t.data}, {t.epochs} epochs, batch {t.batch_size}, binarize {t.binarize}"))
    return rows


def _kind(model) -> str:
    n = len(model.latent_sizes)
    if n > 1:
        return f"VAE with {n} stochastic layers: q(z1|x) q(z2|z1)..., each a diagonal Normal given its parent"
    return "VAE: q(z|x) = N(mu, diag sigma^2)" if model.is_vae else "autoencoder: z = enc(x), one point"


def _layer_rows(model) -> list[tuple[str, str]]:
    """A hierarchy's upper networks, one row per pair of layers: q(z_l+1|z_l) and p(z_l|z_l+1)."""
    from vaekit.hierarchy import layer_hidden

    c, sizes = model.config, model.latent_sizes
    rows = []
    for i in range(1, len(sizes)):
        widths = "".join(f"{w} -> " for w in layer_hidden(tuple(c.hidden), i))
        lo, hi = sizes[i - 1], sizes[i]
        up, down = f"q(z{i + 1}|z{i}): {lo} -> {widths}2 x {hi}", f"p(z{i}|z{i + 1}): {hi} -> {widths}2 x {lo}"
        rows.append((f"z{i} <-> z{i + 1}", f"{up}; {down} ({c.activation})"))
    return rows


def model_html(model) -> str:
    """A VAE or autoencoder as a small HTML table (architecture, latent size, prior, likelihood, size)."""
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in model_rows(model)
    )
    return f"<table class='vaekit-model'>{cells}</table>"
