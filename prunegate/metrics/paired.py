"""Every per-task metric from per-image sums: one code path for the estimate and the bootstrap.

A task's per-sample outcomes become per-image columns (summed over noise draws): both models'
correctness, agreement, the flips, both wrong, the softmax distances and, for up to
MAX_CLASSES_RESAMPLED classes, per-class counts. A metric is a function of column sums, so the
point estimate is that function of the plain sums and a bootstrap replicate the same function
of resampled (weighted) sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
# ECE: 15 equal-width bins of the top-1 probability, [i/15, (i+1)/15), as torchmetrics bins them
# (a 16th holds a probability of exactly 1).
ECE_BINS = 15
ECE_EDGES = torch.linspace(0, 1, ECE_BINS + 1)
# The coverage every report gives the selective risk at (rules may ask for others).
DEFAULT_COVERAGE = 0.8

BASE_COLUMNS = (
    "dense_correct",
    "pruned_correct",
    "agree",
    "newly_wrong",
    "newly_right",
    "both_wrong",
    "l2",
    "linf",
    "dense_top5",
    "pruned_top5",
    "top5_newly_wrong",
    "top5_newly_right",
    "dense_nll",
    "pruned_nll",
    "dense_brier",
    "pruned_brier",
    "kl",
    "loyalty",
)
PROPORTIONS = ("dense_accuracy", "pruned_accuracy", "agreement", "newly_wrong", "newly_right")
_ECE_COLUMNS = 2 * (ECE_BINS + 1)  # per model and bin: the sum of (correct - confidence)


@dataclass(frozen=True)
class StatisticsOptions:
    """What a task's statistics cover beyond the fixed metrics: the selective-risk coverages and
    the subgroups (data.groups: name -> label indices)."""

    coverages: tuple[float, ...] = (DEFAULT_COVERAGE,)
    groups: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """Where each block of per-image columns starts: BASE_COLUMNS, the ECE bins of both models,
    3 per group (n, dense correct, pruned correct), then 3 per class if resampled."""

    groups: int
    classes: int
    with_classes: bool

    @property
    def ece(self) -> int:
        return len(BASE_COLUMNS)

    @property
    def group(self) -> int:
        return self.ece + _ECE_COLUMNS

    @property
    def klass(self) -> int:
        return self.group + 3 * self.groups


def _top5_defined(tally: TaskTally) -> bool:
    """Top-5 accuracy needs at least 5 model classes (the tally's fifth column is filled)."""
    return bool(tally.n) and bool((tally.dense_top5[:, -1] >= 0).any() or (tally.pruned_top5[:, -1] >= 0).any())


def top5_correctness(tally: TaskTally) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample bools: the label (or, under data.label_map, one of its classes) is in each model's top 5."""
    sets = None if tally.label_sets is None else tally.label_sets.to(tally.labels.device)
    return F.in_top_k(tally.dense_top5, tally.labels, sets), F.in_top_k(tally.pruned_top5, tally.labels, sets)


def ece_bins(confidence: torch.Tensor) -> torch.Tensor:
    """The ECE bin of each top-1 probability (0..ECE_BINS; NaN: an unwritten slot, bin 0)."""
    return torch.bucketize(torch.nan_to_num(confidence, nan=0.0), ECE_EDGES, right=True) - 1


def per_image_columns(
    tally: TaskTally, draws: int, classes: int, with_classes: bool, groups: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """[images, k] float64 per-image sums (over draws), as `Layout` orders them."""
    labels = tally.labels.numpy()
    dense, pruned = (c.numpy() for c in tally.correctness())
    agree = F.agree(tally.dense_pred, tally.pruned_pred).numpy()
    top_dense, top_pruned = (c.numpy() for c in top5_correctness(tally))
    # under a label map a label is a set of classes: the label's own probability is undefined
    nll_defined = tally.label_sets is None
    nan = np.full(len(labels), np.nan)
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
            top_dense,
            top_pruned,
            top_dense & ~top_pruned,
            ~top_dense & top_pruned,
            -tally.dense_logp.double().numpy() if nll_defined else nan,
            -tally.pruned_logp.double().numpy() if nll_defined else nan,
            tally.dense_brier.numpy() if nll_defined else nan,
            tally.pruned_brier.numpy() if nll_defined else nan,
            tally.kl.numpy(),
            1.0 - tally.js.double().numpy(),
        ],
        axis=1,
    ).astype(np.float64)
    columns = [base]
    for confidence, right in ((tally.dense_confidence, dense), (tally.pruned_confidence, pruned)):
        gap = np.zeros((len(labels), ECE_BINS + 1))
        gap[np.arange(len(labels)), ece_bins(confidence).numpy()] = right - confidence.double().numpy()
        columns.append(gap)
    valid = labels >= 0  # an unwritten slot (label -1) belongs to no class
    for members in (groups or {}).values():
        inside = (valid & np.isin(labels, members)).astype(np.float64)
        columns.append(np.stack([inside, inside * dense, inside * pruned], axis=1))
    if with_classes:
        onehot = np.zeros((len(labels), classes))
        onehot[np.flatnonzero(valid), labels[valid]] = 1.0
        columns += [onehot, onehot * dense[:, None], onehot * pruned[:, None]]
    samples = np.concatenate(columns, axis=1)
    return samples.reshape(-1, draws, samples.shape[1]).sum(axis=1)


