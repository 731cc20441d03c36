"""The report in a real browser: headless Chromium opens report.html, moved away from its figures folder,
and every image decodes (naturalWidth > 0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS, run_cli

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def report(tmp_path_factory, vae_run, ae_run, mnist_slice) -> Path:
    """A report over small real runs (the shared AE and VAE fixtures, a 2-D VAE, a classifier) with the
    quick settings, every section included."""
    from vaekit.classifier import ClassifierConfig, train_classifier
    from vaekit.report import QUICK, write_report

    root = tmp_path_factory.mktemp("browser")
    vae2d = root / "vae2d"
    run_cli(
        "train",
        "--data",
        mnist_slice,
        "--latent-dim",
        2,
        "--epochs",
        1,
        "--batch-size",
        100,
        "--quiet",
        "--out",
        vae2d,
        check=True,
    )
    clf = root / "classifier"
    train_classifier(ClassifierConfig(epochs=1, limit=2000), clf)
    path = write_report([ae_run, vae_run, vae2d, clf], root / "out" / "report.html", settings=QUICK, test_data="mnist")
    moved = root / "moved" / "report.html"  # self-contained: no figures/ beside it
    moved.parent.mkdir()
    shutil.copy(path, moved)
    return moved


def test_every_image_loads_in_chromium(report):
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
            images = page.evaluate("""Array.from(document.images).map(i => ({
                figure: i.dataset.figure, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))""")
            sections = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.dataset.section)")
            links = page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))")
            ids = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => '#' + s.id)")
        finally:
            browser.close()
    assert len(images) >= 8, images
    broken = [i for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, broken
    assert sections == ["1", "2", "3", "4", "5", "6", "7"]
    assert links == ids
    assert not errors, errors
