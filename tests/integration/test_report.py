"""`vaekit report` on the quick demo's runs: the sections, figures and numbers that apply to what it is given."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

import pytest


class ReportParser(HTMLParser):
    """Sections (data-section), numbers (data-metric/data-value), images (src), the claims table's rows
    (data-claim -> data-holds) and the claims the sections open with (data-claim, in order)."""

    def __init__(self):
        super().__init__()
        self.sections, self.metrics, self.images, self.figures = [], {}, [], []
        self.claims, self.section_claims = {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-section" in a:
            self.sections.append(int(a["data-section"]))
        if tag == "tr" and "data-claim" in a:
            self.claims[a["data-claim"]] = a["data-holds"]
        if tag == "div" and "data-claim" in a:
            self.section_claims.append(a["data-claim"])
        if "data-metric" in a:
            self.metrics[a["data-metric"]] = float(a["data-value"])
        if tag == "img":
            self.images.append(a.get("src", ""))
            self.figures.append(a.get("data-figure"))


def parse(path: Path) -> ReportParser:
    p = ReportParser()
    p.feed(path.read_text())
    return p


@pytest.mark.slow
def test_report_for_a_single_vae(quick_demo, tmp_path):
    """`vaekit report RUN` for one VAE: what applies (training, reconstructions, its latent plot,
    interpolation; no classifier numbers, no 2-D manifold)."""
    from vaekit.report import QUICK, write_report

    out, _, _ = quick_demo
    path = write_report([out / "vae"], tmp_path / "one.html", settings=QUICK)
    r = parse(path)
    assert {1, 2, 3, 4} <= set(r.sections) and 5 not in r.sections
    assert "latent_scatter" in r.figures and "manifold" not in r.figures
    assert "vae.nll" in r.metrics and "vae.gen_frechet" not in r.metrics
    assert all(math.isfinite(v) for v in r.metrics.values())
    # the claims table: every row, those needing the classifier or another run not measured, and said so
    assert list(r.claims) == [f"C{i}" for i in range(1, 9)]
    assert r.claims["C1"] == r.claims["C2"] == r.claims["C3"] == r.claims["C4"] == "none"
    assert r.claims["C5"] != "none" and r.claims["C7"] == "true"
    assert r.section_claims == ["C1", "C3", "C4", "C2", "C5", "C6", "C8", "C7"]
    assert r.sections == [1, 2, 3, 4, 6, 7, 8] and "hole_maps" not in r.figures
    assert "No hole map: it needs the classifier" in path.read_text()
    assert (tmp_path / "figures" / "latent_scatter.png").is_file()
