"""Every output format renders the same report to a string (the pip-audit exhaustiveness check)."""

from __future__ import annotations

import base64
import json
import pkgutil
from pathlib import Path

import pytest

import prunegate.report.render as render_package
from prunegate.cli import main
from prunegate.report.render import FORMATS, RENDERERS, Format, Renderer, RenderOptions, renderer
from prunegate.report.schema import Report


def test_every_renderer_module_is_a_listed_format() -> None:
    modules = {m.name for m in pkgutil.iter_modules(render_package.__path__) if not m.name.startswith("_")}
    assert modules - {"common", "interface", "plots"} == set(FORMATS)


def test_every_format_has_a_renderer() -> None:
    assert set(RENDERERS) == set(Format) and FORMATS == tuple(f.value for f in Format)
    for fmt in Format:
        found = renderer(fmt.value)
        assert isinstance(found, Renderer) and found.name is fmt
        assert type(renderer(fmt)) is type(found)  # the enum member is a name as well


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_renders_a_string(sample_report, name) -> None:
    text = renderer(name).format(sample_report(corruptions=()), RenderOptions())
    assert isinstance(text, str) and "sample" in text and "noise agreement" in text


@pytest.mark.parametrize("name", FORMATS)
def test_the_interface_renders_as_the_module_does(sample_report, name) -> None:
    import importlib

    report = sample_report()
    module = importlib.import_module(f"prunegate.report.render.{name}")
    options = RenderOptions(color=True, width=150, signature="signed by key 0123456789abcdef")
    expected = {
        "console": lambda: module.render(report, color=True, width=150),
        "html": lambda: module.render(report, signature="signed by key 0123456789abcdef"),
    }
    assert renderer(name).format(report, options) == expected.get(name, lambda: module.render(report))()


def test_verdict_only_is_the_verdict_line(sample_report) -> None:
    text = renderer("console").format(sample_report(failing=True), RenderOptions(verdict_only=True, width=20))
    assert text.count("\n") == 1 and text.startswith("FAIL: ") and "rules failed" in text  # one line, however narrow


def test_each_format_renders_the_report_of_a_real_check(tmp_path: Path, gate_case, capsys) -> None:
    rules = [
        {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01},
        {"name": "noise agreement", "tasks": "noise/*", "metric": "agreement", "min": 0.5},
    ]
    policy = gate_case("same", rules=rules, suite={"noise": [{"kind": "gaussian", "levels": [0.1]}]})
    path = tmp_path / "report.json"
    assert main(["check", "-p", str(policy), "-o", str(path), "--quiet"]) == 0, capsys.readouterr().err
    report = Report.model_validate(json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))["predicate"])
    for name in FORMATS:
        text = renderer(name).format(report, RenderOptions())
        assert isinstance(text, str) and "tiny" in text and "noise agreement" in text, name


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown report format 'pdf'; known: console, html, markdown, junit"):
        renderer("pdf")


SANITY_CASES = {
    "checked": (
        {
            "checked": True,
            "task": "clean",
            "n": 1000,
            "dense_correct": 912,
            "dense_accuracy": 0.912,
            "chance": 0.1,
            "p_value": 0.0,
            "upper_bound": 0.93,
            "expected_accuracy": 0.91,
            "tolerance": 0.2,
        },
        "the dense model scored 91.20% on clean (1,000 images), above chance (10.00%, p < 1e-300); "
        "expected at least 91.00% less 20.00pp",
    ),
    "small p": (
        {
            "checked": True,
            "task": "clean",
            "n": 12,
            "dense_correct": 12,
            "dense_accuracy": 1.0,
            "chance": 1 / 3,
            "p_value": 3.0**-12,
        },
        "scored 100.00% on clean (12 images), above chance (33.33%, p = 1.9e-06)",
    ),
    "skipped": ({"checked": False, "reason": "--no-sanity-check"}, "sanity check not run: --no-sanity-check"),
}


def _as_read(name: str, text: str) -> str:
    """The text a reader sees: Markdown's backslash escapes and HTML's entities undone."""
    import html
    import re

    return {"markdown": lambda: re.sub(r"\\(.)", r"\1", text), "html": lambda: html.unescape(text)}.get(
        name, lambda: text
    )()


@pytest.mark.parametrize("case", SANITY_CASES)
@pytest.mark.parametrize("name", ["console", "markdown", "html"])
def test_the_sanity_check_is_shown_by_every_reader_format(sample_report, name, case) -> None:
    """What the check saw (or why it did not run) is in the console, Markdown and HTML; an older
    report without the record shows no such line."""
    from prunegate.report.schema import SanityRecord

    record, expected = SANITY_CASES[case]
    base = sample_report(corruptions=())
    text = renderer(name).format(base.model_copy(update={"sanity": SanityRecord(**record)}), RenderOptions(width=300))
    assert expected in _as_read(name, text).lower()
    assert "sanity" not in renderer(name).format(base, RenderOptions(width=300)).lower()
