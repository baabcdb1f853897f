"""Compare two reports: what got better or worse, per task metric and per rule. Pure: no I/O.

NEW regresses against OLD when, beyond `margin`, a task's accuracy_drop rose or its agreement
fell (segmentation: its miou_drop rose or its pixel_agreement fell), or when a rule that passed in
OLD does not pass in NEW (a flip needs no margin). Other metrics and rules that merely moved are
shown but do not decide. Reports of different tasks compare only their rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from prunegate.errors import printable
from prunegate.gate import metric_value
from prunegate.report.render.common import format_metric, rule_status
from prunegate.report.schema import Report, RuleRecord

Direction = Literal["higher", "lower"]  # which way is better
# Task metrics compared per report task, and which way is better. Only REGRESSION_METRICS
# decide the exit code.
TASK_METRICS: dict[str, dict[str, Direction]] = {
    "classification": {
        "accuracy_drop": "lower",
        "agreement": "higher",
        "pruned_accuracy": "higher",
        "dense_accuracy": "higher",
        "softmax_l2": "lower",
    },
    "segmentation": {
        "miou_drop": "lower",
        "pixel_agreement": "higher",
        "pruned_miou": "higher",
        "dense_miou": "higher",
        "pixel_accuracy_drop": "lower",
    },
}
REGRESSION_METRICS = {
    "classification": ("accuracy_drop", "agreement"),
    "segmentation": ("miou_drop", "pixel_agreement"),
}
EXACT = 1e-12  # differences below this are rounding, not change
DEFAULT_MARGIN = 0.005


def _delta_text(metric: str, delta: float) -> str:
    if metric == "softmax_l2":
        return f"{delta:+.4f}"
    return f"{100 * delta:+.2f}pp"


def _judge(delta: float, better: Direction) -> str:
    if abs(delta) <= EXACT:
        return "same"
    return "better" if (delta < 0) == (better == "lower") else "worse"


@dataclass(frozen=True)
class MetricChange:
    task: str
    metric: str
    old: float
    new: float
    change: str  # better | worse | same
    regression: bool

    @property
    def delta(self) -> float:
        return self.new - self.old

    @property
    def old_text(self) -> str:
        return format_metric(self.metric, self.old)

    @property
    def new_text(self) -> str:
        return format_metric(self.metric, self.new)

    @property
    def delta_text(self) -> str:
        return _delta_text(self.metric, self.delta)


@dataclass(frozen=True)
class RuleChange:
    name: str
    metric: str
    old_status: str | None  # pass | fail | undecided; None: the rule is not in that report
    new_status: str | None
    old_value: float | None
    new_value: float | None
    change: str  # now fails | now passes | better | worse | same | added | removed
    regression: bool

    @property
    def old_text(self) -> str:
        return "-" if self.old_value is None else f"{format_metric(self.metric, self.old_value)} ({self.old_status})"

    @property
    def new_text(self) -> str:
        return "-" if self.new_value is None else f"{format_metric(self.metric, self.new_value)} ({self.new_status})"


@dataclass
class Diff:
    margin: float
    old_policy: str
    new_policy: str
    old_verdict: str
    new_verdict: str
    tasks: list[MetricChange] = field(default_factory=list)
    rules: list[RuleChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricChange | RuleChange]:
        changes: list[MetricChange | RuleChange] = [*self.rules, *self.tasks]
        return [c for c in changes if c.regression]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)


def compare_rule(old: RuleRecord | None, new: RuleRecord | None) -> RuleChange:
    """How one rule changed between two reports (added, removed, now fails/passes, or by how much)."""
    if new is None:
        assert old is not None, "compare_rule needs at least one rule"
        return RuleChange(old.name, old.metric, rule_status(old), None, old.value, None, "removed", False)
    if old is None:
        return RuleChange(new.name, new.metric, None, rule_status(new), None, new.value, "added", False)
    before, after = rule_status(old), rule_status(new)
    if old.passed and not new.passed:
        change = "now fails"
    elif new.passed and not old.passed:
        change = "now passes"
    else:
        change = _judge(new.value - old.value, "lower" if new.comparison == "max" else "higher")
    return RuleChange(new.name, new.metric, before, after, old.value, new.value, change, change == "now fails")


def _definition(rule: RuleRecord) -> tuple:
    return rule.metric, tuple(rule.tasks), rule.aggregate, rule.comparison, rule.threshold


def compare(old: Report, new: Report, margin: float = DEFAULT_MARGIN) -> Diff:
    """What changed from OLD to NEW. `margin` is in the metrics' own units (0.005 = half a point)."""
    if not 0 <= margin <= 1:
        raise ValueError(f"margin must be within [0, 1], got {margin}")
    diff = Diff(margin, old.policy.name, new.policy.name, old.verdict, new.verdict)
    diff.notes += _comparability_notes(old, new)

    old_rules = {r.name: r for r in old.rules}
    new_rules = {r.name: r for r in new.rules}
    for name in [*new_rules, *(n for n in old_rules if n not in new_rules)]:
        before, after = old_rules.get(name), new_rules.get(name)
        diff.rules.append(compare_rule(before, after))
        if before is not None and after is not None and _definition(before) != _definition(after):
            diff.notes.append(
                f"rule {name!r} is defined differently in the two reports (metric, tasks, aggregate or threshold)"
            )

    if old.task != new.task:  # their tasks measure different things: only the rules compare
        return diff
    old_tasks = {t.name: t for t in old.tasks}
    for task in new.tasks:
        old_task = old_tasks.get(task.name)
        if old_task is None:
            continue
        for metric, better in TASK_METRICS[new.task].items():
            a, b = metric_value(old_task, metric), metric_value(task, metric)
            # undefined in both (NaN: e.g. no valid pixel), it did not change; NaN - NaN would judge
            change = "same" if math.isnan(a) and math.isnan(b) else _judge(b - a, better)
            regression = metric in REGRESSION_METRICS[new.task] and change == "worse" and abs(b - a) > margin + EXACT
            diff.tasks.append(MetricChange(task.name, metric, a, b, change, regression))
    return diff


