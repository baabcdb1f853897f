"""Renderers: one module per output format, each with `render(report, ...) -> str`.

Renderers return strings; only the CLI writes files. `FORMATS` lists them all (a test checks
every one renders the same report).
"""

from __future__ import annotations

import importlib
from types import ModuleType

FORMATS = ("console", "html", "markdown", "junit")


def renderer(name: str) -> ModuleType:
    """The module that renders format `name` (one of FORMATS)."""
    if name not in FORMATS:
        raise ValueError(f"unknown report format {name!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{name}")
