"""The prediction-kind seam: what a model's outputs are, and how a task tallies and measures them.

The engine loop, the gate and the renderers know nothing of logits or classes: they ask the
run's kind to check an output, to make a task's tally (which declares how it merges across
processes), and to turn tallies into the report's task records. Classification (logits
[N, K] -> per-sample correctness and softmax distances) and segmentation (logits [N, K, H, W]
-> per-image confusion matrices) are the two kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from prunegate.metrics.tally import Reduce
from prunegate.plan import Task
from prunegate.report.schema import CorruptionSummary, ModelSide, TaskRecord


class Tally(Protocol):
    """One task's state for the dense model and one pruned model: per-sample slots that batches
    and processes fill disjointly, merged exactly."""

    filled: torch.Tensor

    @property
    def n(self) -> int: ...

    def record(self, positions: torch.Tensor, labels: torch.Tensor, dense: torch.Tensor, pruned: torch.Tensor) -> None:
        """Write one batch into the slots at `positions`, from what the kind keeps of each model's
        outputs (PredictionKind.keep)."""
        ...

    def all_reduce(self, reduce: Reduce) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def cpu(self) -> Tally: ...


class SourceLike(Protocol):
    """What a kind reads of a data source (context.Source)."""

    name: str
    indices: np.ndarray
    policy_field: str


class PredictionKind(Protocol):
    """How one kind of model output is checked, tallied and measured."""

    name: str
    # The names under which a model with several outputs returns this kind's logits, in order of
    # preference: what is read when the policy names none (models.output).
    output_names: tuple[str, ...]

    def output_size(self, out: object, batch: int, spatial: tuple[int, int]) -> int | None:
        """The per-sample output size (classes) of a well-formed output for `batch` inputs of
        `spatial` (height, width); None when the output is not of this kind."""
        ...

    def describe(self, batch: object, classes: int | None, spatial: tuple[int, int]) -> str:
        """The expected output, for errors (e.g. `[N, K] logits`)."""
        ...

    def check_labels(self, source: SourceLike, labels: np.ndarray, classes: int, path: str | Path | None) -> None:
        """Refuse a source whose labels the models cannot predict."""
        ...

    def keep(self, out: torch.Tensor) -> torch.Tensor:
        """What a tally reads of one batch's checked outputs (the logits, or the per-pixel classes):
        what a cache keeps of the dense model (prunegate.cache)."""
        ...

    def new_tally(self, n: int, device: torch.device, classes: int) -> Tally:
        """An empty tally of `n` slots for models of `classes` classes."""
        ...

    def restore_tally(self, state: dict, n: int, device: torch.device, classes: int) -> Tally:
        """A tally from a checkpoint's state; ValueError when it does not fit."""
        ...

    def task_record(
        self,
        task: Task,
        tally: Tally,
        *,
        classes: int,
        confidence: float,
        resampler: object,
        indices: np.ndarray,
        class_names: list[str] | None,
        options: object = None,
    ) -> tuple[TaskRecord, dict]:
        """The task's record in the report and its bootstrap replicates per metric."""
        ...

    def error(self, side: ModelSide) -> float | None:
        """One model's error on a task, as corruption errors and prune potential count it
        (1 - accuracy, 1 - mIoU); None where it is undefined."""
        ...

    def corruption_summary(self, tasks: Sequence[Task], records: dict[str, TaskRecord]) -> CorruptionSummary | None:
        """The suite's summary over corruptions, if the kind has one."""
        ...
