"""Console tables that fit a width: columns are dropped, least important first, until the table
fits; what is left is never cut with an ellipsis.

Each column says how dispensable it is (0: always kept; higher numbers are left out first) and
whether its text may wrap (names: they fold onto a second line only when even the kept columns do
not fit, e.g. below 80 columns; numbers never wrap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rich.table import Table
from rich.text import Text

__all__ = ["Column", "fitted_table", "table_width"]

BORDER = 3  # per column: the rule on its left and one space of padding either side


@dataclass(frozen=True)
class Column:
    """A table column: its header, its cells (console markup, one a row) and how to lay it out."""

    header: str
    cells: list[str]
    dispensable: float = 0  # 0: always shown; when the table is too wide, the highest numbers go first
    justify: Literal["left", "right"] = "right"
    wrap: bool = False  # may fold its text (names) when the kept columns still do not fit

    def width(self) -> int:
        """The columns of the terminal its widest cell (or header) takes."""
        return max(Text.from_markup(text).cell_len for text in [self.header, *self.cells])


def table_width(columns: list[Column]) -> int:
    """The width of a table of these columns, each at its natural width, with its borders."""
    return sum(c.width() + BORDER for c in columns) + 1


def fit(columns: list[Column], width: int) -> list[Column]:
    """The columns a table `width` wide shows: the dispensable ones left out, the most dispensable first,
    until the table fits (or only the indispensable ones are left)."""
    kept = list(columns)
    for level in sorted({c.dispensable for c in columns if c.dispensable}, reverse=True):
        if table_width(kept) <= width:
            break
        kept = [c for c in kept if c.dispensable != level]
    return kept


def fitted_table(title: str, columns: list[Column], width: int) -> Table:
    """A rich table of the columns that fit in `width`, its rows read across the columns' cells."""
    kept = fit(columns, width)
    table = Table(title=title, title_justify="left")
    for column in kept:
        table.add_column(column.header, justify=column.justify, no_wrap=not column.wrap, overflow="fold")
    for row in zip(*(c.cells for c in kept), strict=True):
        table.add_row(*row)
    return table
