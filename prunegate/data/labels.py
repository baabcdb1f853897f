"""Labels that a data set writes itself (a file list's column, a webdataset's `.cls` member, a
Parquet column): a non-negative integer class index, or with `class_names` a class name.

The readers say where a label was (a line, a member, a row); these say what is wrong with it.
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"[0-9]+")
LARGEST_LABEL = 2**31 - 1


class BadLabel(ValueError):
    """Why a label was refused; the reader adds where it was."""


def class_index(class_names: list[str] | None) -> dict[str, int]:
    """Each class name's label (its line in the class_names file, from 0)."""
    return {name: i for i, name in enumerate(class_names or [])}


def label_of_text(value: str, what: str, class_names: list[str] | None, index: dict[str, int]) -> int:
    """The label `value` writes: with class names, the index of the name; else an integer.
    `what` names the value in messages (`'label'`, the column's name)."""
    if class_names is not None:
        if value not in index:
            raise BadLabel(f"class {value!r} is not in the class_names file ({len(class_names)} names)")
        return index[value]
    if not _INTEGER.fullmatch(value):
        raise BadLabel(
            f"{what} {value!r} is not a non-negative integer label "
            "(for class names, give the policy's class_names file)"
        )
    return label_of_number(int(value), what, value)


def label_of_number(number: int, what: str, written: object = None) -> int:
    """An integer label, refused when negative or too large for a class index (`written`: how
    the data set wrote it, for messages; the number itself where None)."""
    shown = number if written is None else written
    if number < 0:
        raise BadLabel(f"{what} {shown!r} is not a non-negative integer label")
    if number > LARGEST_LABEL:
        raise BadLabel(f"{what} {shown!r} is too large for a class index")
    return number
