"""`label_map`: a data set whose labels are not the model's classes (ObjectNet, ImageNet-A/-R
style evaluation). A JSON object maps each of the data set's labels to the model classes that
count as right for it; a prediction is right when it falls in its label's set. Agreement between
the two models is unchanged (it compares predictions, not labels)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunegate.errors import DataError

MAX_BYTES = 16 << 20  # a map of every ImageNet class to every other is ~10 MB


@dataclass(frozen=True)
class LabelMap:
    """The model classes counted right for each data set label (by label index)."""

    path: Path
    sha256: str
    sets: tuple[tuple[int, ...], ...]
    field: str

    def check_model_classes(self, classes: int) -> None:
        """Every class the map names must be one of the model's `classes` outputs."""
        top = max((max(s) for s in self.sets if s), default=-1)
        if top >= classes:
            raise DataError(
                f"names model class {top}, but the models have {classes} outputs (0-{classes - 1})",
                file=self.path,
                field=self.field,
            )

    def matrix(self, classes: int) -> torch.Tensor:
        """bool [data set labels, model classes]: True where that prediction is right."""
        found = torch.zeros(len(self.sets), classes, dtype=torch.bool)
        for label, members in enumerate(self.sets):
            found[label, list(members)] = True
        return found


def _model_class(value: object, model_names: list[str] | None, path: Path, field: str) -> int:
    """A model class index from a map value: an index, or a name in class_names."""

    def fail(reason: str) -> DataError:
        return DataError(reason, file=path, field=field)

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise fail(f"model classes must be indices or class names, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise fail(f"model class {value} is negative")
        return value
    if model_names is None:
        raise fail(f"model class {value!r} is a name, but no class_names file names the model's classes")
    if value not in model_names:
        raise fail(f"model class {value!r} is not in class_names")
    return model_names.index(value)


def read_label_map(
    path: Path, field: str, labels: np.ndarray, dataset_classes: list[str] | None, model_names: list[str] | None
) -> LabelMap:
    """The map at `path` for a data set with these `labels` (its label names `dataset_classes`,
    else the labels' numbers, as text, are the keys); `model_names`: the class_names file."""

    def fail(reason: str) -> None:
        raise DataError(reason, file=path, field=field)

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("label map not found", file=path, field=field) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", file=path, field=field) from None
    if len(raw) > MAX_BYTES:
        fail(f"is larger than {MAX_BYTES >> 20} MiB")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a JSON label map ({exc})", file=path, field=field) from None
    if not isinstance(document, dict) or not document:
        fail("expected a JSON object: data set label -> list of model classes")
    count = len(dataset_classes) if dataset_classes else (int(labels.max()) + 1 if len(labels) else 0)
    keys = dataset_classes or [str(i) for i in range(count)]
    unknown = sorted(set(document) - set(keys))
    if unknown:
        fail(
            f"{unknown[0]!r} is not one of the data set's labels ({', '.join(keys[:5])}{', ...' if count > 5 else ''})"
        )
    used = sorted({int(label) for label in np.unique(labels)})
    missing = [keys[i] for i in used if keys[i] not in document]
    if missing:
        fail(f"the data set's label {missing[0]!r} is not in the map ({len(missing)} of its labels are not)")
    sets = []
    for key in keys:
        members = document.get(key, [])
        if key in document and (not isinstance(members, list) or not members):
            fail(f"{key!r}: expected a non-empty list of model classes")
        sets.append(tuple(sorted({_model_class(m, model_names, path, field) for m in members})))
    if not any(sets):
        fail("maps no label to any model class")
    return LabelMap(path, hashlib.sha256(raw).hexdigest(), tuple(sets), field)
