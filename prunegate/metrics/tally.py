"""Per-task state of the streaming pass: per-sample outcomes, written in place.

Each task keeps, for every evaluated sample, both models' predictions and the two softmax
distances, at the sample's fixed position. Positions come from the sample order, so shards and
batches fill disjoint slots and merge exactly, and paired statistics can use the bits later.

Every tensor declares how it merges across processes (as torchmetrics' `add_state` does):
`Slots(empty)` are per-sample slots that exactly one process fills, so the merge sums what each
process filled (offset by `empty`, so an unfilled slot contributes zero) and `filled` counts the
processes that wrote each slot (more than one is a bug). A new field is one line in STATES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import functional as F


@dataclass(frozen=True)
class Slots:
    """A per-sample tensor of `dtype`, `empty` where no sample was written."""

    dtype: torch.dtype
    empty: float
    width: int = 0  # 0: one value per sample; k: k values per sample ([n, k])

    def shape(self, n: int) -> tuple[int, ...]:
        return (n, self.width) if self.width else (n,)

    @property
    def offset(self) -> float:
        """What a filled slot is stored relative to for the merge's sum (a finite `empty`, else 0)."""
        return self.empty if np.isfinite(self.empty) else 0.0


# labels, predictions and top-5 classes: class indices, -1 = none; the rest NaN until written
# (93 bytes/sample). Per model: the top-1 probability (confidence), the log probability of the
# label, the Brier score and the top-5 classes; paired: softmax L2/Linf, KL and JS distance.
STATES: dict[str, Slots] = {
    "labels": Slots(torch.int32, -1),
    "dense_pred": Slots(torch.int32, -1),
    "pruned_pred": Slots(torch.int32, -1),
    "l2": Slots(torch.float32, float("nan")),
    "linf": Slots(torch.float32, float("nan")),
    "dense_confidence": Slots(torch.float32, float("nan")),
    "pruned_confidence": Slots(torch.float32, float("nan")),
    "dense_logp": Slots(torch.float32, float("nan")),
    "pruned_logp": Slots(torch.float32, float("nan")),
    "dense_brier": Slots(torch.float32, float("nan")),
    "pruned_brier": Slots(torch.float32, float("nan")),
    "dense_top5": Slots(torch.int32, -1, F.TOP_K),
    "pruned_top5": Slots(torch.int32, -1, F.TOP_K),
    "kl": Slots(torch.float32, float("nan")),
    "js": Slots(torch.float32, float("nan")),
}

Reduce = Callable[[torch.Tensor], None]  # sums a tensor in place across processes (dist.all_reduce)


def all_reduce_slots(tally: Any, offsets: dict[str, float], reduce: Reduce) -> None:
    """Merge a slot tally in place across processes: each state named in `offsets` (per-sample
    slots along its first dimension) sums what every process filled, stored relative to its
    offset so that an unfilled slot contributes zero; `tally.filled` counts the writers of each
    slot, and more than one is a bug."""
    filled = tally.filled
    for name, offset in offsets.items():
        tensor = getattr(tally, name)
        base = torch.tensor(offset, dtype=tensor.dtype, device=tensor.device)
        where = filled.view(-1, *([1] * (tensor.ndim - 1)))
        mine = torch.where(where, tensor - base, torch.zeros_like(tensor))
        reduce(mine)
        setattr(tally, name, mine + base)
    count = filled.to(torch.int32)
    reduce(count)
    if count.numel() and int(count.max()) > 1:
        raise AssertionError("a sample was evaluated by more than one process")
    tally.filled = count == 1


