"""Per-task state of the streaming pass: per-sample outcomes, written in place.

Each task keeps, for every evaluated sample, both models' predictions and the two softmax
distances, at the sample's fixed position. Positions come from the sample order, so shards and
batches fill disjoint slots and merge exactly, and paired statistics can use the bits later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import functional as F


@dataclass
class TaskTally:
    labels: torch.Tensor  # [n] int32 (class indices; 21 bytes per sample and task in all)
    dense_pred: torch.Tensor  # [n] int32, -1 = no prediction
    pruned_pred: torch.Tensor
    l2: torch.Tensor  # [n] float32
    linf: torch.Tensor
    filled: torch.Tensor  # [n] bool: every slot must be written exactly once

    @classmethod
    def empty(cls, n: int, device: torch.device) -> TaskTally:
        def full(value, dtype):
            return torch.full((n,), value, dtype=dtype, device=device)

        return cls(full(-1, torch.int32), full(-1, torch.int32), full(-1, torch.int32),
                   full(float("nan"), torch.float32), full(float("nan"), torch.float32), full(False, torch.bool))

    def update(self, positions: torch.Tensor, labels: torch.Tensor, dense_logits: torch.Tensor, pruned_logits: torch.Tensor) -> None:
        l2, linf = F.softmax_distances(dense_logits, pruned_logits)
        self.labels[positions] = labels.to(self.labels.dtype)
        self.dense_pred[positions] = F.predictions(dense_logits).to(self.dense_pred.dtype)
        self.pruned_pred[positions] = F.predictions(pruned_logits).to(self.pruned_pred.dtype)
        self.l2[positions] = l2
        self.linf[positions] = linf
        self.filled[positions] = True

    FIELDS = ("labels", "dense_pred", "pruned_pred", "l2", "linf", "filled")

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors, on the CPU, for a checkpoint."""
        return {name: getattr(self, name).cpu() for name in self.FIELDS}

    @classmethod
    def from_state(cls, state: dict, n: int, device: torch.device) -> TaskTally:
        """A tally from `state`; ValueError unless it is one of `n` samples."""
        tensors = [state.get(name) for name in cls.FIELDS]
        if not all(isinstance(t, torch.Tensor) and t.shape == (n,) for t in tensors):
            raise ValueError(f"a checkpoint's tally is not one of {n} samples")
        empty = cls.empty(n, device)
        return cls(*(t.to(device, getattr(empty, name).dtype) for name, t in zip(cls.FIELDS, tensors)))

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def cpu(self) -> TaskTally:
        return TaskTally(*(t.cpu() for t in (self.labels, self.dense_pred, self.pruned_pred, self.l2, self.linf, self.filled)))

    def summary(self, *, draws: int = 1, classes: Optional[int] = None, confidence: float = 0.95,
                resampler=None, indices=None, class_names=None) -> dict:
        """The task's metrics as the report records them (see paired.task_statistics)."""
        return self.statistics(draws=draws, classes=classes, confidence=confidence, resampler=resampler,
                               indices=indices, class_names=class_names)[0]

    def statistics(self, *, draws: int = 1, classes: Optional[int] = None, confidence: float = 0.95,
                   resampler=None, indices=None, class_names=None) -> tuple[dict, dict]:
        """(summary, bootstrap replicates per metric)."""
        from .paired import task_statistics

        if classes is None:
            classes = int(max(self.labels.max(), self.dense_pred.max(), self.pruned_pred.max())) + 1 if self.n else 1
        if indices is None:
            indices = np.arange(self.n // draws)
        return task_statistics(self.cpu(), draws=draws, classes=classes, confidence=confidence, resampler=resampler,
                               indices=indices, class_names=class_names)
