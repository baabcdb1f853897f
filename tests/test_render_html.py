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
        names={("test", 0): "red/0001.png"},
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
    assert len(cards) == 2  # the sample report's 9 tasks each record samples 0 and 4: one card per image
    first = cards[0]
    assert first.xpath("string(.//dd[contains(@class, 'sample')])") == "red/0001.png"  # the file, not "test #0"
    images = first.xpath(".//img/@src")
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "red" in first.text_content() and "green" in first.text_content()  # class names, not numbers
    listed = [li.text_content() for li in first.xpath(".//ul[@class='tasks-broken']/li")]
    assert listed[0].startswith("noise/uniform/0.3") and len(listed) == 7 and listed[-1] == "and 3 more"
    second = cards[1]
    assert second.xpath("string(.//dd[contains(@class, 'sample')])") == "test #4"  # no file name known
    assert "not available" in second.text_content()
    assert "one note" in gallery.text_content()
    assert "2 images" in gallery.text_content() and "18 examples recorded on 9 tasks" in gallery.text_content()


def test_gallery_comes_after_the_rules_figures_and_tables(failing_page) -> None:
    sections = [s.get("id") for s in parse(failing_page).xpath("//main/section")]
    assert sections == [
        "failed-rules",
        "rules",
        "figures",
        "corruption-summary",
        "tasks",
        "gallery-section",
        "provenance",
    ]


def test_captions_name_the_severities_that_ran(sample_report) -> None:
    def caption(**kwargs) -> str:
        doc = parse(html.render(sample_report(**kwargs)))
        return doc.xpath("string(//figure[@id='accuracy-vs-severity']//figcaption)")

    assert "severities 1, 3 and 5;" in caption(severities=(1, 3, 5))
    assert "severity 3;" in caption(severities=(3,))
    assert "severities 1-5;" in caption(severities=(1, 2, 3, 4, 5))
    assert "1-5" not in caption(severities=(2, 4))
    from prunegate.report.render import plots

    report = sample_report(severities=(1, 3))
    report = report.model_copy(update={"tasks": [t for t in report.tasks if t.name != "corruption/fog/3"]})
    assert plots.severities_text(report) == "severities 1 and 3 (not every corruption at each)"


def _texts(figure_uri: str) -> list[str]:
    """The strings an SVG figure draws (matplotlib writes each one as a comment beside its glyphs)."""
    import base64

    return re.findall(r"<!-- (.*?) -->", base64.b64decode(figure_uri.split(",", 1)[1]).decode())


def _with_class_counts(report, per_class: int):
    """The report with `per_class` samples of each class in every task (recall counts scaled)."""
    tasks = []
    for t in report.tasks:
        counts = t.class_recall
        scale = per_class / counts.n[0]
        scaled = counts.model_copy(
            update={
                "n": [per_class] * len(counts.n),
                "dense_correct": [round(c * scale) for c in counts.dense_correct],
                "pruned_correct": [round(c * scale) for c in counts.pruned_correct],
            }
        )
        tasks.append(t.model_copy(update={"class_recall": scaled}))
    return report.model_copy(update={"tasks": tasks})


def test_per_class_bars_show_their_counts(sample_report) -> None:
    from prunegate.report.render import plots

    report = sample_report(failing=True)
    texts = _texts(plots.class_recall_drop(report).uri)
    assert texts.count("n=100") == 6  # 3 classes x (clean, shifted pooled): 100 samples of each per task
    assert "noise and corruptions (8 tasks pooled)" in texts
    assert _texts(plots.class_recall_drop(_with_class_counts(report, 20)).uri).count("n=20") == 6


def test_per_class_figure_is_left_out_with_a_reason_when_classes_are_tiny(sample_report) -> None:
    report = _with_class_counts(sample_report(failing=True), 1)  # ImageNet's 1,000 images: one per class
    doc = parse(html.render(report))
    assert not doc.xpath("//figure[@id='class-recall-drop']")
    [left_out] = doc.xpath("//section[@id='figures']//*[@id='class-recall-drop']")
    text = left_out.text_content()
    assert "fewer than 20 samples" in text and "at most 1)" in text and "100 points" in text
    assert doc.xpath("//figure[@id='accuracy-vs-severity']")  # the other figures stay
    assert not parse(html.render(_with_class_counts(report, 19))).xpath("//figure[@id='class-recall-drop']")


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


