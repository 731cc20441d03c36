"""The report in a real browser: headless Chromium opens the quick demo's report.html, moved away from its
figures folder, and every image decodes (naturalWidth > 0), the animation among them: its data URI is a GIF
with a frame per epoch. The claims table and the sections are where the navigation says."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(quick_demo, tmp_path_factory) -> Path:
    """The quick demo's report (ae, vae, ae2d, vae2d with their snapshots, the classifier: every section, every
    figure), copied alone: it is self-contained, with no figures/ beside it."""
    out, _, _ = quick_demo
    moved = tmp_path_factory.mktemp("browser") / "report.html"
    shutil.copy(out / "report.html", moved)
    return moved


def test_every_image_and_the_animation_load_in_chromium(report):
    from playwright import sync_api

    assert CHROMIUM.exists(), "no /usr/bin/chromium (make test installs it: scripts/ensure-system-packages.sh)"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("""Array.from(document.images).map(i => ({figure: i.dataset.figure,
                complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, src: i.src}))""")
            sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.dataset.section)")
            links = page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))")
            ids = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => '#' + s.id)")
            claims = page.evaluate("""Array.from(document.querySelectorAll('#claims tr[data-claim]')).map(r =>
                [r.dataset.claim, r.querySelector('.holds').textContent, getComputedStyle(
                    r.querySelector('.holds')).backgroundColor])""")
            first = page.evaluate(
                "document.querySelector('#claims').compareDocumentPosition("
                "document.querySelector('section')) & Node.DOCUMENT_POSITION_FOLLOWING"
            )
        finally:
            browser.close()
    broken = [{k: v for k, v in i.items() if k != "src"} for i in images if not (i["complete"] and i["w"] > 0)]
    assert not broken, broken
    figures = [i["figure"] for i in images]
    assert {"hole_maps", "latent_formation", "neighbourhoods", "manifold", "shift"} <= set(figures), figures
    gif = next(i["src"] for i in images if i["figure"] == "latent_formation")
    assert gif.startswith("data:image/gif;base64,")
    with Image.open(io.BytesIO(base64.b64decode(gif.split(",", 1)[1]))) as im:
        assert im.format == "GIF" and im.n_frames > 1
    assert sections == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert links == ids
    assert [c[0] for c in claims] == [f"C{i}" for i in range(1, 9)] and first  # the table before section 1
    colours = {"true": "rgb(42, 157, 74)", "false": "rgb(192, 57, 43)", "partly": "rgb(214, 137, 16)"}
    assert all(colours[word] == colour for _, word, colour in claims), claims
    assert not errors, errors
