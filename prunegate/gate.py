"""Rules -> results -> verdict. Pure: no I/O, no models.

A rule selects tasks by glob, reads one metric from each, aggregates (`each` checks every task
on its own; `mean`/`min`/`max` check one number) and compares with its `max` or `min`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import fmean

from prunegate.plan import match_tasks
from prunegate.policy import Rule

# Accuracies are ratios of counts; a drop of exactly the tolerance must pass despite rounding.
TOLERANCE = 1e-12


def metric_value(summary: dict, metric: str) -> float:
    if metric == "dense_accuracy":
        return summary["dense"]["accuracy"]
    if metric == "pruned_accuracy":
        return summary["pruned"]["accuracy"]
    return summary[metric]


@dataclass
class TaskValue:
    task: str
    value: float
    passed: bool


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

    def to_dict(self) -> dict:
        return asdict(self)


def _within(value: float, comparison: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value <= threshold + TOLERANCE if comparison == "max" else value >= threshold - TOLERANCE


def evaluate_rule(rule: Rule, summaries: dict[str, dict]) -> RuleResult:
    comparison = "max" if rule.max is not None else "min"
    threshold = rule.max if rule.max is not None else rule.min
    names = match_tasks(rule.globs, list(summaries))
    values = [metric_value(summaries[n], rule.metric) for n in names]
    per_task = [TaskValue(n, v, _within(v, comparison, threshold)) for n, v in zip(names, values)]
    if not values or any(math.isnan(v) for v in values):
        value = float("nan")  # nothing to check, or a task without a number: never a pass
    elif rule.aggregate == "mean":
        value = fmean(values)
    elif rule.aggregate == "min" or (rule.aggregate == "each" and comparison == "min"):
        value = min(values)
    else:  # "max", or "each" against a max: the worst task
        value = max(values)
    return RuleResult(rule.name, rule.metric, rule.globs, rule.aggregate, comparison, threshold, value,
                      _within(value, comparison, threshold), per_task)


def evaluate_rules(rules: list[Rule], summaries: dict[str, dict]) -> list[RuleResult]:
    return [evaluate_rule(rule, summaries) for rule in rules]


def verdict(results: list[RuleResult]) -> str:
    return "pass" if results and all(r.passed for r in results) else "fail"
