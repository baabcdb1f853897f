"""Classification: logits [N, K] -> per-sample correctness, agreement and softmax distances."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunegate.errors import DataError
from prunegate.metrics import TaskTally
from prunegate.plan import Task, TaskKind
from prunegate.report.schema import CorruptionError, CorruptionSummary, TaskRecord

from .base import SourceLike


class Classification:
    """Image classifiers: one row of logits per image, one label per image."""

    name = "classification"

    def output_size(self, out: object, batch: int) -> int | None:
        """K for logits [batch, K]; None for anything else."""
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
            return None
        return int(out.shape[1])

    def describe(self, batch: object, classes: int | None) -> str:
        """`[batch, classes] logits`."""
        return f"[{batch}, {classes if classes else 'classes'}] logits"

    def check_labels(self, source: SourceLike, labels: np.ndarray, classes: int, path: str | Path | None) -> None:
        """Every label must be one of the models' classes."""
        if len(labels) == 0:
            raise DataError("the dataset is empty", file=path, field=source.policy_field)
        top = int(labels.max())
        if top >= classes:
            raise DataError(
                f"label {top} is outside the models' {classes} classes (0-{classes - 1})",
                file=path,
                field=source.policy_field,
            )

    def new_tally(self, n: int, device: torch.device) -> TaskTally:
        """An empty per-sample tally."""
        return TaskTally.empty(n, device)

    def restore_tally(self, state: dict, n: int, device: torch.device) -> TaskTally:
        """A tally from a checkpoint."""
        return TaskTally.from_state(state, n, device)

    def task_record(
        self,
        task: Task,
        tally: object,
        *,
        classes: int,
        confidence: float,
        resampler: object,
        indices: np.ndarray,
        class_names: list[str] | None,
    ) -> tuple[TaskRecord, dict]:
        """The task's metrics, intervals and examples (metrics.paired), as its report record."""
        assert isinstance(tally, TaskTally)
        summary, replicates = tally.statistics(
            draws=task.draws,
            classes=classes,
            confidence=confidence,
            resampler=resampler,
            indices=indices,
            class_names=class_names,
        )
        record = TaskRecord(name=task.name, kind=task.kind, group=task.group, source=task.source, **summary)
        return record, replicates

    def corruption_summary(self, tasks: Sequence[Task], records: dict[str, TaskRecord]) -> CorruptionSummary | None:
        """Per corruption: the top-1 errors summed over severities, the pruned model's over the
        dense model's (CE), and the same for errors in excess of each model's clean error
        (relative CE)."""
        corruptions = [t for t in tasks if t.kind is TaskKind.CORRUPTION]
        names = list(dict.fromkeys(t.shift for t in corruptions))
        if not names:
            return None
        clean = records.get("clean")
        rows = []
        for name in names:
            chosen = [t for t in corruptions if t.shift == name]
            dense = sum(1.0 - records[t.name].dense.accuracy for t in chosen)
            pruned = sum(1.0 - records[t.name].pruned.accuracy for t in chosen)
            relative = None
            if clean is not None:
                dense_excess = dense - len(chosen) * (1.0 - clean.dense.accuracy)
                pruned_excess = pruned - len(chosen) * (1.0 - clean.pruned.accuracy)
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


CLASSIFICATION = Classification()