def metrics_from_sums(
    sums: np.ndarray, n: int, classes: int, with_classes: bool, groups: int = 0
) -> dict[str, np.ndarray]:
    """sums: [r, k] column sums (r = 1 for the estimate, replicates for the bootstrap)."""
    layout = Layout(groups, classes, with_classes)
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
        "kl_divergence": c["kl"] / n,
        "probability_loyalty": c["loyalty"] / n,
    }
    for metric in ("top5", "nll", "brier"):
        out[f"dense_{metric}"], out[f"pruned_{metric}"] = c[f"dense_{metric}"] / n, c[f"pruned_{metric}"] / n
    out["top5_drop"] = out["dense_top5"] - out["pruned_top5"]
    out["nll_increase"] = out["pruned_nll"] - out["dense_nll"]
    out["brier_increase"] = out["pruned_brier"] - out["dense_brier"]
    bins = ECE_BINS + 1
    out["dense_ece"] = np.abs(sums[:, layout.ece : layout.ece + bins]).sum(axis=1) / n
    out["pruned_ece"] = np.abs(sums[:, layout.ece + bins : layout.group]).sum(axis=1) / n
    out["ece_increase"] = out["pruned_ece"] - out["dense_ece"]
    if groups:
        block = sums[:, layout.group : layout.klass].reshape(len(sums), groups, 3)
        out["group_accuracy_drop"] = _largest_drop(block[:, :, 0], block[:, :, 1], block[:, :, 2])
    if with_classes:
        count = sums[:, layout.klass : layout.klass + classes]
        dense_c = sums[:, layout.klass + classes : layout.klass + 2 * classes]
        pruned_c = sums[:, layout.klass + 2 * classes : layout.klass + 3 * classes]
        out["class_recall_drop"] = _largest_drop(count, dense_c, pruned_c)
    return out


