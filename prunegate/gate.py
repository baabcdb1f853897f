"""Rules -> results -> verdict. Pure: no I/O, no models.

A rule selects tasks by glob, reads one metric from each, aggregates (`each` checks every task
on its own; `mean`/`min`/`max` check one number) and compares with its `max` or `min`.

With a confidence level, a rule compares the conservative end of the value's interval (upper
bound of a drop, lower bound of an agreement). Three outcomes: pass (the whole interval is
within the threshold), fail (the whole interval is beyond it) and undecided (it straddles the
threshold: more samples are needed). A safety gate counts undecided as not passed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Optional

import numpy as np

from prunegate.plan import match_tasks
from prunegate.policy import Rule

# Accuracies are ratios of counts; a drop of exactly the tolerance must pass despite rounding.
TOLERANCE = 1e-12
# A task on which either model gives NaN or infinite logits for more than this fraction of its
# samples measures nothing: every rule over it fails, whatever its metric says (two models that
# output only NaN agree perfectly and drop no accuracy).
NONFINITE_LIMIT = 0.5


def nonfinite_share(summary: dict) -> tuple[float, str]:
    """(the larger share of non-finite outputs of the two models on a task, which model)."""
    n = max(int(summary.get("n") or 0), 1)
    shares = {which: summary[which].get("nonfinite", 0) / n for which in ("dense", "pruned") if which in summary}
    if not shares:
        return 0.0, ""
    which = max(shares, key=lambda w: shares[w])
    return shares[which], which


def nonfinite_warnings(summaries: dict[str, dict]) -> list[str]:
    """One line per task where any output was NaN or infinite (those samples count as wrong)."""
    lines = []
    for name, summary in summaries.items():
        counts = {w: summary[w].get("nonfinite", 0) for w in ("dense", "pruned") if w in summary}
        found = {w: c for w, c in counts.items() if c}
        if found:
            parts = ", ".join(f"{w} {c} of {summary['n']}" for w, c in found.items())
            lines.append(f"{name}: non-finite logits ({parts}): counted as wrong and disagreeing")
    return lines


def metric_value(summary: dict, metric: str) -> float:
    """The metric's value; NaN where it is undefined (e.g. the error consistency of two models
    that make no errors), and NaN never passes."""
    if metric == "dense_accuracy":
        return summary["dense"]["accuracy"]
    if metric == "pruned_accuracy":
        return summary["pruned"]["accuracy"]
    value = summary.get(metric)
    return float("nan") if value is None else value


@dataclass
class TaskValue:
    task: str
    value: float
    passed: bool
    bound: Optional[float] = None
    status: Optional[str] = None


@dataclass
class RuleResult:
    name: str
    metric: str
    tasks: list[str]
    aggregate: str
    comparison: str  # "max" (value must not exceed) or "min" (value must reach)
    threshold: float
    value: float
    passed: bool
    per_task: list[TaskValue]
    confidence: Optional[float] = None
    bound: Optional[float] = None
    interval: Optional[dict] = None
    status: str = "pass"
    samples_needed: Optional[int] = None
    note: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evidence:
    """What the gate may read per task: the summaries and, for intervals, the bootstrap replicates."""

    summaries: dict[str, dict]
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    confidence: Optional[float] = None


def _within(value: float, comparison: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value <= threshold + TOLERANCE if comparison == "max" else value >= threshold - TOLERANCE


def _status(low: float, high: float, comparison: str, threshold: float) -> str:
    conservative, optimistic = (high, low) if comparison == "max" else (low, high)
    if _within(conservative, comparison, threshold):
        return "pass"
    if math.isnan(optimistic) or not _within(optimistic, comparison, threshold):
        return "fail"
    return "undecided"


def _aggregate(values: list[float], aggregate: str, comparison: str) -> float:
    if not values or any(math.isnan(v) for v in values):
        return float("nan")  # nothing to check, or a task without a number: never a pass
    if aggregate == "mean":
        return fmean(values)
    if aggregate == "min" or (aggregate == "each" and comparison == "min"):
        return min(values)
    return max(values)  # "max", or "each" against a max: the worst task


def _interval(summary: dict, metric: str) -> tuple[float, float]:
    found = summary.get("intervals", {}).get(metric)
    if found is None:  # a metric without an interval is decided on its value
        value = metric_value(summary, metric)
        return (value, value)
    return (found["low"], found["high"])


def _samples_needed(n: int, value: float, low: float, high: float, comparison: str, threshold: float) -> Optional[int]:
    """Interval half-widths shrink like 1/sqrt(n): the n at which the conservative end would
    reach the threshold's side, if the estimate stayed where it is."""
    half = (high - value) if comparison == "max" else (value - low)
    margin = abs(threshold - value)
    if margin <= TOLERANCE or half <= 0:
        return None
    return max(n + 1, math.ceil(n * (half / margin) ** 2))


