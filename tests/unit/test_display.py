"""vaekit.display: what Jupyter calls to draw images, plots and models (_repr_png_, _repr_html_) returns
valid PNG bytes holding the pixels given, and an HTML table naming the model's parts (synthetic, no training)."""

from __future__ import annotations

import io
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit import figures
from vaekit.config import ModelConfig, RunConfig, TrainConfig
from vaekit.display import Picture, model_html, show


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()  # decodes every chunk: a truncated or corrupt PNG raises here
    return img


def test_show_renders_the_exact_pixels_as_png():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 1, 5, 4), generator=g).float() / 255  # exact in uint8
    pic = show(x, nrow=3, scale=1, pad=1)
    img = decode_png(pic._repr_png_())
    assert img.size == pic.size == (3 * (4 + 1) + 1, 2 * (5 + 1) + 1)
    a = np.asarray(img)
    for i in range(6):
        r, c = divmod(i, 3)
        top, left = 1 + r * 6, 1 + c * 5
        np.testing.assert_array_equal(a[top : top + 5, left : left + 4], (x[i, 0] * 255).round().byte().numpy())
    assert "Picture" in repr(pic) and "6 images" in repr(pic)


def test_show_scales_and_accepts_flat_vectors():
    pic = show(torch.rand(4, 784), scale=2, pad=0)  # flat MNIST-sized vectors are drawn as 28 x 28
    assert decode_png(pic.png).size == (2 * 2 * 28, 2 * 2 * 28)


def test_picture_refuses_bytes_that_are_not_png():
    with pytest.raises(ValueError, match="PNG"):
        Picture(b"GIF89a....")


def test_picture_save_writes_the_same_bytes(tmp_path):
    pic = show(torch.rand(3, 1, 8, 8))
    out = pic.save(tmp_path / "sub" / "grid.png")
    assert out.read_bytes() == pic.png
    assert not [p for p in out.parent.iterdir() if p.name != "grid.png"]  # no temp file left behind


def test_plots_without_a_path_return_a_picture_and_with_one_write_the_file(tmp_path):
    g = torch.Generator().manual_seed(1)
    panel = {"title": "t", "xy": torch.randn(50, 2, generator=g).numpy(), "labels": np.arange(50) % 10}
    pic = figures.latent_scatter([panel, panel])
    assert isinstance(pic, Picture)
    w, h = decode_png(pic._repr_png_()).size
    assert w > h > 100  # two panels side by side
    path = figures.latent_scatter([panel], tmp_path / "s.png")
    assert path == tmp_path / "s.png" and decode_png(path.read_bytes())
    rows = figures.image_rows([("a", torch.rand(3, 1, 8, 8)), ("b", torch.rand(2, 1, 8, 8))])
    assert isinstance(rows, Picture) and decode_png(rows.png)


class _Table(HTMLParser):
    """Collects (th, td) rows and checks tags are balanced."""

    def __init__(self):
        super().__init__()
        self.rows, self.stack, self.cell = [], [], None

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        if tag in ("th", "td"):
            self.cell = ""

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag
        if tag == "th":
            self.rows.append([self.cell])
        elif tag == "td":
            self.rows[-1].append(self.cell)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def parse(html: str) -> dict[str, str]:
    t = _Table()
    t.feed(html)
    t.close()
    assert not t.stack and all(len(r) == 2 for r in t.rows)
    return dict(t.rows)


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_models_render_as_an_html_table_of_their_parts(kind):
    model = vaekit.build_model(ModelConfig(model=kind, latent_dim=3, hidden=(32, 16), input_shape=(1, 6, 6)))
    rows = parse(model._repr_html_())
    assert rows == parse(model_html(model))
    assert rows["latent size"] == "3"
    assert rows["likelihood p(x|z)"] == "bernoulli"
    assert rows["encoder"].startswith("mlp: 36 -> 32 -> 16 -> " + ("6 = mu" if kind == "vae" else "3 = the code"))
    assert rows["decoder"] == "mlp: 3 -> 16 -> 32 -> 36"
    assert rows["prior p(z)"] == "N(0, I)" if kind == "vae" else rows["prior p(z)"].startswith("none")
    assert rows["parameters"].startswith(f"{sum(p.numel() for p in model.parameters()):,} ")
    assert "trained" not in rows
    model.run_config = RunConfig(model.config, TrainConfig(epochs=4, binarize="dynamic"))  # as vaekit.load sets it
    assert parse(model_html(model))["trained"] == "mnist, 4 epochs, batch 128, binarize dynamic"


def test_model_html_escapes_text():
    model = vaekit.build_model(ModelConfig(latent_dim=2, hidden=(8,), input_shape=(4,)))
    model.run_config = RunConfig(model.config, TrainConfig(data="<b>x&y</b>.npy"))
    html = model_html(model)
    assert "<b>" not in html and "&lt;b&gt;x&amp;y" in html
    assert parse(html)["trained"].startswith("<b>x&y</b>.npy")
