from __future__ import annotations

import re

import numpy as np
import pytest
from lxml import html as lxml_html

from prunegate.report.gallery import Gallery, png
from prunegate.report.render import html


@pytest.fixture(scope="module")
def failing_page() -> str:
    from conftest import _sample_report

    report = _sample_report(failing=True)
    key = ("noise/uniform/0.3", 0, 0)
    gallery = Gallery(
        images={key: png(np.full((8, 8, 3), 200, np.uint8))},
        originals={("test", 0): png(np.zeros((8, 8, 3), np.uint8))},
        notes=["one note"],
    )
    return html.render(report, gallery=gallery, signature="signed by key 0123456789abcdef")


def parse(page: str):
    return lxml_html.document_fromstring(page)


def test_self_contained_no_requests_possible(failing_page) -> None:
    doc = parse(failing_page)
    assert not doc.xpath("//script | //link | //iframe | //object | //embed | //base")
    for element in doc.iter():
        for name in ("src", "href", "srcset", "poster", "action", "data"):
            value = element.get(name)
            assert value is None or value.startswith(("data:", "#")), (element.tag, name, value[:60])
    styles = " ".join(s.text for s in doc.xpath("//style"))
    assert "@import" not in styles and "url(" not in styles
    [csp] = doc.xpath("//meta[@http-equiv='Content-Security-Policy']/@content")
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert "@media print" in styles


def test_verdict_banner_then_failed_rules_first(failing_page) -> None:
    doc = parse(failing_page)
    [banner] = doc.xpath("//header[@id='verdict']")
    assert "verdict-fail" in banner.get("class") and banner.text_content().split()[0] == "FAIL"
    assert "noise agreement" in banner.text_content() and "signed by key 0123456789abcdef" in banner.text_content()
    sections = [s.get("id") for s in doc.xpath("//main/section")]
    assert sections[:2] == ["failed-rules", "rules"]
    cards = doc.xpath("//section[@id='failed-rules']//article")
    assert [c.get("data-rule") for c in cards] == ["noise agreement", "corruption drop"]
    assert "83.00%" in cards[0].text_content() and "≥ 90.00%" in cards[0].text_content()
    assert "noise/uniform/0.3" in cards[0].text_content()
    assert "4,200 samples" in cards[1].text_content()
    rows = doc.xpath("//section[@id='rules']//tbody/tr")
    assert [r.xpath("string(td[2])") for r in rows] == ["noise agreement", "corruption drop", "clean accuracy"]
    header = [th.text_content() for th in doc.xpath("//section[@id='rules']//thead//th")]
    assert "bound" in header and any(h.startswith("interval") for h in header)
    assert rows[0].xpath("string(td[last()-1])").startswith("95% [")


def test_figures_and_tables(failing_page) -> None:
    doc = parse(failing_page)
    figures = doc.xpath("//section[@id='figures']//figure")
    assert [f.get("id") for f in figures] == ["accuracy-vs-severity", "agreement-vs-noise", "class-recall-drop"]
    for figure in figures:
        [src] = figure.xpath(".//img/@src")
        assert src.startswith("data:image/svg+xml;base64,")
    tasks = doc.xpath("//section[@id='tasks']//table[contains(@class, 'tasks')]//tbody/tr")
    assert len(tasks) == 9
    failing = [r.xpath("string(td[1])") for r in tasks if "fail" in (r.get("class") or "")]
    assert failing == ["noise/uniform/0.3", "corruption/fog/5", "corruption/contrast/5"]
    assert doc.xpath("//section[@id='corruption-summary']")
    assert "1.083" in doc.xpath("string(//section[@id='corruption-summary'])")


def test_gallery_shows_given_images_and_says_what_is_missing(failing_page) -> None:
    doc = parse(failing_page)
    gallery = doc.xpath("//section[@id='gallery-section']")[0]
    cards = gallery.xpath(".//div[@class='example']")
    assert len(cards) == 18  # every example of the sample report (under the gallery's limit)
    first = cards[0]
    assert "noise/uniform/0.3" in first.text_content() and "test #0" in first.text_content()
    images = first.xpath(".//img/@src")
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "red" in first.text_content() and "green" in first.text_content()  # class names, not numbers
    assert "not available" in cards[1].text_content()
    assert "one note" in gallery.text_content()


def test_minimal_report_renders_without_optional_parts(sample_report) -> None:
    report = sample_report(failing=False, extras=False, corruptions=())
    doc = parse(html.render(report))
    assert "verdict-pass" in doc.xpath("//header/@class")[0]
    assert not doc.xpath("//section[@id='failed-rules']") and not doc.xpath("//section[@id='corruption-summary']")
    assert [f.get("id") for f in doc.xpath("//figure")] == ["agreement-vs-noise"]
    assert "records no examples" in doc.xpath("string(//section[@id='gallery-section'])")
    header = [th.text_content() for th in doc.xpath("//section[@id='rules']//thead//th")]
    assert "bound" not in header and "newly wrong" not in doc.xpath("string(//section[@id='tasks'])")


def test_text_is_escaped_and_output_is_deterministic(sample_report) -> None:
    report = sample_report(failing=True, corruptions=())
    rules = [r.model_copy(update={"name": f"<script>alert({i})</script>"}) for i, r in enumerate(report.rules)]
    report = report.model_copy(update={"rules": rules})
    page = html.render(report)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert html.render(report) == page
    assert re.search(r"<title>prunegate FAIL: sample</title>", page)


def test_report_html_command(tmp_path, capsys, sample_report, write_report) -> None:
    from prunegate.cli import main

    path = write_report(tmp_path / "report.json", sample_report(failing=True, corruptions=()))
    assert main(["report", "html", str(path)]) == 0
    page = (tmp_path / "report.html").read_text()
    doc = parse(page)
    assert "UNSIGNED" in doc.xpath("string(//header)")
    # the sample report's data (/nowhere/...) is not reachable: the page says so instead of a gallery
    assert "not readable here" in doc.xpath("string(//section[@id='gallery-section'])")
    target = tmp_path / "other.html"
    assert main(["report", "html", str(path), "--out", str(target), "--no-gallery"]) == 0
    assert "images not rebuilt" in parse(target.read_text()).xpath("string(//section[@id='gallery-section'])")
    assert main(["report", "html", str(path), "--out", str(tmp_path / "no" / "such.html")]) == 2
    assert main(["report", "html", str(path), "--out", str(path)]) == 2
    capsys.readouterr()
