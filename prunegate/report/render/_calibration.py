"""What the renderers show of the metrics beyond top-1 (issue 19): the task-table columns the
policy's rules ask for, and the calibration summary of one task for the HTML report.

A column appears only where a rule asks for its metric (a rule on ece_increase, dense_ece or
pruned_ece adds "ECE +"; on selective_risk_increase, one column per coverage), so a policy
without such rules renders as it always did. A report without the fields (older reports,
segmentation) shows "n/a" in an asked column and no summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prunegate.policy import DEFAULT_COVERAGE
from prunegate.report.render.common import (
    compact_interval,
    format_metric,
    is_segmentation,
    mean_present,
    task_value,
)
from prunegate.report.schema import Report, RuleRecord, TaskRecord

__all__ = ["RuleColumn", "calibration_task", "calibration_view", "rule_columns", "worst_group_text"]

# A rule's metric -> (the record key its column shows, the column's header). The per-model
# metrics show the paired change: the column says how the pruned model differs.
_FAMILIES = {
    **dict.fromkeys(("top5_drop", "dense_top5", "pruned_top5"), ("top5_drop", "top-5 drop")),
    **dict.fromkeys(("ece_increase", "dense_ece", "pruned_ece"), ("ece_increase", "ECE +")),
    **dict.fromkeys(("nll_increase", "dense_nll", "pruned_nll"), ("nll_increase", "NLL +")),
    **dict.fromkeys(("brier_increase", "dense_brier", "pruned_brier"), ("brier_increase", "Brier +")),
    "kl_divergence": ("kl_divergence", "KL"),
    "probability_loyalty": ("probability_loyalty", "loyalty"),
    "group_accuracy_drop": ("group_accuracy_drop", "worst group"),
}


@dataclass(frozen=True)
class RuleColumn:
    """A task-table column a rule asked for: `key` is the record's name of its number (a metric,
    or `selective_risk_increase@0.9`)."""

    key: str
    header: str

    def text(self, tasks: list[TaskRecord]) -> str:
        """A row's cell: the mean over its tasks, or for the worst group, the group that drops
        most on any of them and its drop ('cats +4.00pp')."""
        if self.key == "group_accuracy_drop":
            return worst_group_text(tasks)
        return format_metric(self.key, mean_present(task_value(t, self.key) for t in tasks))

    def interval_text(self, task: TaskRecord) -> str:
        """The task's interval of the number, compact ('[-1.20, +0.40]pp'); '' when it has none."""
        found = task.intervals.get(self.key)
        return compact_interval(self.key, found.low, found.high) if found else ""


def _rule_key(rule: RuleRecord) -> tuple[str, str] | None:
    if rule.metric == "selective_risk_increase":
        coverage = f"{rule.coverage if rule.coverage is not None else DEFAULT_COVERAGE:g}"
        return f"selective_risk_increase@{coverage}", f"sel. risk +@{coverage}"
    return _FAMILIES.get(rule.metric)


def rule_columns(report: Report) -> list[RuleColumn]:
    """The columns the report's rules ask for, in the order of their first rule; none for a
    segmentation report."""
    if is_segmentation(report):
        return []
    columns: dict[str, RuleColumn] = {}
    for rule in report.rules:
        found = _rule_key(rule)
        if found is not None and found[0] not in columns:
            columns[found[0]] = RuleColumn(*found)
    return list(columns.values())


def worst_group_text(tasks: Iterable[TaskRecord]) -> str:
    """The subgroup whose accuracy drops most on any of the tasks and its drop: 'cats +4.00pp';
    'n/a' when no task records one."""
    worst = [t.worst_group for t in tasks if t.worst_group is not None and t.worst_group.drop is not None]
    if not worst:
        return "n/a"
    top = max(worst, key=lambda g: g.drop or 0.0)
    return f"{top.name} {format_metric('group_accuracy_drop', top.drop)}"


def calibration_task(report: Report) -> TaskRecord | None:
    """The task the calibration summary and the reliability diagram show: `clean`, else the first
    task with a reliability diagram; None when no task has one (an older or a segmentation report)."""
    if is_segmentation(report):
        return None
    with_bins = [t for t in report.tasks if t.calibration is not None]
    return next((t for t in with_bins if t.name == "clean"), with_bins[0] if with_bins else None)


# The per-model rows of the summary: (label, ModelSide field, the paired metric).
_SIDES = (
    ("top-5 accuracy", "top5", "top5_drop"),
    ("expected calibration error (ECE)", "ece", "ece_increase"),
    ("negative log-likelihood (NLL)", "nll", "nll_increase"),
    ("Brier score", "brier", "brier_increase"),
)


def calibration_view(report: Report) -> dict | None:
    """The calibration summary of `calibration_task`, as text: `rows` of {name, dense, pruned,
    metric, value, interval} (top-5 when there are 5 classes, ECE, NLL, Brier, KL, loyalty, the
    selective risk at each coverage) and the `groups` of data.groups (empty without). None when
    no task has calibration."""
    task = calibration_task(report)
    if task is None:
        return None

    def row(name: str, metric: str, dense: str = "", pruned: str = "") -> dict:
        found = task.intervals.get(metric)
        interval = compact_interval(metric, found.low, found.high) if found else ""
        value = format_metric(metric, task_value(task, metric))
        return {"name": name, "dense": dense, "pruned": pruned, "metric": metric, "value": value, "interval": interval}

    rows = []
    for name, side, metric in _SIDES:
        dense, pruned = getattr(task.dense, side), getattr(task.pruned, side)
        if dense is not None or pruned is not None:  # top-5: None with fewer than 5 classes
            rows.append(
                row(name, metric, format_metric(f"dense_{side}", dense), format_metric(f"pruned_{side}", pruned))
            )
    if task.kl_divergence is not None:
        rows.append(row("KL divergence, dense ‖ pruned", "kl_divergence"))
    if task.probability_loyalty is not None:
        rows.append(row("probability loyalty (1 - Jensen-Shannon distance)", "probability_loyalty"))
    for risk in task.selective_risk:
        rows.append(
            row(
                f"selective risk at {100 * risk.coverage:g}% coverage",
                f"selective_risk_increase@{risk.coverage:g}",
                format_metric("dense_accuracy", risk.dense),
                format_metric("pruned_accuracy", risk.pruned),
            )
        )
    worst = task.worst_group.name if task.worst_group is not None else None
    groups = [
        {
            "name": g.name,
            "n": g.n,
            "dense": format_metric("dense_accuracy", g.dense_accuracy),
            "pruned": format_metric("pruned_accuracy", g.pruned_accuracy),
            "drop": format_metric("group_accuracy_drop", g.drop),
            "worst": g.name == worst,
        }
        for g in task.groups
    ]
    return {"task": task.name, "n": task.n, "rows": rows, "groups": groups}
