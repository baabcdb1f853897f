"""The one interface every output format implements (as pip-audit's output formats do).

A renderer turns a Report into a string; it never touches files. `RenderOptions` carries what
some formats use and the others ignore: the console's colour, width and detail, the HTML page's gallery
and signature line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from prunegate.report.gallery import Gallery
    from prunegate.report.schema import Report

__all__ = ["Format", "RenderOptions", "Renderer"]


class Format(str, Enum):
    """The output formats, by the name the CLI and `renderer(name)` use."""

    console = "console"
    html = "html"
    markdown = "markdown"
    junit = "junit"


@dataclass(frozen=True)
class RenderOptions:
    """How to render: each format reads the options it has a use for and ignores the rest."""

    color: bool = False  # console: ANSI styles
    width: int = 110  # console: columns
    verdict_only: bool = False  # console: only the verdict line (`check --quiet`)
    verbose: bool = False  # console: every task's row, not one per corruption and noise kind
    before_verdict: tuple[str, ...] = ()  # console: plain lines (the files written) just above the verdict
    gallery: Gallery | None = None  # html: thumbnails from `build_gallery` (None: indices only)
    signature: str | None = None  # html: a line about the envelope's signature, which the predicate cannot know


class Renderer(ABC):
    """One output format: `format(report, options)` returns the whole rendering as a string."""

    name: Format

    @abstractmethod
    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> str:
        """The report in this format."""
