"""The explorer's page in headless Chromium (Playwright), against a real `vaekit serve` of two small runs.

The screenshot for the README: VAEKIT_SCREENSHOT=docs/explorer.png, optionally with
VAEKIT_SCREENSHOT_RUNS="runs/demo/vae runs/demo/ae" (default: the test runs), then
`pytest -m browser -k screenshot`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS, ROOT
from playwright import sync_api
from test_app import Server, cond_runs, cserver, threshold_runs  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def chromium_path() -> str | None:
    """Debian's chromium (`make test` installs it); VAEKIT_CHROMIUM overrides."""
    for p in (os.environ.get("VAEKIT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if p and Path(p).exists():
            return p
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    assert path, "no chromium (make test installs it; or set VAEKIT_CHROMIUM): a browser test fails, not skips"
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(vae_run, ae_run):
    s = Server(vae_run, ae_run)
    yield s
    s.stop()


def open_page(browser, url: str, **context):
    """A fresh page on the explorer, ready; .errors collects console errors and uncaught exceptions."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, **context)
    page = ctx.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


@pytest.fixture
def page(browser, server):
    p = open_page(browser, server.url)
    yield p
    assert p.errors == []
    p.context.close()


def src(page, selector: str) -> str:
    return page.locator(selector).first.get_attribute("src") or ""


def changes(page, selector: str, old: str, timeout: float = 10_000) -> str:
    """Wait until the image's src differs from `old`; return the new one."""
    page.wait_for_function(
        "([s, old]) => (document.querySelector(s).getAttribute('src') || '') !== old",
        arg=[selector, old],
        timeout=timeout,
    )
    return src(page, selector)


def draw_stroke(page, points) -> None:
    box = page.locator("#draw").bounding_box()
    xy = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=6)
    page.mouse.up()


def test_page_loads_with_both_models_and_no_console_errors(page):
    assert page.locator(".view").count() == 2
    assert page.locator(".view .title").all_inner_texts() == ["0: vae", "1: ae"]
    for sel in (".view img.decoded", ".view img.grid", ".view img.strip"):
        for img in page.locator(sel).all():
            assert (img.get_attribute("src") or "").startswith("data:image/png;base64,")
    # the map was drawn: the canvas is not blank white
    lit = page.evaluate("""() => { const c = document.querySelector('.view canvas.map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 600) n++; return n; }""")
    assert lit > 1000
    assert page.locator(".view .sliders input[type=range]").count() == 32  # 16 per 20-D model


def test_dragging_on_the_map_changes_the_decoded_image(page):
    sel = ".view:nth-child(1) img.decoded"
    box = page.locator(".view:nth-child(1) svg.overlay").bounding_box()
    before = src(page, sel)
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
    page.mouse.down()
    at_a = changes(page, sel, before)
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.7 * box["height"], steps=10)
    page.mouse.up()
    assert changes(page, sel, at_a) != at_a
    cur = page.locator(".view:nth-child(1) svg .current")
    assert abs(float(cur.get_attribute("cx")) - 0.8 * 360) < 3  # the marker followed the pointer


def test_a_slider_changes_the_decoded_image(page):
    sel = ".view:nth-child(2) img.decoded"
    before = src(page, sel)
    page.locator(".view:nth-child(2) .sliders input").first.evaluate(
        "el => { el.value = el.max; el.dispatchEvent(new Event('input')); }"
    )
    changes(page, sel, before)


def test_a_stroke_yields_a_reconstruction_and_a_circle_on_the_map(page):
    draw_stroke(page, [(0.45, 0.15), (0.5, 0.5), (0.55, 0.85)])
    for v in (1, 2):
        page.wait_for_selector(f".view:nth-child({v}) img.recon[src^='data:image/png']", timeout=10_000)
    vae = page.locator(".view:nth-child(1)")
    ellipse = vae.locator("svg ellipse.posterior")
    assert ellipse.is_visible()
    assert float(ellipse.get_attribute("rx")) > 0 and float(ellipse.get_attribute("ry")) > 0
    assert vae.locator("svg circle.posterior-mean").is_visible()
    assert "ELBO" in vae.locator(".elbo").inner_text() and "nats" in vae.locator(".elbo").inner_text()
    assert "no ELBO" in page.locator(".view:nth-child(2) .elbo").inner_text()  # the AE says why not
    for v in (1, 2):  # no threshold.json in these runs: the score, and how to calibrate one
        text = page.locator(f".view:nth-child({v}) .anomaly").inner_text()
        assert re.fullmatch(
            r"score -?\d+\.\d nats; no threshold: run `vaekit score RUN --data \.\.\. --fpr 0\.05` to calibrate one",
            text,
        ), text
        assert "-ELBO" in page.locator(f".view:nth-child({v}) .anomaly-parts").inner_text()
    assert page.locator(".view:nth-child(2) svg circle.posterior-mean").is_visible()


