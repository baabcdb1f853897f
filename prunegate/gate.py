"""Rules -> results -> verdict. Pure: no I/O, no models.

A rule selects tasks by glob, reads one metric from each, aggregates (`each` checks every task
on its own; `mean`/`min`/`max` check one number) and compares with its `max` or `min`.

With a confidence level, a rule compares the conservative end of the value's interval (upper
bound of a drop, lower bound of an agreement). Three outcomes: pass (the whole interval is
within the threshold), fail (the whole interval is beyond it) and undecided (it straddles the
threshold: more samples are needed). A safety gate counts undecided as not passed.

The gate reads the report's task records and writes the report's rule records
(prunegate.report.schema): there is no second vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import fmean
from typing import Literal

import numpy as np

from prunegate.plan import match_tasks
from prunegate.policy import METRICS, Rule
from prunegate.report.schema import Interval, RuleRecord, TaskRecord, TaskValue

Comparison = Literal["max", "min"]
Status = Literal["pass", "fail", "undecided"]

# Accuracies are ratios of counts; a drop of exactly the tolerance must pass despite rounding.
TOLERANCE = 1e-12
# A task on which either model gives NaN or infinite logits for more than this fraction of its
# samples measures nothing: every rule over it fails, whatever its metric says (two models that
# output only NaN agree perfectly and drop no accuracy).
NONFINITE_LIMIT = 0.5


@dataclass
class Evidence:
    """What the gate may read: the tasks' records and, for intervals of means, the bootstrap replicates."""

    records: list[TaskRecord]
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    confidence: float | None = None
    # gate.sequential: per rule name, its tasks' anytime-valid intervals and ("*") the rule's own;
    # they decide the rule in place of the fixed-sample intervals, which optional stopping voids
    anytime: dict[str, dict[str, tuple[float, float]]] | None = None


def nonfinite_share(record: TaskRecord) -> tuple[float, str]:
    """(the larger share of non-finite outputs of the two models on a task, which model): of its
    samples, or for segmentation of its valid pixels."""
    n = max(record.n if record.pixels is None else record.pixels, 1)
    shares = {"dense": record.dense.nonfinite / n, "pruned": record.pruned.nonfinite / n}
    which = max(shares, key=lambda w: shares[w])
    return shares[which], which


def nonfinite_warnings(records: list[TaskRecord]) -> list[str]:
    """One line per task where any output was NaN or infinite (those samples count as wrong)."""
    lines = []
    for record in records:
        counts = {"dense": record.dense.nonfinite, "pruned": record.pruned.nonfinite}
        total = f"{record.n}" if record.pixels is None else f"{record.pixels} pixels"
        parts = ", ".join(f"{w} {c} of {total}" for w, c in counts.items() if c)
        if parts:
            lines.append(f"{record.name}: non-finite logits ({parts}): counted as wrong and disagreeing")
    return lines


def metric_value(record: TaskRecord, metric: str) -> float:
    """The metric's value; NaN where it is undefined (e.g. the error consistency of two models
    that make no errors), and NaN never passes."""
    metric, _, coverage = metric.partition("@")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    if coverage:  # selective_risk_increase@0.8: the record's entry at that coverage
        found = next((r.increase for r in record.selective_risk if f"{r.coverage:g}" == coverage), None)
        return float("nan") if found is None else float(found)
    which, _, side_metric = metric.partition("_")
    if which in ("dense", "pruned"):  # dense_accuracy, pruned_miou, ...: one model's own number
        value = getattr(getattr(record, which), side_metric)
    else:
        value = getattr(record, metric)
    return float("nan") if value is None else float(value)


