"""The renderers on a report from a real run: akamaster ResNet-20 against a 70 %-pruned copy on
300 class-balanced images of the real CIFAR-10 test set, with input noise and three generated
corruptions. `check` writes the HTML, Markdown and JUnit files; the gallery is rebuilt from the
real JPEGs; the page is loaded in chromium when it is installed.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from lxml import etree
from lxml import html as lxml_html
from markdown_it import MarkdownIt
from PIL import Image

from prunegate.cli import main
from prunegate.context import RunContext, task_pixels
from prunegate.data import fit_to_size, open_source, select
from prunegate.policy import load_policy
from prunegate.prune import global_magnitude_prune
from prunegate.report.attest import read_envelope
from prunegate.report.gallery import build_gallery, select_cards
from prunegate.report.render import html, junit, markdown
from prunegate.report.schema import Example, Report

from .conftest import resnet20_dense, shared_path

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
XSD = Path(__file__).resolve().parents[1] / "data" / "junit.xsd"
GALLERY_TASKS = ("corruption/fog/5", "noise/uniform/0.3")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = shared_path("data", "cifar10-test-jpeg")
    dense = resnet20_dense()
    pruned = global_magnitude_prune(dense, 0.7)
    folder = tmp_path_factory.mktemp("renderers")
    example = torch.zeros(2, 3, 32, 32)
    for name, model in (("dense", dense), ("pruned", pruned)):
        torch.jit.save(torch.jit.trace(model, example), folder / f"{name}.pt")
    policy = folder / "policy.yaml"
    policy.write_text(f"""
version: 1
name: resnet20-cifar10-renderers
models:
  dense: dense.pt
  pruned: pruned.pt
  input: {{size: 32, mean: {MEAN}, std: {STD}}}
data:
  test: {{format: imagefolder, path: {data}}}
  limit: 300
suite:
  seed: 0
  noise:
    - {{kind: uniform, levels: [0.1, 0.3]}}
  corruptions: {{preset: cifar10-c, names: [gaussian_noise, fog, contrast], severities: [1, 3, 5]}}
gate:
  rules:
    - {{name: clean accuracy, tasks: clean, metric: accuracy_drop, max: 0.02}}
    - {{name: noise agreement, tasks: "noise/*", metric: agreement, aggregate: min, min: 0.9}}
    - {{name: corruption drop, tasks: "corruption/*", metric: accuracy_drop, aggregate: mean, max: 0.5}}
