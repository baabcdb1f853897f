"""The suite's summary over corruptions, for any kind that has an error per model and task."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prunegate.plan import Task, TaskKind
from prunegate.report.schema import CorruptionError, CorruptionSummary, ModelSide, TaskRecord

ErrorOf = Callable[[ModelSide], float | None]  # a model's error on a task (1 - accuracy, 1 - mIoU)


def summarise_corruptions(
    tasks: Sequence[Task], records: dict[str, TaskRecord], error: ErrorOf
) -> CorruptionSummary | None:
    """Per corruption: the errors summed over severities, the pruned model's over the dense
    model's (CE), and the same for errors in excess of each model's clean error (relative CE).
    None without corruption tasks, or where a model's error is undefined."""
    corruptions = [t for t in tasks if t.kind is TaskKind.CORRUPTION]
    names = list(dict.fromkeys(t.shift for t in corruptions))
    if not names:
        return None

    def total(chosen: list[Task], which: str) -> float | None:
        errors = [error(getattr(records[t.name], which)) for t in chosen]
        return None if any(e is None for e in errors) else sum(e for e in errors if e is not None)

    clean = records.get("clean")
    rows = []
    for name in names:
        chosen = [t for t in corruptions if t.shift == name]
        dense, pruned = total(chosen, "dense"), total(chosen, "pruned")
        if dense is None or pruned is None:
            return None
        relative = None
        clean_dense = error(clean.dense) if clean is not None else None
        clean_pruned = error(clean.pruned) if clean is not None else None
        if clean_dense is not None and clean_pruned is not None:
            dense_excess = dense - len(chosen) * clean_dense
            pruned_excess = pruned - len(chosen) * clean_pruned
            relative = pruned_excess / dense_excess if dense_excess > 0 else None
        rows.append(
            CorruptionError(
                name=str(name),
                severities=[int(t.severity or 0) for t in chosen],
                dense_error=dense,
                pruned_error=pruned,
                ce=pruned / dense if dense > 0 else None,
                relative_ce=relative,
            )
        )
    ces = [r.ce for r in rows if r.ce is not None]
    relatives = [r.relative_ce for r in rows if r.relative_ce is not None]
    return CorruptionSummary(
        per_corruption=rows,
        mce=sum(ces) / len(ces) if ces else None,
        relative_mce=sum(relatives) / len(relatives) if relatives else None,
    )
