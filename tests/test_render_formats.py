"""Every output format renders the same report to a string (the pip-audit exhaustiveness check)."""

from __future__ import annotations

import pkgutil

import pytest

import prunegate.report.render as render_package
from prunegate.report.render import FORMATS, renderer


def test_every_renderer_module_is_a_listed_format() -> None:
    modules = {m.name for m in pkgutil.iter_modules(render_package.__path__) if not m.name.startswith("_")}
    assert modules - {"common", "plots"} == set(FORMATS)


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_renders_a_string(sample_report, name) -> None:
    text = renderer(name).render(sample_report(corruptions=()))
    assert isinstance(text, str) and "sample" in text and "noise agreement" in text


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        renderer("pdf")
