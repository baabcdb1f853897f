"""Every per-task metric from per-image sums: one code path for the estimate and the bootstrap.

A task's per-sample outcomes become per-image columns (summed over noise draws): both models'
correctness, agreement, the flips, both wrong, the softmax distances and, for up to
MAX_CLASSES_RESAMPLED classes, per-class counts. A metric is a function of column sums, so the
point estimate is that function of the plain sums and a bootstrap replicate the same function
of resampled (weighted) sums.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from . import functional as F
from .intervals import Resampler, mcnemar_exact, mean_interval, newcombe_paired, percentile_interval, wilson

if TYPE_CHECKING:  # tally.py imports this module when it computes statistics
    from .tally import TaskTally

# Per-class columns cost 3 x classes per task in the bootstrap; beyond this many classes the
# class recall drop is reported without an interval.
MAX_CLASSES_RESAMPLED = 100
EXAMPLES_PER_TASK = 8

BASE_COLUMNS = ("dense_correct", "pruned_correct", "agree", "newly_wrong", "newly_right", "both_wrong", "l2", "linf")
PROPORTIONS = ("dense_accuracy", "pruned_accuracy", "agreement", "newly_wrong", "newly_right")


def per_image_columns(tally: TaskTally, draws: int, classes: int, with_classes: bool) -> np.ndarray:
    """[images, k] float64: BASE_COLUMNS, then (if with_classes) per-class n, dense, pruned correct."""
    labels = tally.labels.numpy()
    dense, pruned = (c.numpy() for c in tally.correctness())
    agree = F.agree(tally.dense_pred, tally.pruned_pred).numpy()
    base = np.stack(
        [
            dense,
            pruned,
            agree,
            dense & ~pruned,
            ~dense & pruned,
            ~dense & ~pruned,
            tally.l2.numpy(),
            tally.linf.numpy(),
        ],
        axis=1,
    ).astype(np.float64)
    columns = [base]
    if with_classes:
        onehot = np.zeros((len(labels), classes))
        valid = labels >= 0  # an unwritten slot (label -1) belongs to no class
        onehot[np.flatnonzero(valid), labels[valid]] = 1.0
        columns += [onehot, onehot * dense[:, None], onehot * pruned[:, None]]
    samples = np.concatenate(columns, axis=1)
    return samples.reshape(-1, draws, samples.shape[1]).sum(axis=1)


def metrics_from_sums(sums: np.ndarray, n: int, classes: int, with_classes: bool) -> dict[str, np.ndarray]:
    """sums: [r, k] column sums (r = 1 for the estimate, replicates for the bootstrap)."""
    c = {name: sums[:, i] for i, name in enumerate(BASE_COLUMNS)}
    dense_acc, pruned_acc = c["dense_correct"] / n, c["pruned_correct"] / n
    out = {
        "dense_accuracy": dense_acc,
        "pruned_accuracy": pruned_acc,
        "accuracy_drop": dense_acc - pruned_acc,
        "agreement": c["agree"] / n,
        "newly_wrong": c["newly_wrong"] / n,
        "newly_right": c["newly_right"] / n,
        "softmax_l2": c["l2"] / n,
        "softmax_linf": c["linf"] / n,
        "error_consistency": _kappa(1 - dense_acc, 1 - pruned_acc, c["both_wrong"] / n),
    }
    if with_classes:
        base = len(BASE_COLUMNS)
        count = sums[:, base : base + classes]
        dense_c = sums[:, base + classes : base + 2 * classes]
        pruned_c = sums[:, base + 2 * classes : base + 3 * classes]
        with np.errstate(invalid="ignore", divide="ignore"):
            drop = np.where(count > 0, (dense_c - pruned_c) / count, -np.inf)
        out["class_recall_drop"] = drop.max(axis=1)
    return out


def _kappa(dense_error: np.ndarray, pruned_error: np.ndarray, both_wrong: np.ndarray) -> np.ndarray:
    """Cohen's kappa of the two error indicators (Geirhos et al.'s error consistency)."""
    observed = 1 - dense_error - pruned_error + 2 * both_wrong
    expected = dense_error * pruned_error + (1 - dense_error) * (1 - pruned_error)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def task_statistics(
    tally: TaskTally,
    *,
    draws: int,
    classes: int,
    confidence: float,
    resampler: Resampler | None,
    indices: np.ndarray,
    class_names: list[str] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The task's metrics as the report records them, and the bootstrap replicates of each metric
    (empty without a resampler). `indices` maps image positions to data-set indices."""
    n = tally.n
    with_classes = classes <= MAX_CLASSES_RESAMPLED
    columns = per_image_columns(tally, draws, classes, with_classes)
    base = len(BASE_COLUMNS)
    counts = columns[:, :base].sum(axis=0)
    point = {k: float(v[0]) for k, v in metrics_from_sums(counts[None, :], n, classes, False).items()}
    labels = tally.labels.numpy()
    valid = labels >= 0  # an unwritten slot (label -1) belongs to no class

    def per_class(weights: np.ndarray | None = None) -> np.ndarray:
        return (
            np.bincount(labels[valid], weights=None if weights is None else weights[valid], minlength=classes)
            .round()
            .astype(int)
        )

    class_n = per_class()
    dense_ok, pruned_ok = (c.numpy().astype(float) for c in tally.correctness())
    dense_c, pruned_c = per_class(dense_ok), per_class(pruned_ok)
    drops = np.where(class_n > 0, (dense_c - pruned_c) / np.maximum(class_n, 1), -np.inf)
    point["class_recall_drop"] = float(drops.max())

    replicates: dict[str, np.ndarray] = {}
    if resampler is not None:
        replicates = metrics_from_sums(resampler.weighted_sums(columns), n, classes, with_classes)

    dense_right, pruned_right = int(counts[0]), int(counts[1])
    newly_wrong, newly_right, both_wrong = int(counts[3]), int(counts[4]), int(counts[5])
    both_right = n - newly_wrong - newly_right - both_wrong
    intervals = {}
    if draws == 1:  # samples are independent: closed forms
        drop = newcombe_paired(both_right, newly_wrong, newly_right, both_wrong, confidence)
        intervals["accuracy_drop"] = (*drop, "newcombe")
        for metric, k in (
            ("dense_accuracy", dense_right),
            ("pruned_accuracy", pruned_right),
            ("agreement", int(counts[2])),
            ("newly_wrong", newly_wrong),
            ("newly_right", newly_right),
        ):
            intervals[metric] = (*wilson(k, n, confidence), "wilson")
        for metric, distances in (("softmax_l2", tally.l2), ("softmax_linf", tally.linf)):
            intervals[metric] = (*mean_interval(distances.numpy(), confidence), "normal")
    for metric, values in replicates.items():
        if metric not in intervals:  # several draws per image, or no closed form: the bootstrap
            low, high = percentile_interval(values, confidence)
            if np.isfinite(low):
                intervals[metric] = (low, high, "bootstrap")

    worst = int(np.argmax(drops)) if (class_n > 0).any() else None
    summary = {
        "n": n,
        "dense": {
            "accuracy": point["dense_accuracy"],
            "correct": dense_right,
            "nonfinite": int((tally.dense_pred == F.NO_PREDICTION).sum()),
        },
        "pruned": {
            "accuracy": point["pruned_accuracy"],
            "correct": pruned_right,
            "nonfinite": int((tally.pruned_pred == F.NO_PREDICTION).sum()),
        },
        **{
            k: point[k]
            for k in ("accuracy_drop", "agreement", "softmax_l2", "softmax_linf", "newly_wrong", "newly_right")
        },
        "flips": {"newly_wrong": newly_wrong, "newly_right": newly_right},
        "error_consistency": _finite(point["error_consistency"]),
        "class_recall_drop": _finite(point["class_recall_drop"]),
        "worst_class": None
        if worst is None
        else {
            "label": worst,
            "name": class_names[worst] if class_names and worst < len(class_names) else None,
            "n": int(class_n[worst]),
            "dense_recall": dense_c[worst] / class_n[worst],
            "pruned_recall": pruned_c[worst] / class_n[worst],
            "drop": float(drops[worst]),
        },
        "class_recall": {"n": class_n.tolist(), "dense_correct": dense_c.tolist(), "pruned_correct": pruned_c.tolist()},
        "intervals": {k: {"low": lo, "high": hi, "method": m} for k, (lo, hi, m) in intervals.items()},
        "mcnemar_p": mcnemar_exact(newly_wrong, newly_right),
        "examples": examples(tally, draws, indices),
    }
    return summary, replicates


def examples(tally: TaskTally, draws: int, indices: np.ndarray, limit: int = EXAMPLES_PER_TASK) -> list[dict]:
    """A few samples that the pruned model newly gets wrong, spread over classes: the first of
    each class in data-set order, then the second of each, ..."""
    dense, pruned = tally.correctness()
    found = torch.nonzero(dense & ~pruned).flatten().numpy()
    labels = tally.labels.numpy()[found]
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(found), dtype=np.int64)
    rank[order] = np.arange(len(found)) - np.searchsorted(labels[order], labels[order], side="left")
    slots = found[np.lexsort((found, rank))][:limit].tolist()
    return [
        {
            "index": int(indices[s // draws]),
            "draw": s % draws,
            "label": int(tally.labels[s]),
            "dense": int(tally.dense_pred[s]),
            "pruned": int(tally.pruned_pred[s]),
        }
        for s in slots
    ]
