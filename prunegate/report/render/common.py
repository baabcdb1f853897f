"""What every renderer says the same way: a rule's status, its numbers as text, failed rules first.

The optional fields of the report (intervals, bounds, statuses, per-class counts, examples) may be
absent; every helper here returns None or an empty value for them rather than failing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from statistics import fmean

from prunegate.gate import metric_value
from prunegate.report.schema import Interval, Report, RuleRecord, TaskRecord, TaskValue

__all__ = [
    "NATS_METRICS",
    "PERCENT_METRICS",
    "POINT_METRICS",
    "SIGNED_METRICS",
    "pct",
    "signed_pct",
    "class_names",
    "compact_interval",
    "drop_metric",
    "error_text",
    "format_interval",
    "format_metric",
    "group_rows",
    "interval_text",
    "is_segmentation",
    "metric_label",
    "metric_unit",
    "mean_present",
    "nonfinite_text",
    "over_text",
    "rule_bound_text",
    "rule_status",
    "rules_failed_first",
    "sanity_line",
    "sentence",
    "segmentation_columns",
    "task_columns",
    "task_row",
    "task_status",
    "task_value",
    "threshold_text",
    "worst_class_iou_text",
    "worst_task",
]


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals: 0.1234 -> '12.34%'."""
    return f"{100 * x:.2f}%"


def signed_pct(x: float) -> str:
    """A fraction as signed percentage points: -0.01 -> '-1.00pp'."""
    return f"{100 * x:+.2f}pp"


# Each metric's unit, in one place (the renderers, the diff and JUnit all format through
# `format_metric`): a fraction as a percentage; a drop or an increase of a fraction in signed
# percentage points; a log-loss in nats (signed when it is an increase); else a plain decimal
# (signed when it is an increase).
PERCENT_METRICS = (
    "agreement",
    "dense_accuracy",
    "pruned_accuracy",
    "newly_wrong",
    "newly_right",
    "dense_miou",
    "pruned_miou",
    "dense_pixel_accuracy",
    "pruned_pixel_accuracy",
    "pixel_agreement",
    "dense_top5",
    "pruned_top5",
    "dense_ece",
    "pruned_ece",
    "probability_loyalty",
)
POINT_METRICS = (
    "accuracy_drop",
    "class_recall_drop",
    "miou_drop",
    "pixel_accuracy_drop",
    "class_iou_drop",
    "top5_drop",
    "ece_increase",
    "selective_risk_increase",
    "group_accuracy_drop",
)
NATS_METRICS = ("nll_increase", "dense_nll", "pruned_nll", "kl_divergence")
SIGNED_METRICS = ("nll_increase", "brier_increase")  # a nats or plain number shown with its sign


def metric_unit(metric: str) -> str:
    """The unit a metric's formatted value ends with: 'pp', '%', ' nats' or ''. `metric` may be a
    record's key (`selective_risk_increase@0.8`)."""
    metric = metric.partition("@")[0]
    if metric in POINT_METRICS:
        return "pp"
    if metric in PERCENT_METRICS:
        return "%"
    return " nats" if metric in NATS_METRICS else ""


def sequential_line(report: Report) -> str | None:
    """'sequential gate: stopped after N of M images (K %): why'; None for a full pass."""
    sequential = report.sequential
    if sequential is None:
        return None
    used, total = sequential.used()
    share = f"{100 * used / total:.0f} %" if total else "n/a"
    return (
        f"sequential gate: stopped after {used:,} of {total:,} images ({share}): {sequential.stopped} "
        f"({sequential.looks} looks, anytime-valid at {sequential.confidence:.0%})"
    )


def sanity_line(report: Report) -> str | None:
    """'sanity: the dense model scored 91.20% on clean (1,000 images), above chance (10.00%, p <
    1e-300)' and the expected accuracy when the policy gives one; 'sanity check not run: why' when
    it was skipped; None for a report from before the check."""
    sanity = report.sanity
    if sanity is None:
        return None
    if not sanity.checked:
        return f"sanity check not run: {sanity.reason or 'no reason recorded'}"
    if sanity.dense_accuracy is None or sanity.chance is None or sanity.n is None:
        return "sanity: checked"
    p = sanity.p_value
    p_text = "n/a" if p is None else ("p < 1e-300" if p < 1e-300 else f"p = {p:.2g}")
    line = (
        f"sanity: the dense model scored {pct(sanity.dense_accuracy)} on {sanity.task or 'clean'} "
        f"({sanity.n:,} images), above chance ({pct(sanity.chance)}, {p_text})"
    )
    if sanity.expected_accuracy is not None:
        tolerance = "" if sanity.tolerance is None else f" less {100 * sanity.tolerance:.2f}pp"
        line += f"; expected at least {pct(sanity.expected_accuracy)}{tolerance}"
    return line


def sentence(line: str) -> str:
    """A console line ('sanity: ...') as a sentence for a page: capitalised, with a full stop."""
    return line[:1].upper() + line[1:] + "."


def format_metric(metric: str, value: float | None) -> str:
    """A metric's value as text in its unit ('n/a' when missing or NaN): '+1.20pp', '91.00%',
    '+0.031 nats', '0.0123'. `metric` may be a record's key (`selective_risk_increase@0.8`)."""
    if value is None or value != value:
        return "n/a"
    metric = metric.partition("@")[0]
    unit = metric_unit(metric)
    if unit == "pp":
        return signed_pct(value)
    if unit == "%":
        return pct(value)
    sign = "+" if metric in SIGNED_METRICS else ""
    if unit == " nats":
        return f"{value:{sign}.3f} nats"
    return f"{value:{sign}.4f}"


