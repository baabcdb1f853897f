"""Classification: logits [N, K] -> per-sample correctness, agreement and softmax distances."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from prunegate.errors import DataError
from prunegate.metrics import TaskTally
from prunegate.metrics.paired import StatisticsOptions
from prunegate.plan import Task
from prunegate.report.schema import CorruptionSummary, ModelSide, TaskRecord

from .base import SourceLike
from .corruptions import summarise_corruptions


class Classification:
    """Image classifiers: one row of logits per image, one label per image."""

    name = "classification"
    output_names: tuple[str, ...] = ("logits",)  # Hugging Face's ImageClassifierOutput, and the common convention

    def output_size(self, out: object, batch: int, spatial: tuple[int, int]) -> int | None:
        """K for logits [batch, K]; None for anything else (`spatial`, the input's size, is unused)."""
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
            return None
        return int(out.shape[1])

    def describe(self, batch: object, classes: int | None, spatial: tuple[int, int]) -> str:
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

    def keep(self, out: torch.Tensor) -> torch.Tensor:
        """The logits themselves: the tally needs them all (softmax distances)."""
        return out

    def new_tally(self, n: int, device: torch.device, classes: int) -> TaskTally:
        """An empty per-sample tally."""
        return TaskTally.empty(n, device)

    def restore_tally(self, state: dict, n: int, device: torch.device, classes: int) -> TaskTally:
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
        options: object = None,
    ) -> tuple[TaskRecord, dict]:
        """The task's metrics, intervals and examples (metrics.paired), as its report record."""
        assert isinstance(tally, TaskTally)
        assert options is None or isinstance(options, StatisticsOptions)
        summary, replicates = tally.statistics(
            draws=task.draws,
            classes=classes,
            confidence=confidence,
            resampler=resampler,
            indices=indices,
            class_names=class_names,
            options=options,
        )
        record = TaskRecord(name=task.name, kind=task.kind, group=task.group, source=task.source, **summary)
        return record, replicates

    def error(self, side: ModelSide) -> float | None:
        """The top-1 error."""
        return None if side.accuracy is None else 1.0 - side.accuracy

    def corruption_summary(self, tasks: Sequence[Task], records: dict[str, TaskRecord]) -> CorruptionSummary | None:
        """Per corruption: top-1 errors summed over severities, CE and relative CE (kinds.corruptions)."""
        return summarise_corruptions(tasks, records, self.error)


CLASSIFICATION = Classification()