# --- segmentation (issue 15) -------------------------------------------------------------------


def b64png(mask: np.ndarray) -> str:
    """A mask of class indices as the check records it: a base64 8-bit 'L' PNG."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def without_masks(report):
    """The report with no predicted masks recorded (as before check recorded them)."""
    update = {"dense_mask": None, "pruned_mask": None}
    tasks = [
        t.model_copy(update={"segmentation_examples": [e.model_copy(update=update) for e in t.segmentation_examples]})
        for t in report.tasks
    ]
    return report.model_copy(update={"tasks": tasks})


def with_masks(report, dense: np.ndarray, pruned: np.ndarray):
    """(the report with masks on its worst image only, as check records them, that task, that
    example): the first example of the task with the largest mIoU drop."""
    report = without_masks(report)
    task = max(report.tasks, key=lambda t: t.miou_drop)
    first = task.segmentation_examples[0].model_copy(
        update={"dense_mask": b64png(dense), "pruned_mask": b64png(pruned)}
    )
    tasks = [
        t.model_copy(update={"segmentation_examples": [first, *t.segmentation_examples[1:]]}) if t is task else t
        for t in report.tasks
    ]
    return report.model_copy(update={"tasks": tasks}), task, first


def truth_mask(folder, index: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(sorted((folder / "voc" / "masks").iterdir())[index]))


def test_segmentation_tasks_show_miou_columns(segmentation_report) -> None:
    report, _ = segmentation_report
    doc = parse(html.render(report))
    header = [th.text_content() for th in doc.xpath("//section[@id='tasks']//table[contains(@class, 'tasks')]//th")]
    assert header == ["task", "n", "dense mIoU", "pruned mIoU", "mIoU drop", "pixel agreement", "worst class (IoU)"]
    rows = doc.xpath("//section[@id='tasks']//table[contains(@class, 'tasks')]//tbody/tr")
    assert [r.xpath("string(td[1])") for r in rows] == [t.name for t in report.tasks]
    clean = report.tasks[0]
    cells = [td.text_content() for td in rows[0].xpath("td")]
    assert cells[2] == "100.00%[100.00%, 100.00%]"
    assert cells[3].startswith(f"{100 * clean.pruned.miou:.2f}%[")
    low, high = clean.intervals["miou_drop"].low, clean.intervals["miou_drop"].high
    assert cells[4] == f"{100 * clean.miou_drop:+.2f}pp[{100 * low:+.2f}pp, {100 * high:+.2f}pp]"
    assert cells[5].startswith(f"{100 * clean.pixel_agreement:.2f}%")
    assert cells[6] == "2 +100.0pp"  # class 2 is the one the pruned pair lost
    table = doc.xpath("string(//section[@id='tasks'])")
    assert "n/a" not in table and "softmax" not in table and "dense acc" not in table


def test_segmentation_figures_include_per_class_iou(segmentation_report) -> None:
    from prunegate.report.render import plots

    report, _ = segmentation_report
    doc = parse(html.render(report))
    figures = doc.xpath("//section[@id='figures']//figure")
    assert [f.get("id") for f in figures] == ["miou-vs-severity", "class-iou-drop"]
    assert all(f.xpath("string(.//img/@src)").startswith("data:image/svg+xml;base64,") for f in figures)
    worst = plots.worst_task(report)
    assert worst is not None and worst.miou_drop == max(t.miou_drop for t in report.tasks)
    assert [c for c, _ in plots._iou_drops(worst)] == [0, 1, 2]
    assert plots._iou_drops(worst)[2][1] == 1.0
    # classes in neither truth nor prediction (None for both models) are left out; a class one model
    # alone never meets counts as IoU 0 there
    from prunegate.report.schema import ClassIoU

    odd = worst.model_copy(update={"class_iou": ClassIoU(dense=[0.9, None, None, 0.5], pruned=[0.6, None, 0.0, 0.5])})
    assert plots._iou_drops(odd) == [(0, pytest.approx(0.3)), (2, 0.0), (3, 0.0)]
    # class names come from the data record when it has them
    data = [d.model_copy(update={"classes": ["sky", "road", "car"]}) for d in report.data]
    named = report.model_copy(update={"data": data})
    assert plots.class_iou_drop(named).uri != plots.class_iou_drop(report).uri
    from conftest import _sample_report

    assert plots.class_iou_drop(_sample_report(failing=True)) is None


def test_segmentation_example_without_masks_shows_numbers(segmentation_report) -> None:
    report = without_masks(segmentation_report[0])
    doc = parse(html.render(report))
    [section] = doc.xpath("//section[@id='gallery-section']")
    text = section.text_content()
    assert not section.xpath(".//img") and "records no predicted masks" in text
    task = max(report.tasks, key=lambda t: t.miou_drop)
    worst = task.segmentation_examples[0]
    assert f"{task.name}, test #{worst.index}" in text
    assert f"{100 * worst.drop:+.2f}pp" in text and f"{100 * worst.pruned_miou:.2f}%" in text
    others = section.xpath(".//table[@class='segmentation-examples']//tbody/tr")
    assert len(others) == sum(len(t.segmentation_examples) for t in report.tasks) - 1


def test_segmentation_panel_shows_four_overlays(segmentation_report) -> None:
    from prunegate.report.gallery import build_gallery

    report, folder = segmentation_report
    report, task, worst = with_masks(report, *_predictions(truth_mask(folder, 4)))
    assert worst.index == 4
    gallery = build_gallery(report)
    assert gallery.notes == [] and list(gallery.panels) == [(task.name, 4, 0)]
    page = html.render(report, gallery=gallery)
    doc = parse(page)
    [panel] = doc.xpath("//div[contains(@class, 'segmentation-panel')]")
    sources = panel.xpath(".//img/@src")
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    captions = [c.text_content() for c in panel.xpath(".//figcaption")]
    dense, pruned = f"{100 * worst.dense_miou:.2f}%", f"{100 * worst.pruned_miou:.2f}%"
    assert captions == ["input as shifted", "ground truth", f"dense: mIoU {dense}", f"pruned: mIoU {pruned}"]
    assert [s.text_content() for s in doc.xpath("//p[@class='legend']/span")] == ["0", "1", "2"]
    assert gallery.names == {("test", 4): "images/img04.png"}  # named by its file, relative to the data set
    assert f"{task.name}, images/img04.png" in doc.xpath("string(//section[@id='gallery-section'])")
    for element in doc.iter():  # still self-contained
        for name in ("src", "href"):
            assert element.get(name) is None or element.get(name).startswith(("data:", "#"))
    assert html.render(report, gallery=gallery) == page


def test_the_masks_check_records_draw_the_panel(segmentation_report) -> None:
    from prunegate.report.gallery import build_gallery

    report, _ = segmentation_report
    if not any(e.dense_mask for t in report.tasks for e in t.segmentation_examples):
        pytest.skip("this check records no predicted masks yet")
    gallery = build_gallery(report)
    assert gallery.notes == [] and len(gallery.panels) == 1
    doc = parse(html.render(report, gallery=gallery))
    assert len(doc.xpath("//div[contains(@class, 'segmentation-panel')]//img")) == 4


def test_segmentation_panel_degrades_to_numbers(segmentation_report, tmp_path) -> None:
    from prunegate.report.gallery import build_gallery

    report, folder = segmentation_report
    report, _, _ = with_masks(report, *_predictions(truth_mask(folder, 4)))
    # no gallery made for the page
    text = parse(html.render(report)).xpath("string(//section[@id='gallery-section'])")
    assert "images not rebuilt" in text and "+75.00pp" in text
    # the data is not where the report's policy says
    moved = report.model_copy(
        update={"policy": report.policy.model_copy(update={"path": str(tmp_path / "policy.yaml")})}
    )
    gallery = build_gallery(moved)
    assert gallery.panels == {} and "not readable here" in gallery.note
    [section] = parse(html.render(moved, gallery=gallery)).xpath("//section[@id='gallery-section']")
    assert not section.xpath(".//img") and "not readable here" in section.text_content()


def test_segmentation_groups_many_tasks(segmentation_report) -> None:
    report, _ = segmentation_report
    tasks = [t.model_copy(update={"name": f"copy{i}-{t.name}"}) for i in range(7) for t in report.tasks]
    doc = parse(html.render(report.model_copy(update={"tasks": tasks})))
    [groups] = doc.xpath("//table[@class='groups']")
    assert [th.text_content() for th in groups.xpath(".//th")][2:] == [
        "dense mIoU",
        "pruned mIoU",
        "mIoU drop",
        "pixel agreement",
    ]
    rows = groups.xpath(".//tbody/tr")
    assert [r.xpath("string(td[1])") for r in rows] == ["clean (mean of 7)", "contrast (mean of 7)"]
    assert rows[0].xpath("string(td[3])") == "100.00%"


def _predictions(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense, pruned) predicted masks for a ground truth: dense right (void as class 0), pruned
    without class 2 (as the pruned pair)."""
    dense = np.where(truth == 255, 0, truth)
    return dense, np.where(dense == 2, 1, dense)