@dataclass
class TaskTally:
    """One task's per-sample outcomes for the dense and one pruned model."""

    labels: torch.Tensor  # [n] int32 (class indices)
    dense_pred: torch.Tensor  # [n] int32, -1 = no prediction
    pruned_pred: torch.Tensor
    l2: torch.Tensor  # [n] float32
    linf: torch.Tensor
    dense_confidence: torch.Tensor  # [n] float32: top-1 softmax probability
    pruned_confidence: torch.Tensor
    dense_logp: torch.Tensor  # [n] float32: log probability of the label
    pruned_logp: torch.Tensor
    dense_brier: torch.Tensor  # [n] float32
    pruned_brier: torch.Tensor
    dense_top5: torch.Tensor  # [n, 5] int32: the five most probable classes
    pruned_top5: torch.Tensor
    kl: torch.Tensor  # [n] float32: KL(dense || pruned), nats
    js: torch.Tensor  # [n] float32: Jensen-Shannon distance (base 2)
    filled: torch.Tensor  # [n] bool: every slot must be written exactly once
    # data.label_map: bool [dataset labels, model classes], a prediction is right when in its
    # label's set; None: right when it is the label. Set for the statistics, never merged or kept.
    label_sets: torch.Tensor | None = None

    FIELDS = (*STATES, "filled")

    @classmethod
    def empty(cls, n: int, device: torch.device) -> TaskTally:
        """A tally of `n` unwritten slots on `device`."""
        slots = {name: torch.full(s.shape(n), s.empty, dtype=s.dtype, device=device) for name, s in STATES.items()}
        return cls(**slots, filled=torch.zeros(n, dtype=torch.bool, device=device))

    def update(
        self, positions: torch.Tensor, labels: torch.Tensor, dense_logits: torch.Tensor, pruned_logits: torch.Tensor
    ) -> None:
        """Write one batch's outcomes into the slots at `positions`."""
        l2, linf = F.softmax_distances(dense_logits, pruned_logits)
        kl, js = F.softmax_divergences(dense_logits, pruned_logits)
        values = {
            "labels": labels,
            "dense_pred": F.predictions(dense_logits),
            "pruned_pred": F.predictions(pruned_logits),
            "l2": l2,
            "linf": linf,
            "kl": kl,
            "js": js,
        }
        for model, logits in (("dense", dense_logits), ("pruned", pruned_logits)):
            for name, value in F.probability_outcomes(logits, labels).items():
                values[f"{model}_{name}"] = value
        for name, value in values.items():
            target = getattr(self, name)
            target[positions] = value.to(target.dtype)
        self.filled[positions] = True

    def record(
        self, positions: torch.Tensor, labels: torch.Tensor, dense_logits: torch.Tensor, pruned_logits: torch.Tensor
    ) -> None:
        """`update`: a classifier's tally keeps the logits themselves (kinds.Classification.keep)."""
        self.update(positions, labels, dense_logits, pruned_logits)

    def all_reduce(self, reduce: Reduce) -> None:
        """Merge every process's part in place, as STATES declare; each slot must have been filled
        by exactly one process."""
        all_reduce_slots(self, {name: slots.offset for name, slots in STATES.items()}, reduce)

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors, on the CPU, for a checkpoint."""
        return {name: getattr(self, name).cpu() for name in self.FIELDS}

    @classmethod
    def from_state(cls, state: dict, n: int, device: torch.device) -> TaskTally:
        """A tally from `state`; ValueError unless it is one of `n` samples."""
        empty = cls.empty(n, device)
        found = [state.get(name) for name in cls.FIELDS]
        tensors = [
            t
            for t, name in zip(found, cls.FIELDS)
            if isinstance(t, torch.Tensor) and t.shape == getattr(empty, name).shape
        ]
        if len(tensors) != len(found):
            raise ValueError(f"a checkpoint's tally is not one of {n} samples")
        return cls(*(t.to(device, getattr(empty, name).dtype) for name, t in zip(cls.FIELDS, tensors)))

    @property
    def n(self) -> int:
        """The number of slots (samples x draws)."""
        return int(self.labels.shape[0])

    def cpu(self) -> TaskTally:
        """The same tally on the CPU."""
        sets = None if self.label_sets is None else self.label_sets.cpu()
        return TaskTally(**{name: getattr(self, name).cpu() for name in self.FIELDS}, label_sets=sets)

    def select(self, slots: torch.Tensor) -> TaskTally:
        """A tally of the given slots only, in that order (a sequential pass's evaluated samples)."""
        kept = {name: getattr(self, name)[slots.to(self.labels.device)] for name in self.FIELDS}
        return TaskTally(**kept, label_sets=self.label_sets)

    def correctness(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample bools: the dense and the pruned model's prediction is right."""
        if self.label_sets is None:
            return F.correct(self.dense_pred, self.labels), F.correct(self.pruned_pred, self.labels)
        sets = self.label_sets.to(self.labels.device)
        return F.in_label_set(self.dense_pred, self.labels, sets), F.in_label_set(self.pruned_pred, self.labels, sets)

    def summary(
        self,
        *,
        draws: int = 1,
        classes: int | None = None,
        confidence: float = 0.95,
        resampler: Any = None,
        indices: np.ndarray | None = None,
        class_names: list[str] | None = None,
        options: Any = None,
    ) -> dict:
        """The task's metrics as the report records them (see paired.task_statistics)."""
        return self.statistics(
            draws=draws,
            classes=classes,
            confidence=confidence,
            resampler=resampler,
            indices=indices,
            class_names=class_names,
            options=options,
        )[0]

    def statistics(
        self,
        *,
        draws: int = 1,
        classes: int | None = None,
        confidence: float = 0.95,
        resampler: Any = None,
        indices: np.ndarray | None = None,
        class_names: list[str] | None = None,
        options: Any = None,
    ) -> tuple[dict, dict]:
        """(summary, bootstrap replicates per metric)."""
        from .paired import task_statistics

        if classes is None:
            top = max(self.labels.max(), self.dense_pred.max(), self.pruned_pred.max())
            classes = int(top) + 1 if self.n else 1
        if indices is None:
            indices = np.arange(self.n // draws)
        return task_statistics(
            self.cpu(),
            draws=draws,
            classes=classes,
            confidence=confidence,
            resampler=resampler,
            indices=indices,
            class_names=class_names,
            options=options,
        )
