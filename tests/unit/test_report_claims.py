"""report_claims (and report.Page.figure) on hand-made claims rows and small untrained models: holds shown as
words with their colour key, a missing number or a missing side said as such, every text escaped, the numbers
recorded (finite ones only), report.json's rows plain JSON, which runs play which part, section 7 from real
measurements, and the latent formation animation inlined as a GIF."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_claims import SMALL, small_runs
from test_studies import images

from vaekit.claims import measure_claims
from vaekit.claims_table import Claim, claims_table
from vaekit.distributions import StandardNormal
from vaekit.report import Page
from vaekit.report_claims import (
    Claims,
    claim_html,
    claim_runs,
    claims_html,
    claims_json,
    gaps_html,
    holds_html,
    holds_word,
    section_kl,
    table_html,
)
from vaekit.snapshots import LatentSnapshots
from vaekit.studies import Entry

KEYS = {"id", "claim", "setting", "measure", "ae", "vae", "holds", "reading"}


def row(cid="C1", holds=True, ae=None, vae=None, reading="Holds. fine."):
    return Claim(cid, "a claim", "ae vs vae (D=20)", "a measure", ae, vae, holds, reading)


class Cells(HTMLParser):
    """The claims table's rows: data-claim -> (data-holds, the text of each cell)."""

    def __init__(self):
        super().__init__()
        self.rows, self._id, self._cell = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-claim" in a:
            self._id = a["data-claim"]
            self.rows[self._id] = (a["data-holds"], [])
        elif tag == "td" and self._id:
            self._cell = []
            self.rows[self._id][1].append(self._cell)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def cells(html: str) -> dict[str, tuple[str, list[str]]]:
    p = Cells()
    p.feed(html)
    return {k: (h, ["".join(c) for c in cs]) for k, (h, cs) in p.rows.items()}


def test_holds_as_words_and_colour_keys():
    for holds, word in ((True, "true"), (False, "false"), ("partly", "partly"), (None, "not measured")):
        assert holds_word(holds) == word
        key = {"not measured": "none"}.get(word, word)
        assert holds_html(holds) == f'<span class="holds" data-holds="{key}">{word}</span>'


def test_table_cells_missing_numbers_and_escaping(tmp_path):
    page = Page(tmp_path)
    rows = [
        row("C1", True, {"D=2 holes": 0.25, "D=20": None}, {"D=2 holes": 0.125}),
        row("C2", "partly", None, {"D=20 ratio": 1234.5678, "D=2 ratio": math.inf}),
        row("C3", None, {"D=20": None}, {"D=20": None}, reading="Not measured. <no classifier> & more"),
        row("C4", False, {"D=20": 3.0}, {"D=20": 1.0}),
    ]
    html = table_html(page, rows)
    got = cells(html)
    assert list(got) == ["C1", "C2", "C3", "C4"]
    assert [got[k][0] for k in got] == ["true", "partly", "none", "false"]
    assert all(len(c) == 8 for _, c in got.values())
    head = re.findall(r"<th>([^<]*)</th>", html)
    assert head == ["id", "claim", "setting", "measure", "AE", "VAE", "holds", "reading"]
    c1, c2, c3, c4 = (got[k][1] for k in ("C1", "C2", "C3", "C4"))
    assert c1[4] == "D=2 holes: 0.250D=20: not measured" and c1[6] == "true"
    assert c2[4] == "\u2013" and c2[5] == "D=20 ratio: 1235D=2 ratio: inf"  # no AE side: a dash
    assert c3[4] == "D=20: not measured" and c3[6] == "not measured"
    assert c3[7] == "Not measured. <no classifier> & more"  # the parser unescapes: the HTML was escaped
    assert "&lt;no classifier&gt; &amp; more" in html and "<no classifier>" not in html
    assert c4[4] == "D=20: 3" and c4[5] == "D=20: 1"  # whole numbers (comparisons won) without decimals
    # every finite number recorded under its row, column and setting; inf shown but not recorded
    assert page.metrics == {
        "claims.C1.ae.D=2 holes": 0.25,
        "claims.C1.vae.D=2 holes": 0.125,
        "claims.C2.vae.D=20 ratio": 1234.5678,
        "claims.C4.ae.D=20": 3.0,
        "claims.C4.vae.D=20": 1.0,
    }


def test_claim_paragraph_states_claim_and_verdict():
    r = Claim("C5", "Pixels <are> not semantic.", "vae", "MSE", None, {"x": 1.0}, False, "Does not hold. a & b.")
    html = claim_html(r)
    assert html.startswith('<div class="claim" data-claim="C5" data-holds="false">')
    assert "Pixels &lt;are&gt; not semantic." in html and "Does not hold. a &amp; b." in html
    assert '<span class="holds" data-holds="false">false</span>' in html and 'href="#claims"' in html


def test_claims_json_plain_and_complete():
    rows = [row("C1", "partly", {"a": math.nan}, {"a": 0.5, "b": math.inf}), row("C2", None, None, None)]
    out = claims_json(rows)
    text = json.dumps(out, allow_nan=False)  # plain JSON: a non-finite number becomes null
    assert [set(d) for d in out] == [KEYS, KEYS]
    assert out[0]["ae"] == {"a": None} and out[0]["vae"] == {"a": 0.5, "b": None} and out[0]["holds"] == "partly"
    assert json.loads(text)[1] == {**rows[1].to_dict()}


