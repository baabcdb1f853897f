"""Per-task state of the streaming pass: per-sample outcomes, written in place.

Each task keeps, for every evaluated sample, both models' predictions and the two softmax
distances, at the sample's fixed position. Positions come from the sample order, so shards and
batches fill disjoint slots and merge exactly, and paired statistics can use the bits later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import functional as F


@dataclass
class TaskTally:
    labels: torch.Tensor  # [n] int64
    dense_pred: torch.Tensor  # [n] int64, -1 = no prediction
    pruned_pred: torch.Tensor
    l2: torch.Tensor  # [n] float32
    linf: torch.Tensor
    filled: torch.Tensor  # [n] bool: every slot must be written exactly once

    @classmethod
    def empty(cls, n: int, device: torch.device) -> TaskTally:
        def full(value, dtype):
            return torch.full((n,), value, dtype=dtype, device=device)

        return cls(full(-1, torch.int64), full(-1, torch.int64), full(-1, torch.int64),
                   full(float("nan"), torch.float32), full(float("nan"), torch.float32), full(False, torch.bool))

    def update(self, positions: torch.Tensor, labels: torch.Tensor, dense_logits: torch.Tensor, pruned_logits: torch.Tensor) -> None:
        l2, linf = F.softmax_distances(dense_logits, pruned_logits)
        self.labels[positions] = labels
        self.dense_pred[positions] = F.predictions(dense_logits)
        self.pruned_pred[positions] = F.predictions(pruned_logits)
        self.l2[positions] = l2
        self.linf[positions] = linf
        self.filled[positions] = True

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def cpu(self) -> TaskTally:
        return TaskTally(*(t.cpu() for t in (self.labels, self.dense_pred, self.pruned_pred, self.l2, self.linf, self.filled)))

    def summary(self) -> dict:
        """The task's metrics as the report records them."""
        dense_correct = F.correct(self.dense_pred, self.labels)
        pruned_correct = F.correct(self.pruned_pred, self.labels)
        n = self.n
        dense_acc = float(dense_correct.double().mean())
        pruned_acc = float(pruned_correct.double().mean())
        return {
            "n": n,
            "dense": {"accuracy": dense_acc, "correct": int(dense_correct.sum()),
                      "nonfinite": int((self.dense_pred == F.NO_PREDICTION).sum())},
            "pruned": {"accuracy": pruned_acc, "correct": int(pruned_correct.sum()),
                       "nonfinite": int((self.pruned_pred == F.NO_PREDICTION).sum())},
            "accuracy_drop": dense_acc - pruned_acc,
            "agreement": F.agreement(self.dense_pred, self.pruned_pred),
            "softmax_l2": float(self.l2.double().mean()),
            "softmax_linf": float(self.linf.double().mean()),
        }