def _largest_drop(count: np.ndarray, dense: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """[r, m] counts and correct counts per class or group -> [r] the largest accuracy drop."""
    with np.errstate(invalid="ignore", divide="ignore"):
        drop = np.where(count > 0, (dense - pruned) / count, -np.inf)
    return drop.max(axis=1)


def selective_risks(
    confidence: np.ndarray, wrong: np.ndarray, coverage: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """The error on the `coverage` fraction of samples a model is most confident on (it abstains
    on the rest): samples in order of falling confidence (ties by position) until their weight
    reaches coverage x the total, i.e. the ceil(coverage x n) most confident with unit weights.

    confidence, wrong: [n] per sample; weights: [r, n] bootstrap weights (None: one row of ones).
    Returns [r] risks (NaN where a row has no weight)."""
    order = np.argsort(-confidence, kind="stable")
    w = np.ones((1, len(order))) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w[:, order]
    before = np.cumsum(w, axis=1) - w
    covered = np.where(before < coverage * w.sum(axis=1, keepdims=True) - 1e-9, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (covered @ wrong[order].astype(np.float64)) / covered.sum(axis=1)


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
    options: StatisticsOptions | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The task's metrics as the report records them, and the bootstrap replicates of each metric
    (empty without a resampler). `indices` maps image positions to data-set indices."""
    options = options or StatisticsOptions()
    n = tally.n
    with_classes = classes <= MAX_CLASSES_RESAMPLED
    groups = options.groups
    columns = per_image_columns(tally, draws, classes, with_classes, groups)
    counts = columns.sum(axis=0)
    layout = Layout(len(groups), classes, with_classes)
    head = counts[: layout.klass][None, :]
    point = {k: float(v[0]) for k, v in metrics_from_sums(head, n, classes, False, len(groups)).items()}
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
    risks = _selective_risk_points(tally, options.coverages)
    point.update(risks)

    replicates: dict[str, np.ndarray] = {}
    if resampler is not None:
        replicates = metrics_from_sums(resampler.weighted_sums(columns), n, classes, with_classes, len(groups))
        replicates.update(_selective_risk_replicates(tally, draws, options.coverages, resampler))

    dense_right, pruned_right = int(counts[0]), int(counts[1])
    newly_wrong, newly_right, both_wrong = int(counts[3]), int(counts[4]), int(counts[5])
    both_right = n - newly_wrong - newly_right - both_wrong
    top5 = _top5_defined(tally)
    intervals = {}
    if draws == 1:  # samples are independent: closed forms
        drop = newcombe_paired(both_right, newly_wrong, newly_right, both_wrong, confidence)
        intervals["accuracy_drop"] = (*drop, "newcombe")
        proportions = [
            ("dense_accuracy", dense_right),
            ("pruned_accuracy", pruned_right),
            ("agreement", int(counts[2])),
            ("newly_wrong", newly_wrong),
            ("newly_right", newly_right),
        ]
        if top5:
            c = dict(zip(BASE_COLUMNS, counts))
            top_lost, top_gained = int(c["top5_newly_wrong"]), int(c["top5_newly_right"])
            top_both = int(c["dense_top5"]) - top_lost
            top_none = n - top_both - top_lost - top_gained
            interval = newcombe_paired(top_both, top_lost, top_gained, top_none, confidence)
            intervals["top5_drop"] = (*interval, "newcombe")
            proportions += [("dense_top5", int(c["dense_top5"])), ("pruned_top5", int(c["pruned_top5"]))]
        for metric, k in proportions:
            intervals[metric] = (*wilson(k, n, confidence), "wilson")
        for metric, distances in (("softmax_l2", tally.l2), ("softmax_linf", tally.linf)):
            intervals[metric] = (*mean_interval(distances.numpy(), confidence), "normal")
        for metric, values in _per_sample_means(tally).items():
            if np.isfinite(point[metric]):
                intervals[metric] = (*mean_interval(values, confidence), "normal")
    for metric, values in replicates.items():
        # several draws per image, or no closed form: the bootstrap (never for an undefined or
        # infinite estimate: the finite replicates would be the ones that left the cause out)
        if metric not in intervals and np.isfinite(point.get(metric, 0.0)):
            low, high = percentile_interval(values, confidence)
            if np.isfinite(low):
                intervals[metric] = (low, high, "bootstrap")
    if not top5:
        intervals = {k: v for k, v in intervals.items() if "top5" not in k}

    worst = int(np.argmax(drops)) if (class_n > 0).any() else None
    summary = {
        "n": n,
        "dense": _model_side("dense", point, dense_right, tally.dense_pred, top5),
        "pruned": _model_side("pruned", point, pruned_right, tally.pruned_pred, top5),
        **{
            k: point[k]
            for k in ("accuracy_drop", "agreement", "softmax_l2", "softmax_linf", "newly_wrong", "newly_right")
        },
        "top5_drop": _finite(point["top5_drop"]) if top5 else None,
        **{
            k: _finite(point[k])
            for k in ("ece_increase", "nll_increase", "brier_increase", "kl_divergence", "probability_loyalty")
        },
        "selective_risk": [
            {
                "coverage": coverage,
                "dense": _finite(point[f"dense_selective_risk@{coverage:g}"]),
                "pruned": _finite(point[f"pruned_selective_risk@{coverage:g}"]),
                "increase": _finite(point[f"selective_risk_increase@{coverage:g}"]),
            }
            for coverage in options.coverages
        ],
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
        **_group_results(counts, layout, groups),
        "calibration": _calibration(tally),
        "intervals": {k: {"low": lo, "high": hi, "method": m} for k, (lo, hi, m) in intervals.items()},
        "mcnemar_p": mcnemar_exact(newly_wrong, newly_right),
        "examples": examples(tally, draws, indices),
    }
    return summary, replicates


def _model_side(which: str, point: dict[str, float], right: int, preds: torch.Tensor, top5: bool) -> dict:
    """One model's own numbers in a task record."""
    return {
        "accuracy": point[f"{which}_accuracy"],
        "correct": right,
        "nonfinite": int((preds == F.NO_PREDICTION).sum()),
        "top5": _finite(point[f"{which}_top5"]) if top5 else None,
        "ece": _finite(point[f"{which}_ece"]),
        "nll": _finite(point[f"{which}_nll"]),
        "brier": _finite(point[f"{which}_brier"]),
    }


def _per_sample_means(tally: TaskTally) -> dict[str, np.ndarray]:
    """The metrics that are means of per-sample values, with those values (for closed-form
    intervals: paired differences for the increases)."""
    values = {"kl_divergence": tally.kl.double().numpy(), "probability_loyalty": 1.0 - tally.js.double().numpy()}
    if tally.label_sets is None:
        dense_nll, pruned_nll = -tally.dense_logp.double().numpy(), -tally.pruned_logp.double().numpy()
        dense_brier, pruned_brier = tally.dense_brier.double().numpy(), tally.pruned_brier.double().numpy()
        values.update(
            dense_nll=dense_nll,
            pruned_nll=pruned_nll,
            nll_increase=pruned_nll - dense_nll,
            dense_brier=dense_brier,
            pruned_brier=pruned_brier,
            brier_increase=pruned_brier - dense_brier,
        )
    return values


def _selective_risk_points(tally: TaskTally, coverages: tuple[float, ...]) -> dict[str, float]:
    """Per coverage: each model's selective risk and the increase (keys `..._selective_risk@0.8`)."""
    dense, pruned = (c.numpy() for c in tally.correctness())
    out = {}
    for coverage in coverages:
        d = float(selective_risks(tally.dense_confidence.numpy(), ~dense, coverage)[0]) if tally.n else float("nan")
        p = float(selective_risks(tally.pruned_confidence.numpy(), ~pruned, coverage)[0]) if tally.n else float("nan")
        out[f"dense_selective_risk@{coverage:g}"] = d
        out[f"pruned_selective_risk@{coverage:g}"] = p
        out[f"selective_risk_increase@{coverage:g}"] = p - d
    return out


def _selective_risk_replicates(
    tally: TaskTally, draws: int, coverages: tuple[float, ...], resampler: Resampler
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of each coverage's selective risk increase: the images' weights carry
    over to their draws, and each model re-sorts nothing (its order is fixed by its confidence)."""
    dense, pruned = (c.numpy() for c in tally.correctness())
    out: dict[str, list[np.ndarray]] = {f"selective_risk_increase@{c:g}": [] for c in coverages}
    for weights in resampler.weights():
        slot_weights = np.repeat(weights, draws, axis=1)
        for coverage in coverages:
            d = selective_risks(tally.dense_confidence.numpy(), ~dense, coverage, slot_weights)
            p = selective_risks(tally.pruned_confidence.numpy(), ~pruned, coverage, slot_weights)
            out[f"selective_risk_increase@{coverage:g}"].append(p - d)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def _group_results(counts: np.ndarray, layout: Layout, groups: dict[str, np.ndarray]) -> dict:
    """Per subgroup (data.groups) both models' accuracy, and the group with the largest drop."""
    if not groups:
        return {}
    block = counts[layout.group : layout.klass].reshape(len(groups), 3)
    results: list[dict] = []
    for name, (count, dense, pruned) in zip(groups, block):
        size = int(round(count))
        results.append(
            {
                "name": name,
                "n": size,
                "dense_accuracy": dense / count if size else None,
                "pruned_accuracy": pruned / count if size else None,
                "drop": (dense - pruned) / count if size else None,
            }
        )
    present = [r for r in results if r["drop"] is not None]
    worst = max(present, key=lambda r: float(r["drop"])) if present else None
    return {
        "groups": results,
        "group_accuracy_drop": None if worst is None else worst["drop"],
        "worst_group": worst,
    }


def _calibration(tally: TaskTally) -> dict:
    """Both models' reliability diagram: per ECE bin the samples, their mean top-1 probability
    and their accuracy (None for an empty bin)."""
    out: dict = {"bins": ECE_BINS}
    for which, right in zip(("dense", "pruned"), tally.correctness()):
        confidence = getattr(tally, f"{which}_confidence")
        written = ~torch.isnan(confidence)
        bins = ece_bins(confidence[written]).numpy()
        n = np.bincount(bins, minlength=ECE_BINS + 1)
        conf = np.bincount(bins, weights=confidence[written].double().numpy(), minlength=ECE_BINS + 1)
        acc = np.bincount(bins, weights=right[written].double().numpy(), minlength=ECE_BINS + 1)
        out[which] = {
            "n": n.tolist(),
            "confidence": [float(c / k) if k else None for c, k in zip(conf, n)],
            "accuracy": [float(a / k) if k else None for a, k in zip(acc, n)],
        }
    return out


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
