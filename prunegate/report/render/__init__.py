"""Renderers: one module per output format, each a `Renderer` (see `interface`) returning a string.

Renderers return strings; only the CLI writes files. `Format` names them all, `renderer(name)`
looks one up (a test checks every format has a renderer and each renders the same report).
"""

from __future__ import annotations

import importlib

from prunegate.report.render.interface import Format, Renderer, RenderOptions

__all__ = ["FORMATS", "RENDERERS", "Format", "RenderOptions", "Renderer", "renderer"]

FORMATS = tuple(f.value for f in Format)

# Format -> the Renderer class in the module of the same name (imported when first asked for: the
# HTML renderer brings Jinja2, matplotlib and the gallery's data loading with it).
RENDERERS: dict[Format, str] = {
    Format.console: "ConsoleRenderer",
    Format.html: "HtmlRenderer",
    Format.markdown: "MarkdownRenderer",
    Format.junit: "JunitRenderer",
}


def renderer(name: str) -> Renderer:
    """The renderer of format `name` (one of FORMATS); ValueError naming the known ones otherwise."""
    try:
        chosen = Format(name)
    except ValueError:
        raise ValueError(f"unknown report format {name!r}; known: {', '.join(FORMATS)}") from None
    module = importlib.import_module(f"{__name__}.{chosen.value}")
    cls: type[Renderer] = getattr(module, RENDERERS[chosen])
    return cls()