def _within(value: float, comparison: Comparison, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value <= threshold + TOLERANCE if comparison == "max" else value >= threshold - TOLERANCE


def _status(low: float, high: float, comparison: Comparison, threshold: float) -> Status:
    conservative, optimistic = (high, low) if comparison == "max" else (low, high)
    if _within(conservative, comparison, threshold):
        return "pass"
    if math.isnan(optimistic) or not _within(optimistic, comparison, threshold):
        return "fail"
    return "undecided"


def _aggregate(values: list[float], aggregate: str, comparison: Comparison) -> float:
    if not values or any(math.isnan(v) for v in values):
        return float("nan")  # nothing to check, or a task without a number: never a pass
    if aggregate == "mean":
        return fmean(values)
    if aggregate == "min" or (aggregate == "each" and comparison == "min"):
        return min(values)
    return max(values)  # "max", or "each" against a max: the worst task


def _interval(record: TaskRecord, metric: str) -> tuple[float, float]:
    found = record.intervals.get(metric)
    if found is None:  # a metric without an interval is decided on its value
        value = metric_value(record, metric)
        return (value, value)
    return (found.low, found.high)


def _samples_needed(
    n: int, value: float, low: float, high: float, comparison: Comparison, threshold: float
) -> int | None:
    """Interval half-widths shrink like 1/sqrt(n): the n at which the conservative end would
    reach the threshold's side, if the estimate stayed where it is."""
    half = (high - value) if comparison == "max" else (value - low)
    margin = abs(threshold - value)
    if math.isnan(half) or math.isnan(margin) or margin <= TOLERANCE or half <= 0:
        return None  # no estimate to extrapolate from (e.g. a task's metric is undefined)
    return max(n + 1, math.ceil(n * (half / margin) ** 2))


def _threshold(rule: Rule) -> tuple[Comparison, float]:
    if rule.max is not None:
        return "max", rule.max
    if rule.min is not None:
        return "min", rule.min
    raise ValueError(f"rule {rule.name!r} sets neither 'max' nor 'min'")


def evaluate_rule(rule: Rule, evidence: Evidence) -> RuleRecord:
    """The rule's result; failed, with a note, when a task it reads has mostly non-finite outputs."""
    records = {r.name: r for r in evidence.records}
    result = _evaluate_rule(rule, records, evidence)
    broken = {}
    for task in result.per_task:
        share, which = nonfinite_share(records[task.task])
        if share > NONFINITE_LIMIT:
            broken[task.task] = f"{which} {share:.0%}"
            task.passed = False
            if task.status is not None:
                task.status = "fail"
    if broken:
        result.passed, result.status, result.samples_needed = False, "fail", None
        shown = ", ".join(f"{t} ({s})" for t, s in list(broken.items())[:3]) + (" ..." if len(broken) > 3 else "")
        result.note = (
            f"failed: most outputs are NaN or infinite on {shown}; a task where a model outputs no "
            "numbers measures nothing"
        )
    return result


def _evaluate_rule(rule: Rule, records: dict[str, TaskRecord], evidence: Evidence) -> RuleRecord:
    confidence = evidence.confidence
    comparison, threshold = _threshold(rule)
    names = match_tasks(rule.globs, list(records))
    values = [metric_value(records[n], rule.key) for n in names]
    value = _aggregate(values, rule.aggregate, comparison)
    if confidence is None:
        per_task = [
            TaskValue(task=n, value=v, passed=_within(v, comparison, threshold), bound=None, status=None)
            for n, v in zip(names, values)
        ]
        return _rule_record(
            rule,
            comparison,
            threshold,
            value,
            per_task,
            status="pass" if _within(value, comparison, threshold) else "fail",
        )

    anytime = (evidence.anytime or {}).get(rule.name)
    bounds = [anytime[n] if anytime and n in anytime else _interval(records[n], rule.key) for n in names]
    per_task = []
    for name, v, (low, high) in zip(names, values, bounds):
        task_status = _status(low, high, comparison, threshold)
        per_task.append(
            TaskValue(
                task=name,
                value=v,
                passed=task_status == "pass",
                bound=high if comparison == "max" else low,
                status=task_status,
            )
        )
    if anytime is not None and rule.aggregate != "each":
        low, high = anytime["*"]
    elif rule.aggregate == "mean":
        low, high = _mean_interval(names, rule.key, evidence.replicates, confidence, value)
    elif not bounds:
        low = high = float("nan")
    else:  # the extreme of intervals bounds the extreme of the values
        pick = min if (rule.aggregate == "min" or (rule.aggregate == "each" and comparison == "min")) else max
        low, high = pick(b[0] for b in bounds), pick(b[1] for b in bounds)
    status: Status
    if rule.aggregate == "each":
        statuses = {t.status for t in per_task}
        status = "fail" if (not per_task or "fail" in statuses) else "undecided" if "undecided" in statuses else "pass"
    else:
        status = _status(low, high, comparison, threshold)
    needed = None
    if status == "undecided":
        if rule.aggregate == "each":
            undecided = [(t, b) for t, b in zip(per_task, bounds) if t.status == "undecided"]
            estimates = [
                _samples_needed(records[t.task].n, t.value, lo, hi, comparison, threshold) for t, (lo, hi) in undecided
            ]
            needed = None if None in estimates else max(e for e in estimates if e is not None)
        else:
            n = max(records[t].n for t in names)
            needed = _samples_needed(n, value, low, high, comparison, threshold)
    return _rule_record(
        rule,
        comparison,
        threshold,
        value,
        per_task,
        status=status,
        confidence=confidence,
        bound=high if comparison == "max" else low,
        interval=Interval(low=low, high=high, method="anytime" if anytime else _method(names, rule, records)),
        samples_needed=needed,
    )


def _rule_record(
    rule: Rule,
    comparison: Comparison,
    threshold: float,
    value: float,
    per_task: list[TaskValue],
    *,
    status: Status,
    confidence: float | None = None,
    bound: float | None = None,
    interval: Interval | None = None,
    samples_needed: int | None = None,
) -> RuleRecord:
    """The rule's record: passed exactly when its status is pass."""
    return RuleRecord(
        name=rule.name,
        metric=rule.metric,
        tasks=rule.globs,
        aggregate=rule.aggregate,
        comparison=comparison,
        threshold=threshold,
        value=value,
        passed=status == "pass",
        per_task=per_task,
        confidence=confidence,
        bound=bound,
        interval=interval,
        status=status,
        samples_needed=samples_needed,
        note=None,
        coverage=float(rule.key.partition("@")[2]) if "@" in rule.key else None,
    )


def _mean_interval(
    names: list[str], metric: str, replicates: dict[str, dict[str, np.ndarray]], confidence: float, value: float
) -> tuple[float, float]:
    """Percentile interval of the mean over tasks, from replicates resampled jointly per data set."""
    from prunegate.metrics.intervals import percentile_interval

    series = []
    for name in names:
        found = replicates.get(name, {}).get(metric)
        if found is None:
            return (value, value)
        series.append(found)
    if not series:
        return (value, value)
    return percentile_interval(np.mean(np.stack(series), axis=0), confidence)


def _method(names: list[str], rule: Rule, records: dict[str, TaskRecord]) -> str:
    if rule.aggregate == "mean":
        return "bootstrap"
    methods = {records[n].intervals[rule.key].method if rule.key in records[n].intervals else "none" for n in names}
    return "+".join(sorted(methods)) if methods else "none"


def evaluate_rules(rules: list[Rule], evidence: Evidence) -> list[RuleRecord]:
    """Every rule's result, in the policy's order."""
    return [evaluate_rule(rule, evidence) for rule in rules]


def verdict(results: list[RuleRecord]) -> Literal["pass", "fail"]:
    """pass when there are results and every one passed; otherwise fail (undecided counts as not passed)."""
    return "pass" if results and all(r.passed for r in results) else "fail"
