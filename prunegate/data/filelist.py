"""Format `filelist`: a CSV (`.csv`, comma) or TSV (`.tsv`, tab) file with a header row, one image
a row: its path, relative to the list file's folder, and its label (an integer, or with
`class_names` a class name).

The list is data, not configuration: its text may only name images inside its own folder. An
absolute path or a `..` component is refused, so that a list cannot make prunegate read files the
user did not point at. Symbolic links are the folder's, not the list's: they are followed as the
image folders follow them, and a broken one is an error, as there.

Images decode as the image folders' do (`imagefolder.ImageFiles`), with the same per-image
sha256, so a list naming a folder's images in the folder's order has the folder's data digest;
the list file's own sha256 (its paths and labels) is recorded beside it (`list_sha256`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path, PurePosixPath

import numpy as np

from prunegate.data_layout import LIST_DELIMITERS
from prunegate.errors import DataError, missing_reason
from prunegate.policy import LABEL_COLUMN, PATH_COLUMN

from .base import require_path
from .imagefolder import ImageFiles
from .labels import BadLabel, class_index, label_of_text

_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # C:\images\a.jpg, a list made on Windows


class FileList(ImageFiles):
    format = "filelist"

    def __init__(
        self,
        path: Path,
        field: str,
        class_names: list[str] | None = None,
        path_column: str = PATH_COLUMN,
        label_column: str = LABEL_COLUMN,
    ):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=False)
        delimiter = LIST_DELIMITERS.get(path.suffix.lower())
        if delimiter is None:
            raise self.error(f"a file list is a .csv (comma) or .tsv (tab) file, not {path.suffix or 'no suffix'!r}")
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
        except OSError as exc:
            raise self.error(f"cannot read the file list ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise self.error(f"the file list is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        self.list_sha256 = hashlib.sha256(raw).hexdigest()
        self.classes = class_names
        self.root = path.parent
        self._rows = self._parse(text, delimiter, path_column, label_column)
        if not self._rows:
            raise self.error("the file list has a header but no rows")
        self.files = [self.root / relative for _, relative, _ in self._rows]
        self.labels = np.asarray([label for _, _, label in self._rows], dtype=np.int64)

    def _parse(self, text: str, delimiter: str, path_column: str, label_column: str) -> list[tuple[int, str, int]]:
        """(line, relative path, label) of every row, each checked; a blank line is no row."""
        try:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
            header = next(reader, None)
            if not header:
                raise self.error(f"the file list is empty: expected a header with {path_column!r} and {label_column!r}")
            path_at = self._column(header, path_column, "path_column")
            label_at = self._column(header, label_column, "label_column")
            index = class_index(self.classes)
            rows: list[tuple[int, str, int]] = []
            first_line: dict[str, int] = {}
            for cells in reader:
                if not cells:
                    continue
                line = reader.line_num
                if len(cells) != len(header):
                    raise self.row_error(line, f"{len(cells)} fields, the header has {len(header)}")
                relative = self._checked_path(line, cells[path_at], path_column)
                same = PurePosixPath(relative).as_posix()  # ./a.jpg and a.jpg are one image
                if same in first_line:
                    raise self.row_error(line, f"image {relative!r} is also listed on line {first_line[same]}")
                first_line[same] = line
                rows.append((line, relative, self._label(line, cells[label_at], label_column, index)))
        except csv.Error as exc:
            kind = "CSV" if delimiter == "," else "TSV"
            raise self.row_error(reader.line_num, f"not valid {kind} ({exc})") from None
        return rows

    def _column(self, header: list[str], name: str, option: str) -> int:
        if header.count(name) != 1:
            found = "twice" if header.count(name) > 1 else f"not in the header {header}"
            raise self.error(f"column {name!r} ({self.field}.{option}) is {found}: the first row names the columns")
        return header.index(name)

    def row_error(self, line: int, message: str) -> DataError:
        return self.error(f"line {line}: {message}")

    def _checked_path(self, line: int, value: str, column: str) -> str:
        """The row's path, refused unless it names a file inside the list's folder."""
        if not value:
            raise self.row_error(line, f"empty {column!r}")
        relative = PurePosixPath(value)
        if relative.is_absolute() or _WINDOWS_DRIVE.match(value):
            raise self.row_error(line, f"path {value!r} is absolute: paths are relative to the list's folder")
        if ".." in relative.parts:
            raise self.row_error(line, f"path {value!r} has a '..': a list may only name images in its folder")
        file = self.root / relative
        if not file.is_file():  # a broken link, or a folder above that is one, says so
            raise self.row_error(line, f"image {value!r} {'is not a file' if file.exists() else missing_reason(file)}")
        return value

    def _label(self, line: int, value: str, column: str, index: dict[str, int]) -> int:
        try:
            return label_of_text(value, repr(column), self.classes, index)
        except BadLabel as exc:
            raise self.row_error(line, str(exc)) from None

    def describe(self) -> dict:
        return {**super().describe(), "list_sha256": self.list_sha256}

    def tracked_files(self) -> list[Path]:
        """The list and its images."""
        return [self.path, *self.files]

    def sample_name(self, index: int) -> str:
        """The image's path as the list writes it."""
        return self._rows[index][1]
