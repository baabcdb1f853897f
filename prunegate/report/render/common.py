"""What every renderer says the same way: a rule's status, its numbers as text, failed rules first.

The optional fields of the report (intervals, bounds, statuses, per-class counts, examples) may be
absent; every helper here returns None or an empty value for them rather than failing.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from prunegate.report.schema import Interval, Report, RuleRecord, TaskRecord, TaskValue

__all__ = [
    "PERCENT_METRICS",
    "POINT_METRICS",
    "pct",
    "signed_pct",
    "class_names",
    "format_interval",
    "format_metric",
    "group_rows",
    "interval_text",
    "over_text",
    "rule_bound_text",
    "rule_status",
    "rules_failed_first",
    "task_status",
    "threshold_text",
    "worst_task",
]


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals: 0.1234 -> '12.34%'."""
    return f"{100 * x:.2f}%"


def signed_pct(x: float) -> str:
    """A fraction as signed percentage points: -0.01 -> '-1.00pp'."""
    return f"{100 * x:+.2f}pp"


PERCENT_METRICS = ("agreement", "dense_accuracy", "pruned_accuracy", "newly_wrong", "newly_right")
POINT_METRICS = ("accuracy_drop", "class_recall_drop")


def format_metric(metric: str, value: float | None) -> str:
    """A metric's value as text in its unit ('n/a' when missing or NaN)."""
    if value is None or value != value:
        return "n/a"
    if metric in POINT_METRICS:
        return signed_pct(value)
    if metric in PERCENT_METRICS:
        return pct(value)
    return f"{value:.4f}"


def threshold_text(rule: RuleRecord) -> str:
    """A rule's threshold with its comparison: '≤ +1.00pp', '≥ 90.00%'."""
    sign = "≤" if rule.comparison == "max" else "≥"
    return f"{sign} {format_metric(rule.metric, rule.threshold)}"


STATUS_LABEL = {"pass": "PASS", "fail": "FAIL", "undecided": "UNDECIDED"}


def rule_status(rule: RuleRecord) -> str:
    """pass, fail or undecided. `passed` decides; `status` only refines a failure (undecided)."""
    if rule.passed:
        return "pass"
    return "undecided" if rule.status == "undecided" else "fail"


def task_status(value: TaskValue) -> str:
    """pass, fail or undecided, for one task of a rule (as `rule_status`)."""
    if value.passed:
        return "pass"
    return "undecided" if value.status == "undecided" else "fail"


def rules_failed_first(report: Report) -> list[RuleRecord]:
    """Rules that did not pass first (in policy order), then the passed ones."""
    return sorted(report.rules, key=lambda r: r.passed)


def worst_task(rule: RuleRecord) -> TaskValue | None:
    """The task that decided the rule: the worst failing one, else the worst one."""
    if not rule.per_task:
        return None
    pool = [t for t in rule.per_task if not t.passed] or rule.per_task
    pick = max if rule.comparison == "max" else min
    return pick(pool, key=lambda t: t.value)


def over_text(rule: RuleRecord) -> str:
    """What the value is taken over: one task's name, or e.g. 'min of 3 tasks'."""
    if len(rule.per_task) == 1:
        return rule.per_task[0].task
    if not rule.per_task:
        return "-"
    return f"{rule.aggregate} of {len(rule.per_task)} tasks"


def format_interval(metric: str, interval: Interval | None) -> str | None:
    """An interval as '[low, high]' in the metric's unit; None when there is none."""
    if interval is None:
        return None
    return f"[{format_metric(metric, interval.low)}, {format_metric(metric, interval.high)}]"


def interval_text(rule: RuleRecord) -> str | None:
    """A rule's interval with its confidence level: '95% [low, high]'; None when there is none."""
    text = format_interval(rule.metric, rule.interval)
    if text is None:
        return None
    level = f"{100 * rule.confidence:g}% " if rule.confidence is not None else ""
    return f"{level}{text}"


def rule_bound_text(rule: RuleRecord) -> str | None:
    """The bound the rule compared with its threshold, as text; None when there is none."""
    return None if rule.bound is None else format_metric(rule.metric, rule.bound)


def class_names(report: Report, source: str | None) -> list[str] | None:
    """The class names of a task's data set, else of the test set, else None."""
    by_name = {d.name: d.classes for d in report.data}
    return by_name.get(source or "") or by_name.get("test") or next((c for c in by_name.values() if c), None)


def class_name(names: list[str] | None, label: int) -> str:
    if label < 0:
        return "no prediction"
    if names and label < len(names):
        return names[label]
    return str(label)


_ROW_KEYS = ("dense_accuracy", "pruned_accuracy", "accuracy_drop", "agreement", "softmax_l2")


def task_row(task: TaskRecord) -> dict:
    return {
        "name": task.name,
        "n": task.n,
        "dense_accuracy": task.dense.accuracy,
        "pruned_accuracy": task.pruned.accuracy,
        "accuracy_drop": task.accuracy_drop,
        "agreement": task.agreement,
        "softmax_l2": task.softmax_l2,
    }


def group_rows(tasks: list[TaskRecord]) -> list[dict]:
    """One row per task group (clean, ood, noise, each corruption): means over its tasks."""
    groups: dict[str, list[TaskRecord]] = defaultdict(list)
    for task in tasks:
        groups[task.group].append(task)
    rows = []
    for group, members in groups.items():
        rows_ = [task_row(t) for t in members]
        label = members[0].name if len(members) == 1 else f"{group} (mean of {len(members)})"
        rows.append(
            {"name": label, "n": sum(t.n for t in members), **{k: fmean(r[k] for r in rows_) for k in _ROW_KEYS}}
        )
    return rows


def failing_tasks(report: Report) -> set[str]:
    """Names of the tasks that failed a rule (on their own)."""
    return {t.task for r in report.rules for t in r.per_task if not t.passed}