def compact_interval(metric: str, low: float, high: float) -> str:
    """An interval with its unit once at the end: '[-1.20, +0.40]pp', '[+0.010, +0.052] nats'."""
    unit = metric_unit(metric)

    def short(x: float) -> str:
        return format_metric(metric, x).removesuffix(unit) if unit else format_metric(metric, x)

    return f"[{short(low)}, {short(high)}]{unit}"


def metric_label(rule: RuleRecord) -> str:
    """A rule's metric as the renderers name it: with its coverage for the selective risk
    (`selective_risk_increase@0.9`)."""
    return f"{rule.metric}@{rule.coverage:g}" if rule.coverage is not None else rule.metric


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


def is_segmentation(report: Report) -> bool:
    """Whether the report's task records hold segmentation metrics (mIoU) rather than accuracies."""
    return report.task == "segmentation"


# The task table's metric columns per prediction kind, as (metric, header): the dense and the
# pruned score, the drop (the column an interval goes with) and the agreement.
TASK_COLUMNS = {
    "classification": (
        ("dense_accuracy", "dense acc"),
        ("pruned_accuracy", "pruned acc"),
        ("accuracy_drop", "drop"),
        ("agreement", "agreement"),
    ),
    "segmentation": (
        ("dense_miou", "dense mIoU"),
        ("pruned_miou", "pruned mIoU"),
        ("miou_drop", "mIoU drop"),
        ("pixel_agreement", "pixel agreement"),
    ),
}


def task_columns(report: Report) -> tuple[tuple[str, str], ...]:
    """The task table's metric columns for the report's kind: (metric, header) each."""
    return TASK_COLUMNS[report.task]


def drop_metric(report: Report) -> str:
    """The metric of the task table's drop column: accuracy_drop, or miou_drop for segmentation."""
    return task_columns(report)[2][0]


def error_text(report: Report) -> str:
    """What the corruption summary counts as a model's error on a task."""
    return "1 - mIoU" if is_segmentation(report) else "top-1 error"


def task_value(task: TaskRecord, metric: str) -> float | None:
    """A task's value of any metric (gate.metric_value); None where the task has none."""
    value = metric_value(task, metric)
    return None if math.isnan(value) else value


def mean_present(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def worst_class_iou_text(tasks: list[TaskRecord]) -> str:
    """The class whose IoU dropped most over the tasks (a task, or a group): 'road +12.00pp',
    'class 2 +12.00pp' without class names; '' when no task records one."""
    worst = [t.worst_class_iou for t in tasks if t.worst_class_iou is not None]
    if not worst:
        return ""
    top = max(worst, key=lambda w: w.drop)
    name = top.name if top.name is not None else f"class {top.label}"
    return f"{name} {format_metric('class_iou_drop', top.drop)}"


def nonfinite_text(tasks: list[TaskRecord]) -> str:
    """The non-finite outputs (segmentation: pixels) of both models over the tasks: 'dense / pruned'."""
    return f"{sum(t.dense.nonfinite for t in tasks):,} / {sum(t.pruned.nonfinite for t in tasks):,}"


def segmentation_columns(report: Report) -> list[tuple[str, Callable[[list[TaskRecord]], str]]]:
    """The segmentation task table's columns after the metrics, as (header, a row's text from its
    tasks): the worst class by IoU drop, and the non-finite pixels when any task has some. Empty
    for classification. The text is the report's own: a renderer escapes it."""
    if not is_segmentation(report):
        return []
    columns: list[tuple[str, Callable[[list[TaskRecord]], str]]] = [("worst class", worst_class_iou_text)]
    if any(t.dense.nonfinite or t.pruned.nonfinite for t in report.tasks):
        columns.append(("non-finite px", nonfinite_text))
    return columns


_ROW_KEYS = ("dense_accuracy", "pruned_accuracy", "accuracy_drop", "agreement", "softmax_l2")


def task_row(task: TaskRecord, metrics: Iterable[str] = _ROW_KEYS) -> dict:
    """A task's name, n, its `metrics` (None where it has none) and, as `tasks`, the task itself."""
    return {"name": task.name, "n": task.n, **{m: task_value(task, m) for m in metrics}, "tasks": [task]}


def group_rows(tasks: list[TaskRecord], metrics: Iterable[str] = _ROW_KEYS) -> list[dict]:
    """One row per task group (clean, ood, noise, each corruption): means of `metrics` over its
    tasks, and its tasks as `tasks`."""
    metrics = tuple(metrics)
    groups: dict[str, list[TaskRecord]] = defaultdict(list)
    for task in tasks:
        groups[task.group].append(task)
    rows = []
    for group, members in groups.items():
        label = members[0].name if len(members) == 1 else f"{group} (mean of {len(members)})"
        means = {m: mean_present(task_value(t, m) for t in members) for m in metrics}
        rows.append({"name": label, "n": sum(t.n for t in members), **means, "tasks": members})
    return rows


def failing_tasks(report: Report) -> set[str]:
    """Names of the tasks that failed a rule (on their own)."""
    return {t.task for r in report.rules for t in r.per_task if not t.passed}