def _comparability_notes(old: Report, new: Report) -> list[str]:
    notes = []
    if old.policy.sha256 != new.policy.sha256:
        notes.append("the policy files differ: tasks and thresholds may not be the same")
    if old.task != new.task:
        notes.append(f"one report gates {old.task}, the other {new.task}: only their rules are compared")
    if old.seed != new.seed:
        notes.append(f"the seeds differ ({old.seed} vs {new.seed}): noise and corruption draws are not the same")
    old_data = {d.name: d for d in old.data}
    for data in new.data:
        before = old_data.get(data.name)
        if before is not None and before.sha256 != data.sha256:
            notes.append(
                f"data set {data.name!r} differs (other images, or another limit): "
                f"{before.used} vs {data.used} images used"
            )
    old_names = {t.name for t in old.tasks}
    new_names = {t.name for t in new.tasks}
    only = (("only in the old report", old_names - new_names), ("only in the new report", new_names - old_names))
    for label, names in only:
        if names:
            shown = ", ".join(sorted(names)[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            notes.append(f"tasks {label}: {shown}")
    for role in ("dense", "pruned"):
        if getattr(old.models, role).sha256 == getattr(new.models, role).sha256:
            notes.append(f"the {role} model is the same file (sha256 {getattr(new.models, role).sha256[:16]}…)")
    return notes


def render_text(diff: Diff) -> str:
    """A plain-text account for the terminal: regressions marked ✗, improvements ✓. Each line is
    printable (rule and task names come from the reports: a control character in one is escaped)."""

    def mark(change: MetricChange | RuleChange) -> str:
        return "✗" if change.regression else ("✓" if change.change in ("better", "now passes") else " ")

    head = (
        f"REGRESSED: {len(diff.regressions)} change(s) beyond the margin of {diff.margin:g}"
        if diff.regressed
        else f"no regression beyond the margin of {diff.margin:g}"
    )
    lines = [f"prunegate diff: {head} (old verdict {diff.old_verdict.upper()}, new verdict {diff.new_verdict.upper()})"]
    lines += [f"  note: {note}" for note in diff.notes]
    if diff.rules:
        width = max(len(c.name) for c in diff.rules)
        lines.append("rules:")
        lines += [
            f"  {mark(c)} {c.name:<{width}}  {c.metric:<15} {c.old_text:>22} -> {c.new_text:<22} {c.change}"
            for c in diff.rules
        ]
    changed = [c for c in diff.tasks if c.change != "same"]
    if changed:
        width = max(len(c.task) for c in changed)
        lines.append(f"task metrics that changed ({len(changed)} of {len(diff.tasks)}):")
        lines += [
            f"  {mark(c)} {c.task:<{width}}  {c.metric:<15} {c.old_text:>9} -> {c.new_text:<9} "
            f"{c.delta_text:>10}  {c.change}"
            for c in changed
        ]
    else:
        lines.append("no task metric changed")
    return "\n".join(printable(line) for line in lines) + "\n"
