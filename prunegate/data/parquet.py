"""Format `parquet`: one `.parquet` file, or a folder of them (read in name order), one image a
row: the image file's bytes (column `image`: binary, or a struct with a `bytes` field, as Hugging
Face datasets stores images) and its label (column `label`: integers; text with `class_names`,
looked up there, and integers are then indices into it). `image_column` and `label_column` name
other columns.

Read with pyarrow (the optional extra `prunegate[parquet]`), lazily: the labels column by
batches when the set is opened, the images by row group when they are read, keeping only the last
row group read (a Parquet file is read by row groups, the unit that random access costs), so
memory stays flat in the size of the file. Rows count from 0, as pyarrow and datasets count
them. Images decode as the folders' do, with the same per-image sha256; each file's sha256 is
recorded (`files_sha256`), which pins its labels and order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunegate.digest import file_sha256
from prunegate.errors import DataError
from prunegate.policy import IMAGE_COLUMN, LABEL_COLUMN

from .base import ImageSet, files_key, require_path
from .imagefolder import UndecodableImage, decode_image
from .labels import BadLabel, class_index, label_of_number, label_of_text

INSTALL = "pip install 'prunegate[parquet]'"
LABEL_BATCH = 65536  # label rows read at a time when the set is opened


def _pyarrow(path: Path, field: str) -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or a DataError saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"format parquet needs pyarrow: {INSTALL}", file=path, field=field) from None
    return pyarrow, pyarrow.parquet


class ParquetImages(ImageSet):
    format = "parquet"

    def __init__(
        self,
        path: Path,
        field: str,
        class_names: list[str] | None = None,
        image_column: str = IMAGE_COLUMN,
        label_column: str = LABEL_COLUMN,
    ):
        super().__init__(path, field)
        self._pa, self._pq = _pyarrow(path, field)
        self.files = self._parquet_files(path)
        self.classes = class_names
        self.image_column, self.label_column = image_column, label_column
        where: list[np.ndarray] = []  # (file, row group, row in group, row in file) of every row
        labels: list[np.ndarray] = []
        for number, file in enumerate(self.files):
            parquet = self._open(file)
            self._check_columns(file, parquet.schema_arrow)
            labels.append(self._labels(file, parquet))
            start = 0
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                block = np.zeros((rows, 4), dtype=np.int64)
                block[:, 0], block[:, 1], block[:, 2], block[:, 3] = (
                    number,
                    group,
                    np.arange(rows),
                    start + np.arange(rows),
                )
                where.append(block)
                start += rows
        self._where = np.concatenate(where) if where else np.zeros((0, 4), dtype=np.int64)
        self.labels = np.concatenate(labels)
        if not len(self.labels):
            raise self.error("no rows in the Parquet files")
        self.files_sha256 = {str(file): file_sha256(file) for file in self.files}
        self._cached: tuple[tuple[int, int], Any] | None = None  # the last row group's image column

    def _parquet_files(self, path: Path) -> list[Path]:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".parquet" and p.is_file())
            if not files:
                raise self.error("no .parquet files in the folder")
            return files
        require_path(path, self.field + ".path", directory=False)
        if path.suffix.lower() != ".parquet":
            raise self.error(
                f"a Parquet data set is a .parquet file or a folder of them, not {path.suffix or 'no suffix'!r}"
            )
        return [path]

    def _open(self, file: Path) -> Any:
        try:
            return self._pq.ParquetFile(file)
        except (self._pa.ArrowException, OSError, ValueError) as exc:
            raise self.error(
                f"not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else exc})", file
            ) from None

    def _check_columns(self, file: Path, schema: Any) -> None:
        """The image column holds bytes and the label column integers (or text, with class names)."""
        types = self._pa.types
        for name, option in ((self.image_column, "image_column"), (self.label_column, "label_column")):
            if schema.names.count(name) != 1:
                found = "twice" if schema.names.count(name) > 1 else f"not in the file's columns {schema.names}"
                raise self.error(f"column {name!r} ({self.field}.{option}) is {found}", file)
        image = schema.field(self.image_column).type
        if types.is_struct(image):
            inner = [image.field(i) for i in range(image.num_fields)]
            image = next((f.type for f in inner if f.name == "bytes"), None)
        if image is None or not (types.is_binary(image) or types.is_large_binary(image)):
            raise self.error(
                f"column {self.image_column!r} is {schema.field(self.image_column).type}: expected image file "
                "bytes (binary, or a struct with a 'bytes' field as Hugging Face datasets writes)",
                file,
            )
        label = schema.field(self.label_column).type
        if types.is_dictionary(label):
            label = label.value_type
        text = types.is_string(label) or types.is_large_string(label)
        if text and self.classes is None:
            raise self.error(
                f"column {self.label_column!r} holds text: give the policy's class_names file to look the names up",
                file,
            )
        if not text and not types.is_integer(label):
            raise self.error(
                f"column {self.label_column!r} is {label}: expected integer labels (or class names, with class_names)",
                file,
            )

    def _labels(self, file: Path, parquet: Any) -> np.ndarray:
        """The label column, read by batches and checked row by row."""
        index = class_index(self.classes)
        found: list[np.ndarray] = []
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=LABEL_BATCH, columns=[self.label_column]):
                column = batch.column(0)
                if column.null_count:
                    first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                    raise self.row_error(file, row + first, f"column {self.label_column!r} is empty (null)")
                values = column.to_pylist()
                numbers = np.zeros(len(values), dtype=np.int64)
                for at, value in enumerate(values):
                    numbers[at] = self._label(file, row + at, value, index)
                found.append(numbers)
                row += len(values)
        except (self._pa.ArrowException, OSError) as exc:
            raise self.error(f"cannot read column {self.label_column!r} ({str(exc).splitlines()[0]})", file) from None
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _label(self, file: Path, row: int, value: int | str, index: dict[str, int]) -> int:
        what = repr(self.label_column)
        try:
            if isinstance(value, str):
                return label_of_text(value, what, self.classes, index)
            label = label_of_number(value, what)
        except BadLabel as exc:
            raise self.row_error(file, row, str(exc)) from None
        if self.classes is not None and label >= len(self.classes):
            raise self.row_error(
                file,
                row,
                f"{what} {label} is past the class_names file's {len(self.classes)} names (0-{len(self.classes) - 1})",
            )
        return label

    def row_error(self, file: Path, row: int, message: str) -> DataError:
        return self.error(f"row {row}: {message}", file)

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        images, digests = [], []
        for i in indices:
            number, group, at, row = (int(v) for v in self._where[i])
            file = self.files[number]
            value = self._row_group(number, group)[at]
            if isinstance(value, dict):  # {bytes, path}
                raw = value.get("bytes")
                if raw is None:
                    seen = f" (only the path {value.get('path')!r})" if value.get("path") else ""
                    raise self.row_error(file, row, f"column {self.image_column!r} has no image bytes{seen}")
            else:
                raw = value
            if raw is None:
                raise self.row_error(file, row, f"column {self.image_column!r} is empty (null)")
            try:
                images.append(decode_image(raw, "", max_pixels))
            except UndecodableImage as exc:
                raise self.row_error(file, row, f"column {self.image_column!r}: {exc}") from None
            digests.append(hashlib.sha256(raw).hexdigest())
        return images, digests

    def _row_group(self, number: int, group: int) -> list:
        """The image column of one row group, as Python values (bytes, or {bytes, path} dicts)."""
        if self._cached is None or self._cached[0] != (number, group):
            file = self.files[number]
            parquet = self._open(file)
            try:
                column = parquet.read_row_group(group, columns=[self.image_column]).column(0)
            except (self._pa.ArrowException, OSError) as exc:
                raise self.error(f"cannot read row group {group} ({str(exc).splitlines()[0]})", file) from None
            self._cached = ((number, group), column.to_pylist())
        return self._cached[1]

    def __getstate__(self) -> dict:
        """Workers get the index, not the modules or the row group read last."""
        return {**self.__dict__, "_pa": None, "_pq": None, "_cached": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pa, self._pq = _pyarrow(self.path, self.field)

    def sample_name(self, index: int) -> str:
        """The file and the row ('test-00000-of-00001.parquet #1002')."""
        number, _, _, row = (int(v) for v in self._where[index])
        return f"{self.files[number].name} #{row}"

    def describe(self) -> dict:
        return {**super().describe(), "files_sha256": self.files_sha256}

    def contents_key(self) -> str:
        return files_key(self.files)