# --- beyond top-1 (issue 19) --------------------------------------------------------------------


def test_calibration_section_reliability_diagram_and_asked_columns(sample_report) -> None:
    report = sample_report(failing=True, beyond=True)
    doc = parse(html.render(report))
    sections = [s.get("id") for s in doc.xpath("//main/section")]
    assert sections.index("calibration") == sections.index("tasks") - 1
    [figure] = doc.xpath("//section[@id='calibration']//figure[@id='reliability-diagram']")
    [src] = figure.xpath(".//img/@src")
    assert src.startswith("data:image/svg+xml;base64,")
    texts = " ".join(_texts(src))
    assert "dense (ECE 3.00%)" in texts and "pruned (ECE 4.25%)" in texts and "calibrated" in texts
    rows = doc.xpath("//section[@id='calibration']//table[@class='calibration']//tbody/tr")
    table = {r.xpath("string(td[1])"): [r.xpath(f"string(td[{i}])") for i in range(2, 7)] for r in rows}
    assert list(table) == [
        "top-5 accuracy",
        "expected calibration error (ECE)",
        "negative log-likelihood (NLL)",
        "Brier score",
        "KL divergence, dense ‖ pruned",
        "probability loyalty (1 - Jensen-Shannon distance)",
        "selective risk at 80% coverage",
        "selective risk at 90% coverage",
    ]
    assert table["expected calibration error (ECE)"] == [
        "3.00%",
        "4.25%",
        "ece_increase",
        "+1.25pp",
        "[+0.25, +2.25]pp",
    ]
    assert table["negative log-likelihood (NLL)"][3] == "+0.040 nats"
    assert table["selective risk at 90% coverage"][2:4] == ["selective_risk_increase@0.9", "+0.35pp"]
    groups = doc.xpath("//table[@class='groups-accuracy']//tbody/tr")
    assert [g.xpath("string(td[1])") for g in groups] == ["warm", "cool (worst)"]
    header = [th.text_content() for th in doc.xpath("//table[contains(@class, 'tasks')]//thead//th")]
    assert header[6:10] == ["ECE +", "top-5 drop", "sel. risk +@0.9", "worst group"]
    [clean] = doc.xpath("//table[contains(@class, 'tasks')]//tbody/tr[1]")
    assert clean.xpath("string(td[7])") == "+1.25pp[+0.25, +2.25]pp"  # value, its interval under it
    rules = {r.xpath("string(td[2])"): r.xpath("string(td[3])") for r in doc.xpath("//section[@id='rules']//tbody/tr")}
    assert rules["selective risk"] == "selective_risk_increase@0.9"


def test_no_calibration_without_its_fields(sample_report, segmentation_report) -> None:
    """An older report (no calibration fields) and a segmentation report render as before: no
    calibration section, no reliability diagram, no asked columns where no rule asks."""
    old = sample_report(failing=True)
    seg, _ = segmentation_report
    for report in (old, seg):
        doc = parse(html.render(report))
        assert not doc.xpath("//section[@id='calibration']") and not doc.xpath("//*[@id='reliability-diagram']")
        assert not doc.xpath("//th[contains(@class, 'asked')]")
    # rules on the new metrics over an older report's tasks: the columns say n/a, the page renders
    asked = sample_report(failing=True, beyond=True).rules[3:]
    doc = parse(html.render(old.model_copy(update={"rules": [*old.rules, *asked]})))
    assert not doc.xpath("//section[@id='calibration']")
    assert {td.text_content() for td in doc.xpath("//td[contains(@class, 'asked')]")} == {"n/a"}
