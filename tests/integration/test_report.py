"""`vaekit report` on the quick demo's runs: the sections, figures and numbers that apply to what it is given."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

import pytest


class ReportParser(HTMLParser):
    """Sections (data-section), numbers (data-metric/data-value) and images (src) of a report."""

    def __init__(self):
        super().__init__()
        self.sections, self.metrics, self.images, self.figures = [], {}, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-section" in a:
            self.sections.append(int(a["data-section"]))
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
    assert (tmp_path / "figures" / "latent_scatter.png").is_file()