class FakeEntry:
    def __init__(self, name, is_vae, latent_dim, prior=None):
        self.name, self.is_vae, self.latent_dim = name, is_vae, latent_dim
        self.model = SimpleNamespace(prior=prior or StandardNormal(latent_dim))


def test_claim_runs_first_of_each_part():
    es = [
        FakeEntry("vamp", True, 20, prior=SimpleNamespace()),  # a learned prior: none of the claims' runs
        FakeEntry("a10", False, 10),
        FakeEntry("v", True, 20),
        FakeEntry("a", False, 20),
        FakeEntry("v2", True, 20),
        FakeEntry("a2d", False, 2),
        FakeEntry("v2d", True, 2),
    ]
    got = {k: e.name for k, e in claim_runs(es).items()}
    assert got == {"vae": "v", "ae": "a", "ae2d": "a2d", "vae2d": "v2d"}  # D=10 plays no part (rows say D=20)


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Claims:
    """The claims measured once on small untrained runs (test_claims.small_runs) in run folders of their own."""
    runs, clf, x, y = small_runs()
    root = tmp_path_factory.mktemp("runs")
    entries = {k: Entry(k, root / k, m, []) for k, m in runs.items()}
    return Claims(claims_table(res := measure_claims(runs, clf, x, y, SMALL)), res, entries, y)


def test_claims_html_and_section_kl_from_real_measurements(measured, tmp_path):
    c, page = measured, Page(tmp_path)
    html = claims_html(page, c)
    got = cells(html)
    assert list(got) == [f"C{i}" for i in range(1, 9)]
    assert [h for h, _ in got.values()] == [{True: "true", False: "false"}.get(r.holds, r.holds) for r in c.rows]
    assert html.count("<dt>") == 8  # how each measure is defined
    assert all(math.isfinite(v) for v in page.metrics.values()) and "claims.C8.ae.D=2" in page.metrics
    section_kl(page, c, 7)
    body = "".join(page.parts)
    assert body.startswith('<section id="kl-term" data-section="7">')
    assert 'data-claim="C6"' in body and 'data-claim="C8"' in body
    for k in ("vae", "vae2d"):
        assert page.metrics[f"{k}.elbo_forms_diff"] == c.res.elbo[k].diff
        assert page.metrics[f"{k}.elbo_analytic"] == c.row("C6").vae[f"{'D=20' if k == 'vae' else 'D=2'} analytic"]
    for k in ("ae", "vae", "ae2d", "vae2d"):
        assert page.metrics[f"{k}.prior_kl.kl"] == c.res.prior_kl[k]["kl"]


def test_not_measured_rows_say_so(tmp_path):
    rows = claims_table(measure_claims({}, None, images(20), None, SMALL))
    got = cells(table_html(Page(tmp_path), rows))
    assert [h for h, _ in got.values()] == ["none"] * 8 and all(c[6] == "not measured" for _, c in got.values())
    assert all("not measured" in claim_html(r) and 'data-holds="none"' in claim_html(r) for r in rows)


def test_gaps_without_snapshots_or_classifier_say_so(measured, tmp_path):
    c = replace(measured, res=replace(measured.res, holes={}, has_classifier=False))
    page = Page(tmp_path)
    html = "".join(gaps_html(page, c))
    assert "No hole map: it needs the classifier" in html
    assert "No animation" in html and "ae2d" in html and "vae2d" in html
    assert "<img" not in html and not page.figures


def test_animation_inlined_as_gif_from_snapshots(measured, tmp_path):
    runs = {k: replace(e, path=tmp_path / k) for k, e in measured.runs.items()}
    c = replace(measured, runs=runs, res=replace(measured.res, holes={}))  # the hole maps: test_demo
    x = images(30, seed=5)
    for k in ("ae2d", "vae2d"):  # what vaekit demo saves while training: codes after epochs 0 and 1
        snap = LatentSnapshots(runs[k].path, x)
        for epoch in range(2):
            snap(runs[k].model, epoch)
    page = Page(tmp_path / "figures")
    html = "".join(gaps_html(page, c))
    assert set(page.figures) == {"latent_formation"} and "No animation" not in html
    gif = re.search(r'<img src="data:image/gif;base64,([^"]+)"[^>]*data-figure="latent_formation"', html)
    assert gif, html[:300]
    with Image.open(io.BytesIO(base64.b64decode(gif.group(1)))) as im:
        assert im.format == "GIF" and im.n_frames == 2
    frames = sorted(p.name for p in (tmp_path / "figures" / "latent_formation").iterdir())
    assert frames == ["frame_000.png", "frame_001.png"]


def test_page_figure_mime_from_suffix(tmp_path):
    for suffix, fmt, mime in ((".png", "PNG", "image/png"), (".gif", "GIF", "image/gif")):
        path = Path(tmp_path) / f"f{suffix}"
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(path, format=fmt)
        html = Page(tmp_path).figure("f", path, "a <caption>")
        assert html.startswith(f'<figure><img src="data:{mime};base64,')
        assert 'alt="a &lt;caption&gt;"' in html
