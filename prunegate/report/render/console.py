"""The console summary: rules first (what decided the verdict), then the task metrics."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from rich.console import Console
from rich.table import Table

from prunegate.report.schema import Report, RuleRecord

MAX_TASK_ROWS = 40  # beyond this, tasks are summarised per group


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _signed_pct(x: float) -> str:
    return f"{100 * x:+.2f}pp"


def format_metric(metric: str, value: float) -> str:
    if metric == "accuracy_drop":
        return _signed_pct(value)
    if metric in ("agreement", "dense_accuracy", "pruned_accuracy"):
        return _pct(value)
    return f"{value:.4f}"


def threshold_text(rule: RuleRecord) -> str:
    sign = "≤" if rule.comparison == "max" else "≥"
    return f"{sign} {format_metric(rule.metric, rule.threshold)}"


def _worst_task(rule: RuleRecord) -> str:
    if not rule.per_task:
        return ""
    failing = [t for t in rule.per_task if not t.passed]
    pool = failing or rule.per_task
    pick = max if rule.comparison == "max" else min
    worst = pick(pool, key=lambda t: t.value)
    return worst.task if len(rule.per_task) > 1 else ""


def rules_table(report: Report) -> Table:
    table = Table(title="Rules", title_justify="left", expand=False)
    for column in ("", "rule", "metric", "over", "value", "threshold", "worst task"):
        table.add_column(column)
    for rule in sorted(report.rules, key=lambda r: r.passed):
        status = "[green]PASS[/]" if rule.passed else "[bold red]FAIL[/]"
        over = f"{rule.aggregate} of {len(rule.per_task)}" if len(rule.per_task) > 1 else rule.per_task[0].task if rule.per_task else "-"
        table.add_row(status, rule.name, rule.metric, over, format_metric(rule.metric, rule.value),
                      threshold_text(rule), _worst_task(rule))
    return table


def tasks_table(report: Report) -> Table:
    grouped = len(report.tasks) > MAX_TASK_ROWS
    table = Table(title="Tasks" + (" (mean per group)" if grouped else ""), title_justify="left")
    for column in ("task", "n", "dense acc", "pruned acc", "drop", "agreement", "softmax L2"):
        table.add_column(column, justify="left" if column == "task" else "right")
    rows = []
    if grouped:
        groups = defaultdict(list)
        for task in report.tasks:
            groups[task.group].append(task)
        for group, tasks in groups.items():
            label = group if len(tasks) == 1 else f"{group} ({len(tasks)} tasks)"
            rows.append((label, sum(t.n for t in tasks), *(fmean(getattr_path(t, k) for t in tasks) for k in _KEYS)))
    else:
        rows = [(t.name, t.n, *(getattr_path(t, k) for k in _KEYS)) for t in report.tasks]
    for name, n, dense, pruned, drop, agreement, l2 in rows:
        table.add_row(name, str(n), _pct(dense), _pct(pruned), _signed_pct(drop), _pct(agreement), f"{l2:.4f}")
    return table


_KEYS = ("dense.accuracy", "pruned.accuracy", "accuracy_drop", "agreement", "softmax_l2")


def getattr_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def verdict_line(report: Report) -> str:
    failed = report.failed_rules()
    if not failed:
        return f"[bold green]PASS[/]: all {len(report.rules)} rules passed"
    names = ", ".join(r.name for r in failed)
    return f"[bold red]FAIL[/]: {len(failed)} of {len(report.rules)} rules failed: {names}"


def models_line(report: Report) -> str:
    parts = []
    for role in ("dense", "pruned"):
        m = getattr(report.models, role)
        provider = f", {m.provider}" if m.provider else ""
        parts.append(f"{role} {Path(m.path).name} ({m.format}, {m.nonzero_parameters:,}/{m.parameters:,} nonzero, "
                     f"sparsity {_pct(m.sparsity)}; {m.backend} on {m.device}{provider})")
    return "; ".join(parts)


def render(report: Report, *, color: bool = False, width: int = 110) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width,
                      color_system="standard" if color else None, highlight=False)
    console.print(f"[bold]prunegate[/] {report.tool.get('version', '')} · policy [bold]{report.policy.name}[/] · "
                  f"seed {report.seed} · {report.timing.duration_s:.1f} s")
    console.print(models_line(report))
    console.print(tasks_table(report))
    console.print(rules_table(report))
    console.print(verdict_line(report))
    return buffer.getvalue()