def test_a_drawing_is_judged_against_the_runs_threshold(browser, threshold_runs):  # noqa: F811 (the fixture)
    """A run with threshold.json: the verdict and its number after drawing, in the colour of the verdict."""
    vae, damaged, _, t = threshold_runs
    s = Server(vae, damaged)
    try:
        page = open_page(browser, s.url)
        assert f"anomaly threshold {t.value:.1f} at FPR 5%" in page.locator(".view:nth-child(1) .meta").inner_text()
        draw_stroke(page, [(0.62, 0.22), (0.42, 0.2), (0.38, 0.45), (0.6, 0.5), (0.62, 0.75), (0.38, 0.8)])
        page.wait_for_function("() => document.querySelector('.view .anomaly').textContent.includes('score')")
        page.wait_for_load_state("networkidle")  # the last encode of the stroke has answered
        el = page.locator(".view:nth-child(1) .anomaly")
        m = re.fullmatch(
            r"score (-?\d+\.\d) nats \(threshold (-?\d+\.\d) at FPR 5%\): "
            r"(looks like training data|unlike the training data)",
            el.inner_text(),
        )
        assert m, el.inner_text()
        assert m.group(2) == f"{t.value:.1f}"
        outlier = m.group(3) == "unlike the training data"
        assert el.get_attribute("class").split() == ["anomaly", "outlier" if outlier else "inlier"]
        if abs(float(m.group(1)) - t.value) > 0.1:  # the rounded numbers agree with the verdict
            assert outlier == (float(m.group(1)) > t.value)
        assert "no threshold" in page.locator(".view:nth-child(2) .anomaly").inner_text()  # the damaged one
        assert page.errors == []
        page.context.close()
    finally:
        s.stop()