def evaluate_rule(rule: Rule, evidence: Evidence | dict[str, dict]) -> RuleResult:
    """The rule's result; failed, with a note, when a task it reads has mostly non-finite outputs."""
    result = _evaluate_rule(rule, evidence if isinstance(evidence, Evidence) else Evidence(evidence))
    summaries = evidence.summaries if isinstance(evidence, Evidence) else evidence
    broken = {}
    for task in result.per_task:
        share, which = nonfinite_share(summaries[task.task])
        if share > NONFINITE_LIMIT:
            broken[task.task] = f"{which} {share:.0%}"
            task.passed, task.status = False, "fail" if task.status is not None else None
    if broken:
        result.passed, result.status, result.samples_needed = False, "fail", None
        shown = ", ".join(f"{t} ({s})" for t, s in list(broken.items())[:3]) + (" ..." if len(broken) > 3 else "")
        result.note = (f"failed: most outputs are NaN or infinite on {shown}; a task where a model outputs no "
                       "numbers measures nothing")
    return result


def _evaluate_rule(rule: Rule, evidence: Evidence) -> RuleResult:
    summaries, confidence = evidence.summaries, evidence.confidence
    comparison = "max" if rule.max is not None else "min"
    threshold = rule.max if rule.max is not None else rule.min
    names = match_tasks(rule.globs, list(summaries))
    values = [metric_value(summaries[n], rule.metric) for n in names]
    value = _aggregate(values, rule.aggregate, comparison)
    if confidence is None:
        per_task = [TaskValue(n, v, _within(v, comparison, threshold)) for n, v in zip(names, values)]
        passed = _within(value, comparison, threshold)
        return RuleResult(rule.name, rule.metric, rule.globs, rule.aggregate, comparison, threshold, value, passed,
                          per_task, status="pass" if passed else "fail")

    bounds = [_interval(summaries[n], rule.metric) for n in names]
    per_task = []
    for name, v, (low, high) in zip(names, values, bounds):
        status = _status(low, high, comparison, threshold)
        per_task.append(TaskValue(name, v, status == "pass", high if comparison == "max" else low, status))
    if rule.aggregate == "mean":
        low, high = _mean_interval(names, rule.metric, evidence, value)
    elif not bounds:
        low = high = float("nan")
    else:  # the extreme of intervals bounds the extreme of the values
        pick = min if (rule.aggregate == "min" or (rule.aggregate == "each" and comparison == "min")) else max
        low, high = pick(b[0] for b in bounds), pick(b[1] for b in bounds)
    if rule.aggregate == "each":
        statuses = {t.status for t in per_task}
        status = "fail" if (not per_task or "fail" in statuses) else "undecided" if "undecided" in statuses else "pass"
    else:
        status = _status(low, high, comparison, threshold)
    needed = None
    if status == "undecided":
        n = max(summaries[t]["n"] for t in names)
        if rule.aggregate == "each":
            undecided = [(t, b) for t, b in zip(per_task, bounds) if t.status == "undecided"]
            estimates = [_samples_needed(summaries[t.task]["n"], t.value, lo, hi, comparison, threshold)
                         for t, (lo, hi) in undecided]
            needed = None if None in estimates else max(estimates)
        else:
            needed = _samples_needed(n, value, low, high, comparison, threshold)
    return RuleResult(rule.name, rule.metric, rule.globs, rule.aggregate, comparison, threshold, value,
                      status == "pass", per_task, confidence, high if comparison == "max" else low,
                      {"low": low, "high": high, "method": _method(names, rule, evidence)}, status, needed)


def _mean_interval(names: list[str], metric: str, evidence: Evidence, value: float) -> tuple[float, float]:
    """Percentile interval of the mean over tasks, from replicates resampled jointly per data set."""
    from prunegate.metrics.intervals import percentile_interval

    series = [evidence.replicates.get(n, {}).get(metric) for n in names]
    if not series or any(s is None for s in series):
        return (value, value)
    return percentile_interval(np.mean(np.stack(series), axis=0), evidence.confidence)


def _method(names: list[str], rule: Rule, evidence: Evidence) -> str:
    if rule.aggregate == "mean":
        return "bootstrap"
    methods = {evidence.summaries[n].get("intervals", {}).get(rule.metric, {}).get("method", "none") for n in names}
    return "+".join(sorted(methods)) if methods else "none"


def evaluate_rules(rules: list[Rule], evidence: Evidence | dict[str, dict]) -> list[RuleResult]:
    return [evaluate_rule(rule, evidence) for rule in rules]


def verdict(results: list[RuleResult]) -> str:
    return "pass" if results and all(r.passed for r in results) else "fail"
