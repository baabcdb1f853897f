"""Compare two reports: what got better or worse, per task metric and per rule. Pure: no I/O.

NEW regresses against OLD when a rule that passed in OLD does not pass in NEW (a flip needs no
margin), or when a task's deciding metric (accuracy_drop, agreement; segmentation: miou_drop,
pixel_agreement) got worse by more than `margin` AND by more than sampling noise: the interval of
the change, built from the two reports' recorded intervals, lies wholly on the worse side of 0.

Why that interval. The two reports are separate runs; what each records per task is the value,
n and an interval at the report's confidence level (Wilson, Newcombe's paired interval or a
bootstrap). The interval of the difference NEW - OLD is built from those two with the method of
variance estimates recovery (MOVER; Zou & Donner, Stat Med 2008;27:1693), which for two Wilson
intervals is Newcombe's hybrid score interval for independent proportions (his method 10):
  low  = d - sqrt((new - new_low)^2 + (old_high - old)^2)
  high = d + sqrt((new_high - new)^2 + (old - old_low)^2)
It keeps each side's asymmetry and needs no per-sample data. It treats the runs as independent:
runs on the same images are positively correlated, so the true interval is narrower and this one
errs towards calling a change noise: a CI gate that flaps on noise is ignored, so that is the
side to err on. Whenever the two recorded intervals do not overlap, this interval excludes 0
too; the output says so, as the plainer fact. Without an interval on either side (a hand-made
or old report) the margin alone decides, and the output says that.

A deciding metric defined in OLD and undefined in NEW (None or NaN: e.g. no valid pixel) is a
regression: the new report no longer shows that the task stayed within the margin. The other
way round, and for the other metrics, it is named but does not decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from prunegate.errors import printable
from prunegate.gate import metric_value
from prunegate.plan import TaskKind
from prunegate.report.render.common import format_metric, rule_status, signed_pct
from prunegate.report.schema import Interval, Report, RuleRecord, TaskRecord

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
        "top5_drop": "lower",
        "pruned_top5": "higher",
        "ece_increase": "lower",  # ECE >= 0: lower is a better calibrated pruned model, either sign
        "pruned_ece": "lower",
        "pruned_nll": "lower",
        "pruned_brier": "lower",
        "kl_divergence": "lower",
        "probability_loyalty": "higher",
        "selective_risk_increase@0.8": "lower",  # every report has the default coverage
        "group_accuracy_drop": "lower",
    },
    "segmentation": {
        "miou_drop": "lower",
        "pixel_agreement": "higher",
        "pruned_miou": "higher",
        "dense_miou": "higher",
        "pixel_accuracy_drop": "lower",
    },
}
# top5_drop, ece_increase and group_accuracy_drop decide too: each is a proportion (or a mean
# of proportions) in the margin's units with a recorded interval, and each catches what a top-1
# drop hides (the runner-up classes, the confidence a downstream threshold reads, one subgroup).
# NLL, Brier and KL are unbounded or continuous scores with no natural margin in points, and
# selective risk depends on a coverage a report may not share: they are compared, not deciding.
REGRESSION_METRICS = {
    "classification": ("accuracy_drop", "agreement", "top5_drop", "ece_increase", "group_accuracy_drop"),
    "segmentation": ("miou_drop", "pixel_agreement"),
}
EXACT = 1e-12  # differences below this are rounding, not change
DEFAULT_MARGIN = 0.005
UNDEFINED = ("now undefined", "now defined")  # the changes of a metric undefined on one side
LISTED = 20  # task lines listed without --verbose (a full preset that regressed has ~190)


UNITLESS = ("softmax_l2", "pruned_nll", "pruned_brier", "kl_divergence")  # not fractions: no points


def _delta_text(metric: str, delta: float) -> str:
    if metric in UNITLESS:
        return f"{delta:+.4f}"
    return signed_pct(delta)


def _judge(delta: float, better: Direction) -> str:
    if abs(delta) <= EXACT:
        return "same"
    return "better" if (delta < 0) == (better == "lower") else "worse"


def change_interval(old: float, old_iv: Interval, new: float, new_iv: Interval) -> tuple[float, float]:
    """The interval of new - old from the two recorded intervals (MOVER, see the module's doc)."""
    down_new, up_new = max(0.0, new - new_iv.low), max(0.0, new_iv.high - new)
    down_old, up_old = max(0.0, old - old_iv.low), max(0.0, old_iv.high - old)
    delta = new - old
    return (delta - math.hypot(down_new, up_old), delta + math.hypot(up_new, down_old))


def intervals_overlap(a: Interval, b: Interval) -> bool:
    """Whether two intervals share a point."""
    return a.low <= b.high and b.low <= a.high


@dataclass(frozen=True)
class MetricChange:
    task: str
    group: str  # see task_group
    metric: str
    old: float  # NaN: undefined in that report
    new: float
    change: str  # better | worse | same | now undefined | now defined
    regression: bool
    deciding: bool = False  # one of REGRESSION_METRICS
    reason: str = ""  # why it is (or, for a deciding metric that got worse, is not) a regression
    interval: tuple[float, float] | None = None  # of new - old; None without both intervals

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
        return "n/a" if self.change in UNDEFINED else _delta_text(self.metric, self.delta)


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
    tasks: tuple[str, ...] = ()  # the tasks the rule judged (in NEW, else OLD)

    @property
    def old_text(self) -> str:
        return "-" if self.old_value is None else f"{format_metric(self.metric, self.old_value)} ({self.old_status})"

    @property
    def new_text(self) -> str:
        return "-" if self.new_value is None else f"{format_metric(self.metric, self.new_value)} ({self.new_status})"


@dataclass(frozen=True)
class GroupSummary:
    """One task group's changes: a corruption's severities, a noise kind's levels, clean, an ood set."""

    name: str
    tasks: int
    changed: int  # task metrics that changed
    regressions: int
    worst: MetricChange | None  # the deciding metric that got most worse, if any did

    @property
    def worst_text(self) -> str:
        if self.worst is None:
            return ""
        return f"worst {self.worst.metric} {self.worst.delta_text} ({self.worst.task})"


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
    task_names: list[str] = field(default_factory=list)  # the tasks compared, in NEW's order
    signatures: str | None = None  # what was verified of the two reports' signatures, if anything

    @property
    def regressions(self) -> list[MetricChange | RuleChange]:
        changes: list[MetricChange | RuleChange] = [*self.rules, *self.tasks]
        return [c for c in changes if c.regression]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    @property
    def task_regressions(self) -> list[MetricChange]:
        return [c for c in self.tasks if c.regression]

    @property
    def changed(self) -> list[MetricChange]:
        return [c for c in self.tasks if c.change != "same"]

    @property
    def undefined(self) -> list[MetricChange]:
        """Metrics undefined in one report only that do not regress: named, not deciding."""
        return [c for c in self.tasks if c.change in UNDEFINED and not c.regression]

    def rule_task_regressions(self, rule: RuleChange) -> int:
        """How many of the rule's tasks have a regressed metric."""
        return len({c.task for c in self.task_regressions} & set(rule.tasks))

    def groups(self) -> list[GroupSummary]:
        """Per task group, in NEW's task order: its tasks, changed metrics, regressions, worst change."""
        by_group: dict[str, list[MetricChange]] = {}
        for change in self.tasks:
            by_group.setdefault(change.group, []).append(change)
        return [_group_summary(name, changes) for name, changes in by_group.items()]


def _group_summary(name: str, changes: list[MetricChange]) -> GroupSummary:
    worse = [c for c in changes if c.change == "worse" and c.deciding]
    return GroupSummary(
        name,
        tasks=len({c.task for c in changes}),
        changed=sum(c.change != "same" for c in changes),
        regressions=sum(c.regression for c in changes),
        worst=max(worse, key=lambda c: abs(c.delta), default=None),
    )


def task_group(task: TaskRecord) -> str:
    """corruption/<name> (its severities), noise/<kind> (its levels); clean and each ood set alone."""
    if task.kind in (TaskKind.CORRUPTION, TaskKind.NOISE):
        return task.name.rsplit("/", 1)[0]
    return task.name


def _rule_tasks(rule: RuleRecord) -> tuple[str, ...]:
    return tuple(value.task for value in rule.per_task)


def compare_rule(old: RuleRecord | None, new: RuleRecord | None) -> RuleChange:
    """How one rule changed between two reports (added, removed, now fails/passes, or by how much)."""
    if new is None:
        assert old is not None, "compare_rule needs at least one rule"
        return RuleChange(
            old.name, old.metric, rule_status(old), None, old.value, None, "removed", False, _rule_tasks(old)
        )
    if old is None:
        return RuleChange(
            new.name, new.metric, None, rule_status(new), None, new.value, "added", False, _rule_tasks(new)
        )
    before, after = rule_status(old), rule_status(new)
    if old.passed and not new.passed:
        change = "now fails"
    elif new.passed and not old.passed:
        change = "now passes"
    else:
        change = _judge(new.value - old.value, "lower" if new.comparison == "max" else "higher")
    regression = change == "now fails"
    return RuleChange(new.name, new.metric, before, after, old.value, new.value, change, regression, _rule_tasks(new))


def _definition(rule: RuleRecord) -> tuple:
    return rule.metric, tuple(rule.tasks), rule.aggregate, rule.comparison, rule.threshold


def compare_metric(
    old_task: TaskRecord, new_task: TaskRecord, metric: str, better: Direction, deciding: bool, margin: float
) -> MetricChange:
    """One task metric from OLD to NEW: how it changed and whether that is a regression, and why."""
    a, b = metric_value(old_task, metric), metric_value(new_task, metric)

    def made(
        change: str, regression: bool = False, reason: str = "", interval: tuple[float, float] | None = None
    ) -> MetricChange:
        group = task_group(new_task)
        return MetricChange(new_task.name, group, metric, a, b, change, regression, deciding, reason, interval)

    if math.isnan(a) and math.isnan(b):  # undefined in both: it did not change (NaN - NaN would judge)
        return made("same")
    if math.isnan(b):
        reason = "undefined in the new report: it no longer shows this metric within the margin"
        return made("now undefined", deciding, reason if deciding else "")
    if math.isnan(a):
        return made("now defined", False, "undefined in the old report: nothing to compare with" if deciding else "")
    change = _judge(b - a, better)
    if change != "worse" or not deciding:
        return made(change)
    if abs(b - a) <= margin + EXACT:
        return made(change, False, f"within the margin of {margin:g}")
    old_iv, new_iv = old_task.intervals.get(metric), new_task.intervals.get(metric)
    if old_iv is None or new_iv is None:
        which = "either" if old_iv is None and new_iv is None else "the old" if old_iv is None else "the new"
        return made(change, True, f"beyond the margin (no interval in {which} report: the margin alone decides)")
    interval = change_interval(a, old_iv, b, new_iv)
    shown = f"[{_delta_text(metric, interval[0])}, {_delta_text(metric, interval[1])}]"
    if interval[0] <= 0 <= interval[1]:
        return made(change, False, f"within sampling noise: the change's interval {shown} holds 0", interval)
    reason = f"beyond the margin and the change's interval {shown}"
    if not intervals_overlap(old_iv, new_iv):
        reason += "; the reports' intervals do not overlap"
    return made(change, True, reason, interval)


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
        diff.task_names.append(task.name)
        for metric, better in TASK_METRICS[new.task].items():
            deciding = metric in REGRESSION_METRICS[new.task]
            diff.tasks.append(compare_metric(old_task, task, metric, better, deciding, margin))
    return diff


def _comparability_notes(old: Report, new: Report) -> list[str]:
    notes = []
    if old.policy.sha256 != new.policy.sha256:
        notes.append("the policy files differ: tasks and thresholds may not be the same")
    if old.task != new.task:
        notes.append(f"one report gates {old.task}, the other {new.task}: only their rules are compared")
    if old.seed != new.seed:
        notes.append(f"the seeds differ ({old.seed} vs {new.seed}): noise and corruption draws are not the same")
    if old.confidence != new.confidence:
        notes.append(f"the reports' intervals are at different levels ({old.confidence} vs {new.confidence})")
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


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def headline(diff: Diff) -> str:
    """The first line's verdict; its counts are those of the lines below it (✗ lines, groups)."""
    changed = f"{_plural(len(diff.changed), 'task metric')} changed in {_plural(len(diff.task_names), 'task')}"
    if not diff.regressed:
        return f"no regression beyond the margin of {diff.margin:g} and sampling noise; {changed}"
    rules = sum(c.regression for c in diff.rules)
    parts = [f"{_plural(rules, 'rule')} now failing"] if rules else []
    if diff.task_regressions:
        parts.append(f"{_plural(len(diff.task_regressions), 'task metric')} worse beyond the margin and noise")
    return f"REGRESSED: {_plural(len(diff.regressions), 'regression')} ({', '.join(parts)}); {changed}"


def mark(change: MetricChange | RuleChange) -> str:
    """✗ a regression (only those: the headline counts them), ✓ better, ! undefined on one side."""
    if change.regression:
        return "✗"
    if change.change in ("better", "now passes"):
        return "✓"
    return "!" if change.change in UNDEFINED else " "


def rule_tasks_text(diff: Diff, rule: RuleChange) -> str:
    """How many of a rule's tasks regressed ('' when no task was compared)."""
    if not rule.tasks or not diff.tasks:
        return ""
    return f"{diff.rule_task_regressions(rule)} of its {_plural(len(rule.tasks), 'task')} regressed"


def group_counts_text(group: GroupSummary) -> str:
    """A group's changed metrics and regressions: the numbers the headline adds up."""
    return f"{_plural(group.changed, 'metric')} changed, {group.regressions} regressed"


def _metric_line(c: MetricChange, width: int) -> str:
    return (
        f"  {mark(c)} {c.task:<{width}}  {c.metric:<15} {c.old_text:>9} -> {c.new_text:<9} "
        f"{c.delta_text:>10}  {c.change}{f': {c.reason}' if c.reason else ''}"
    )


def listed(changes: list[MetricChange]) -> tuple[list[MetricChange], str]:
    """The first LISTED of `changes`, and a line that says how many more there are ('' if none)."""
    more = len(changes) - LISTED
    return changes[:LISTED], (f"… and {more} more (--verbose lists every task)" if more > 0 else "")


def _task_lines(diff: Diff, verbose: bool) -> list[str]:
    """The regressions and the metrics undefined on one side (the first LISTED of each); with
    `verbose`, every task's changes."""
    if verbose:
        width = max((len(name) for name in diff.task_names), default=0)
        lines = [f"tasks ({len(diff.task_names)}):"]
        for name in diff.task_names:
            changed = [c for c in diff.changed if c.task == name]
            lines += [_metric_line(c, width) for c in changed] or [f"    {name:<{width}}  no metric changed"]
        return lines
    lines = []
    for title, changes in (("regressions", diff.task_regressions), ("undefined in one report", diff.undefined)):
        if changes:
            shown, more = listed(changes)
            width = max(len(c.task) for c in shown)
            lines += [f"{title} ({len(changes)}):", *(_metric_line(c, width) for c in shown)]
            lines += [f"    {more}"] if more else []
    return lines


def render_text(diff: Diff, verbose: bool = False) -> str:
    """A plain-text account for the terminal: the rules, a line per task group, and each
    regression (✗); with `verbose`, every task. Each line is printable (rule and task names come
    from the reports: a control character in one is escaped)."""
    verdicts = f"old verdict {diff.old_verdict.upper()}, new verdict {diff.new_verdict.upper()}"
    lines = [f"prunegate diff: {headline(diff)} ({verdicts})"]
    if diff.signatures:
        lines.append(f"  signatures: {diff.signatures}")
    lines += [f"  note: {note}" for note in diff.notes]
    if diff.rules:
        width = max(len(c.name) for c in diff.rules)
        lines.append(f"rules ({len(diff.rules)}):")
        lines += [
            f"  {mark(c)} {c.name:<{width}}  {c.metric:<15} {c.old_text:>22} -> {c.new_text:<22} {c.change:<10} "
            f"{rule_tasks_text(diff, c)}".rstrip()
            for c in diff.rules
        ]
    groups = diff.groups()
    if groups:
        width = max(len(g.name) for g in groups)
        more = "" if verbose else "; --verbose lists every task"
        lines.append(f"task groups ({len(groups)}; {_plural(len(diff.changed), 'task metric')} changed{more}):")
        lines += [
            f"    {g.name:<{width}}  {_plural(g.tasks, 'task'):>9}  {group_counts_text(g):<30} {g.worst_text}".rstrip()
            for g in groups
        ]
    else:
        lines.append("no task compared")
    lines += _task_lines(diff, verbose)
    return "\n".join(printable(line) for line in lines) + "\n"