def test_a_finger_stroke_works_too(browser, server):
    page = open_page(browser, server.url, has_touch=True)
    box = page.locator("#draw").bounding_box()
    cdp = page.context.new_cdp_session(page)
    pts = [(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * (0.2 + 0.06 * i)) for i in range(11)]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": pts[0][0], "y": pts[0][1]}]})
    for x, y in pts[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_selector(".view:nth-child(1) img.recon[src^='data:image/png']", timeout=10_000)
    assert page.errors == []
    page.context.close()


def test_interpolation_shows_the_strip(page):
    sel = ".view:nth-child(1) img.strip"
    before = src(page, sel)
    page.fill("#end-from .index", "3")
    page.fill("#end-to .index", "7")
    page.fill("#steps", "6")
    page.check("#spherical")
    page.click("#interpolate")
    changes(page, sel, before)
    page.wait_for_function("s => document.querySelector(s).naturalWidth === 6 * 30 + 2", arg=sel)
    points = page.locator(".view:nth-child(1) svg polyline.path").get_attribute("points")
    assert len(points.split()) == 6
    # a drawing as one end
    draw_stroke(page, [(0.5, 0.2), (0.5, 0.8)])
    page.wait_for_selector(".view:nth-child(1) img.recon[src^='data:image/png']")
    page.select_option("#end-to .kind", "drawing")
    strip = src(page, sel)
    page.click("#interpolate")
    changes(page, sel, strip)


def test_clicking_a_dot_selects_that_test_digit(page):
    # a coloured pixel of the map canvas is a drawn point; click it
    xy = page.evaluate("""() => { const c = document.querySelector('.view canvas.map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) {
            if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80)
                return [(i / 4) % c.width, Math.floor(i / 4 / c.width)];
        } return null; }""")
    box = page.locator(".view:nth-child(1) svg.overlay").bounding_box()
    page.mouse.click(box["x"] + xy[0] + 0.5, box["y"] + xy[1] + 0.5)
    page.wait_for_function("() => document.querySelector('.view .selected').textContent.includes('test digit #')")
    picked = int(page.locator(".view .selected").first.inner_text().split("#")[1].split(",")[0])
    page.click("#end-from .pick")
    assert page.input_value("#end-from .index") == str(picked)


MAP_INK = """s => { const c = document.querySelector(s);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 720) n++; return n; }"""


def test_a_label_conditions_everything_a_conditional_view_shows(browser, cserver, cond_runs):  # noqa: F811
    """Served with a classifier: the conditional 2-D VAE's label picker re-decodes, re-samples and restyles a
    drawing under every label; both 2-D maps show the confidence background, which a toggle hides."""
    page = open_page(browser, cserver.url)
    cvae, ae = page.locator(".view:nth-child(1)"), page.locator(".view:nth-child(2)")
    assert cvae.locator(".labels button").count() == 10 and ae.locator(".label-picker").is_hidden()
    assert "encoded with their own labels" in cvae.locator(".meta").inner_text()
    grid, dec = ".view:nth-child(1) img.grid", ".view:nth-child(1) img.decoded"
    g0, d0 = src(page, grid), src(page, dec)
    cvae.locator(".labels button[data-label='7']").click()
    g7 = changes(page, grid, g0)
    changes(page, dec, d0)
    assert cvae.locator(".labels button.active").inner_text() == "7"
    page.fill("#seed", "3")
    page.click("#sample")
    changes(page, grid, g7)

    draw_stroke(page, [(0.62, 0.22), (0.42, 0.2), (0.38, 0.45), (0.6, 0.5), (0.62, 0.75), (0.38, 0.8)])
    strip = ".view:nth-child(1) img.restyled"
    page.wait_for_selector(f"{strip}[src^='data:image/png']", timeout=10_000)
    page.wait_for_function("s => document.querySelector(s).naturalWidth === 10 * 30 + 2", arg=strip)  # 10 images
    assert cvae.locator(".restyle").is_visible() and ae.locator(".restyle").is_hidden()
    page.wait_for_load_state("networkidle")
    before = src(page, strip)
    cvae.locator(".labels button[data-label='2']").click()  # encoded again, with the new label
    changes(page, strip, before)

    for v, sel in ((cvae, ".view:nth-child(1) canvas.map"), (ae, ".view:nth-child(2) canvas.map")):
        legend = v.locator(".bg-legend")
        assert legend.is_visible() and v.locator(".bg-note").is_hidden()
        assert "classifier confidence" in legend.inner_text() and "outlined: holes" in legend.inner_text()
        with_bg = page.evaluate(MAP_INK, sel)
        v.locator(".bg-toggle").uncheck()
        without = page.evaluate(MAP_INK, sel)
        assert with_bg - without > 20_000, (with_bg, without)  # the background: tens of thousands of pixels more
        v.locator(".bg-toggle").check()
        assert page.evaluate(MAP_INK, sel) == with_bg
    assert page.errors == []
    page.context.close()

    alone = Server(cond_runs[1])  # the 2-D AE without the classifier: a note, no background
    try:
        page = open_page(browser, alone.url)
        note = page.locator(".view .bg-note")
        assert note.is_visible() and "classifier folder" in note.inner_text()
        assert page.locator(".view .bg-legend").is_hidden() and page.errors == []
        page.context.close()
    finally:
        alone.stop()


def test_screenshot(browser, server, tmp_path):
    """The full page after a drawing, a drag and an interpolation; saved to $VAEKIT_SCREENSHOT if set."""
    runs = os.environ.get("VAEKIT_SCREENSHOT_RUNS")
    other = Server(*runs.split()) if runs else None
    try:
        page = open_page(browser, (other or server).url)
        for b in page.locator(".labels button[data-label='5']").all():  # conditional views: draw a 5 as a 5
            b.click()
        draw_stroke(page, [(0.62, 0.22), (0.42, 0.2), (0.38, 0.45), (0.6, 0.5), (0.62, 0.75), (0.38, 0.8)])  # a 5
        page.wait_for_selector(".view:nth-child(1) img.recon[src^='data:image/png']")
        page.fill("#end-from .index", "0")
        page.fill("#end-to .index", "4")
        page.click("#interpolate")
        page.wait_for_timeout(500)
        out = tmp_path / "explorer.png"
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 50_000 and page.errors == []
        page.context.close()
    finally:
        if other:
            other.stop()
    if os.environ.get("VAEKIT_SCREENSHOT"):
        dest = Path(os.environ["VAEKIT_SCREENSHOT"])
        dest = dest if dest.is_absolute() else ROOT / dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, dest)