runtime: {{batch_size: 300, workers: 0, device: cpu}}
""")
    out = {k: folder / f"report.{k}" for k in ("json", "html", "md", "xml")}
    code = main(
        [
            "check",
            "-p",
            str(policy),
            "-o",
            str(out["json"]),
            "--html",
            str(out["html"]),
            "--markdown",
            str(out["md"]),
            "--junit",
            str(out["xml"]),
            "--quiet",
        ]
    )
    assert code in (0, 1)
    _, _, statement = read_envelope(out["json"].read_text(), "report")
    report = Report.model_validate(statement["predicate"])
    return {"report": report, "out": out, "policy": policy, "dense": dense, "pruned": pruned, "code": code}


def test_check_wrote_consistent_renderings(run) -> None:
    report, out = run["report"], run["out"]
    assert len(report.tasks) == 1 + 2 + 9 and all(t.n == 300 for t in report.tasks)
    assert run["code"] == (0 if report.verdict == "pass" else 1)
    failed = [r.name for r in report.failed_rules()]
    assert "noise agreement" in failed  # 70 % pruning without fine-tuning: agreement under noise suffers

    root = etree.parse(str(out["xml"])).getroot()
    etree.XMLSchema(etree.parse(str(XSD))).assertValid(root)
    assert int(root.get("failures")) == len(failed) == len(root.findall(".//failure"))

    text = out["md"].read_text()
    assert text == markdown.render(report)
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    assert rendered.count("<table>") == 2
    first_rows = re.findall(r"<tr>\s*<td[^>]*>(.*?)</td>\s*<td[^>]*>(.*?)</td>", rendered.split("</table>")[0])
    assert [name for _, name in first_rows][: len(failed)] == failed

    page = lxml_html.document_fromstring(out["html"].read_text())
    assert page.xpath("//header/@data-verdict") == [report.verdict]
    assert [a.get("data-rule") for a in page.xpath("//section[@id='failed-rules']//article")] == failed
    assert [f.get("id") for f in page.xpath("//figure")] == ["accuracy-vs-severity", "agreement-vs-noise"] + (
        ["class-recall-drop"] if any(t.class_recall for t in report.tasks) else []
    ) + ["reliability-diagram"]  # in the calibration section, of the clean task
    rows = page.xpath("//table[contains(@class, 'tasks')]//tbody/tr")
    assert [r.xpath("string(td[1])") for r in rows] == [t.name for t in report.tasks]


def _real_examples(run, task_name: str, limit: int = 4) -> list[Example]:
    """Samples of `task_name` the dense model gets right and the pruned one wrong, found by running
    both models on the gallery's own rebuild of the task's inputs (first 100 selected images)."""
    policy = load_policy(run["policy"])
    ctx = RunContext.build(policy, sources=())
    task = ctx.task(task_name)
    images = open_source(policy.data.test, policy.resolve, "data.test")
    indices = select(images.labels, policy.data.limit)[:100].tolist()
    pictures, _ = images.read(indices, policy.data.max_pixels)
    x = torch.stack([fit_to_size(p.permute(2, 0, 1), 32) for p in pictures]).float() / 255
    with torch.inference_mode():
        inputs = task_pixels(ctx, task, x, torch.tensor(indices), 0).model_input(ctx.pre)
        dense, pruned = run["dense"](inputs).argmax(1), run["pruned"](inputs).argmax(1)
    labels = torch.from_numpy(images.labels[indices])
    chosen = ((dense == labels) & (pruned != labels)).nonzero().flatten()[:limit].tolist()
    return [Example(index=indices[i], label=int(labels[i]), dense=int(dense[i]), pruned=int(pruned[i])) for i in chosen]


def test_gallery_from_the_real_images(run) -> None:
    report = run["report"]
    if not any(t.examples for t in report.tasks):  # until the engine records examples itself
        tasks = [
            t.model_copy(update={"examples": _real_examples(run, t.name)}) if t.name in GALLERY_TASKS else t
            for t in report.tasks
        ]
        report = report.model_copy(update={"tasks": tasks})
    gallery = build_gallery(report)
    assert gallery.notes == []
    shown = [card.shown for card in select_cards(report)]  # one card per image, the first task that broke it
    keys = [(t.name, e.index, e.draw) for t, e in shown]
    assert keys and set(keys) <= set(gallery.images)
    root = shared_path("data", "cifar10-test-jpeg")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = []
    for task, example in shown:
        image = np.asarray(Image.open(io.BytesIO(gallery.images[(task.name, example.index, example.draw)])))
        assert image.shape == (32, 32, 3)
        # the image file the report's index names
        file = sorted((root / classes[example.label]).glob("*.jpg"))[example.index - 1000 * example.label]
        files.append(file.relative_to(root).as_posix())
        if task.kind in ("noise", "corruption") and (task.source, example.index) in gallery.originals:
            clean = np.asarray(Image.open(io.BytesIO(gallery.originals[(task.source, example.index)])))
            reference = np.asarray(Image.open(file).convert("RGB"))  # decoded by PIL: the same picture
            assert np.abs(clean.astype(int) - reference.astype(int)).mean() < 1.0
            assert np.abs(image.astype(int) - clean.astype(int)).mean() > 1.0  # the shift shows
    page = html.render(report, gallery=gallery)
    doc = lxml_html.document_fromstring(page)
    cards = doc.xpath("//section[@id='gallery-section']//div[@class='example']")
    assert [c.get("data-sample") for c in cards] == files  # captioned by the file, relative to the data root
    assert all(src.startswith("data:image/png;base64,") for src in doc.xpath("//div[@class='example']//img/@src"))
    names = {report.data[0].classes[e.label] for _, e in shown}
    assert all(name in doc.xpath("string(//section[@id='gallery-section'])") for name in names)
    _load_in_browser(page)
    assert junit.render(report)  # the optional fields do not disturb the other renderers
    assert markdown.render(report)


def _load_in_browser(page: str) -> None:
    """No failed request and no error in chromium, when it is installed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_render_html_browser import DevTools, find_browser

    binary = find_browser()
    if binary is None:
        return
    folder = Path(tempfile.mkdtemp(prefix="prunegate-real-"))
    try:
        (folder / "page.html").write_text(page, encoding="utf-8")
        tools = DevTools(binary, folder / "profile")
        try:
            session = tools.open_offline(folder / "page.html")
            count_broken = "[...document.images].filter(i => !i.naturalWidth).length"
            broken = tools.call(
                "Runtime.evaluate", {"expression": count_broken, "returnByValue": True}, session=session
            )["result"]["value"]
        finally:
            tools.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert broken == 0
    events = tools.events
    assert not [e for e in events if e.get("method") in ("Network.loadingFailed", "Runtime.exceptionThrown")]
    assert not [e for e in events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert all(url.startswith(("file:", "data:")) for url in urls)
