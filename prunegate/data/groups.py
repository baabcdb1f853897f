"""`data.groups`: named subgroups of classes (animals vs vehicles, rare vs common classes, the
classes of one region), for the per-group accuracy and `group_accuracy_drop`. Each group lists
class names (the data set's) or label indices; a class may belong to several groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from prunegate.errors import DataError

FIELD = "data.groups"
MAX_BYTES = 4 << 20


def read_groups_file(path: Path) -> dict:
    """The mapping a groups file (JSON or YAML, a subset of YAML) holds."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"is larger than {MAX_BYTES >> 20} MiB", file=path, field=FIELD)
        found = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise DataError(f"cannot be read as a JSON or YAML mapping ({reason})", file=path, field=FIELD) from None
    if not isinstance(found, dict) or not found:
        raise DataError("must hold a mapping {group name: [class names or indices]}", file=path, field=FIELD)
    return found


def resolve_groups(
    groups: dict, class_names: list[str] | None, *, file: Path | None = None, where: str = FIELD
) -> dict[str, np.ndarray]:
    """{group name: label indices}, from class names (looked up in the data set's `class_names`)
    or indices; a DataError naming `where.GROUP` for a name the set does not have."""
    resolved: dict[str, np.ndarray] = {}
    position = {name: i for i, name in enumerate(class_names or [])}
    for group, members in groups.items():
        field = f"{where}.{group}"
        if not isinstance(group, str) or not group.strip():
            raise DataError(f"group names must be non-empty strings, got {group!r}", file=file, field=where)
        if not isinstance(members, list) or not members:
            raise DataError("must list class names or label indices", file=file, field=field)
        indices = []
        for member in members:
            if isinstance(member, bool) or not isinstance(member, int | str):
                raise DataError(f"members must be class names or indices, got {member!r}", file=file, field=field)
            if isinstance(member, int):
                if member < 0 or (class_names is not None and member >= len(class_names)):
                    top = f" (0-{len(class_names) - 1})" if class_names else ""
                    raise DataError(f"label {member} is not one of the data set's classes{top}", file=file, field=field)
                indices.append(member)
            elif member in position:
                indices.append(position[member])
            elif class_names is None:
                raise DataError(
                    f"class {member!r} is a name, but the data set has no class names: use label indices",
                    file=file,
                    field=field,
                )
            else:
                raise DataError(f"class {member!r} is not one of the data set's class names", file=file, field=field)
        resolved[group] = np.unique(np.asarray(indices, dtype=np.int64))
    return resolved


def check_group_classes(groups: dict[str, np.ndarray], classes: int, file: Path | None = None) -> None:
    """A DataError naming `data.groups.GROUP` for a label index the models do not have: a set
    without class names (npz, npy) cannot bound its indices until the models' outputs are known."""
    for group, indices in groups.items():
        outside = indices[indices >= classes]
        if outside.size:
            raise DataError(
                f"label {int(outside[0])} is not one of the models' classes (0-{classes - 1})",
                file=file,
                field=f"{FIELD}.{group}",
            )
