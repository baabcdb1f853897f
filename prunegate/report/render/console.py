"""The console summary: rules first (what decided the verdict), then the task metrics.

Every string from the report (rule, task, policy and file names: the report may come from anyone)
goes through `_text`: control characters escaped, rich markup escaped, so `a\x1b[2Jb` and
`[bold red]x[/]` are shown as the characters they are. `render` returns a `Rendered` string,
which a rich console prints as it is rather than reading it as markup again.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from prunegate.errors import printable
from prunegate.report.render.common import (
    PERCENT_METRICS,
    POINT_METRICS,
    drop_metric,
    error_text,
    format_metric,
    is_segmentation,
    mean_present,
    over_text,
    pct,
    rule_status,
    segmentation_columns,
    task_columns,
    task_value,
    threshold_text,
    worst_task,
)
from prunegate.report.render.interface import Format, Renderer, RenderOptions
from prunegate.report.schema import Report, RuleRecord, TaskRecord

MAX_TASK_ROWS = 40  # beyond this, tasks are summarised per group


def _text(value: object) -> str:
    """A value from the report as console markup that shows it literally, on one line."""
    return escape(printable(value))


class Rendered(str):
    """Console output already rendered (text, with ANSI styles when in colour). A rich console's
    `print` takes it as finished text, not as markup: a rule named `[red]x[/]`, shown literally
    in the rendering, stays literal when the CLI prints the rendering."""

    def __rich__(self) -> Text:
        return Text(str(self))


def format_interval(metric: str, low: float, high: float) -> str:
    """A compact interval, its unit once at the end: '[-1.20, +0.40]pp'."""

    def short(x: float) -> str:
        return format_metric(metric, x).removesuffix("pp").removesuffix("%")

    unit = "pp" if metric in POINT_METRICS else "%" if metric in PERCENT_METRICS else ""
    return f"[{short(low)}, {short(high)}]{unit}"


def _tasks_text(rule: RuleRecord) -> str:
    """The task, or how many tasks and which was worst."""
    over = over_text(rule)
    worst = worst_task(rule)
    return _text(f"{over}, worst {worst.task}" if len(rule.per_task) > 1 and worst is not None else over)


STATUS = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "undecided": "[bold yellow]UNDECIDED[/]"}


def rules_table(report: Report) -> Table:
    """The rules, failed first: status, value, interval (when decided at a confidence), threshold."""
    confident = any(r.confidence for r in report.rules)
    decided = f" (decided at {100 * report.confidence:g}% confidence)" if confident and report.confidence else ""
    title = "Rules" + decided
    table = Table(title=title, title_justify="left", expand=False)
    columns = ["", "rule", "metric", "value", *(["interval"] if confident else []), "threshold", "tasks"]
    for column in columns:  # numbers never wrap; task names fold
        table.add_column(column, no_wrap=column != "tasks", overflow="fold")
    order = {"fail": 0, "undecided": 1, "pass": 2}
    for rule in sorted(report.rules, key=lambda r: order[rule_status(r)]):
        cells = [
            STATUS[rule_status(rule)],
            _text(rule.name),
            _text(rule.metric),
            format_metric(rule.metric, rule.value),
        ]
        if confident:
            cells.append(format_interval(rule.metric, rule.interval.low, rule.interval.high) if rule.interval else "")
        table.add_row(*cells, threshold_text(rule), _tasks_text(rule))
    return table


def undecided_lines(report: Report) -> list[str]:
    """One line per undecided rule: why, and how many samples would likely decide it."""
    lines = []
    for rule in report.rules:
        if rule.status != "undecided":
            continue
        more = (
            f"about {rule.samples_needed:,} samples per task would likely decide it"
            if rule.samples_needed
            else "the estimate sits on the threshold: more samples alone may not decide it"
        )
        lines.append(
            f"[yellow]undecided[/] {_text(rule.name)}: the {100 * (rule.confidence or 0):g}% interval "
            f"straddles {threshold_text(rule)}; {more}"
        )
    return lines


def tasks_table(report: Report) -> Table:
    """The task metrics, one row per task (per group beyond MAX_TASK_ROWS tasks)."""
    grouped = len(report.tasks) > MAX_TASK_ROWS
    table = Table(title="Tasks" + (" (mean per group)" if grouped else ""), title_justify="left")
    metrics = [m for m, _ in task_columns(report)]
    headers = [_HEADERS.get(m, h) for m, h in task_columns(report)]
    extras = segmentation_columns(report) if is_segmentation(report) else _CLASSIFICATION_COLUMNS
    ci = f"{100 * (report.confidence or 0.95):g}% CI"
    # the interval goes right after the drop (the third metric)
    columns = ("task", "n", *headers[:3], *([] if grouped else [ci]), *headers[3:], *(h for h, _ in extras))
    for column in columns:
        table.add_column(column, justify="left" if column == "task" else "right")
    rows: list[tuple[str, list[TaskRecord]]]  # a row's label and its tasks (one, or a group's)
    if grouped:
        groups: dict[str, list[TaskRecord]] = defaultdict(list)
        for task in report.tasks:
            groups[task.group].append(task)
        rows = [(g if len(tasks) == 1 else f"{g} ({len(tasks)} tasks)", tasks) for g, tasks in groups.items()]
    else:
        rows = [(t.name, [t]) for t in report.tasks]
    drop = drop_metric(report)
    for name, tasks in rows:
        values = [format_metric(m, mean_present(task_value(t, m) for t in tasks)) for m in metrics]
        interval = tasks[0].intervals.get(drop)
        cells = [] if grouped else [format_interval(drop, interval.low, interval.high) if interval else ""]
        table.add_row(
            _text(name),
            str(sum(t.n for t in tasks)),
            *values[:3],
            *cells,
            *values[3:],
            *(_text(text(tasks)) for _, text in extras),
        )
    return table


# Metric headers the console shortens (classification's, as they always were).
_HEADERS = {"dense_accuracy": "dense", "pruned_accuracy": "pruned", "accuracy_drop": "drop", "agreement": "agree"}


def _kappa(tasks: list[TaskRecord]) -> str:
    kappa = mean_present(t.error_consistency for t in tasks)
    return f"{kappa:.2f}" if kappa is not None else "n/a"


# Classification's columns after the metrics: "broke" = newly wrong (dense right, pruned wrong),
# "err κ" = error consistency (Cohen's kappa), means over a row's tasks.
_CLASSIFICATION_COLUMNS: list[tuple[str, Callable[[list[TaskRecord]], str]]] = [
    ("broke", lambda tasks: format_metric("newly_wrong", mean_present(t.newly_wrong for t in tasks))),
    ("err κ", _kappa),
]


def corruption_line(report: Report) -> str | None:
    """The corruption summary (mCE, relative mCE, the worst corruption); None without one."""
    summary = report.corruption_summary
    if summary is None or summary.mce is None:
        return None
    defined = [c for c in summary.per_corruption if c.ce is not None]
    if not defined:
        return None
    worst = max(defined, key=lambda c: c.ce or 0.0)  # (all defined)
    relative = f", relative mCE {summary.relative_mce:.3f}" if summary.relative_mce is not None else ""
    # segmentation says what its error is; classification's line, top-1 error, reads as it always did
    error = f" (error: {error_text(report)})" if is_segmentation(report) else ""
    return (
        f"corruptions{error}: mCE (pruned errors / dense errors) {summary.mce:.3f}{relative}; "
        f"worst {_text(worst.name)} CE {worst.ce:.3f}"
    )


def verdict_line(report: Report) -> str:
    """The verdict as console markup (the rule names in it escaped), for a rich console to print."""
    failed = report.failed_rules()
    if not failed:
        return f"[bold green]PASS[/]: all {len(report.rules)} rules passed"
    names = ", ".join(_text(r.name) for r in failed)
    return f"[bold red]FAIL[/]: {len(failed)} of {len(report.rules)} rules failed: {names}"


def models_line(report: Report) -> str:
    """Both models on one line: file, format, nonzero parameters, sparsity, runtime."""
    parts = []
    for role in ("dense", "pruned"):
        m = getattr(report.models, role)
        provider = f", {_text(m.provider)}" if m.provider else ""
        parts.append(
            f"{role} {_text(Path(m.path).name)} ({_text(m.format)}, {m.nonzero_parameters:,}/{m.parameters:,} "
            f"nonzero, sparsity {pct(m.sparsity)}; {_text(m.backend)} on {_text(m.device)}{provider})"
        )
    return "; ".join(parts)


def isolation_line(report: Report) -> str | None:
    """How the models were kept from prunegate's process, when that was less than complete."""
    notes = []
    for role in ("dense", "pruned"):
        isolation = getattr(report.models, role).isolation
        if isolation is None:
            continue
        if not isolation.process:
            notes.append(f"{role} ran in prunegate's own process (runtime.isolation: off)")
        elif not (isolation.files and isolation.tcp and isolation.seccomp):
            missing = [
                what
                for what, ok in (
                    ("file writes and key reads", isolation.files),
                    ("TCP", isolation.tcp),
                    ("programs and other sockets", isolation.seccomp),
                )
                if not ok
            ]
            notes.append(
                f"{role} ran in its own process, not sandboxed against {', '.join(missing)} "
                "(this kernel lacks Landlock or seccomp)"
            )
    return "[yellow]isolation[/]: " + "; ".join(notes) if notes else None


def _console(buffer: io.StringIO, color: bool, width: int) -> Console:
    """A console that renders into `buffer`: ANSI styles when `color`, else plain text."""
    return Console(
        file=buffer,
        force_terminal=color,
        no_color=not color,
        width=width,
        color_system="standard" if color else None,
        highlight=False,
    )


def render(report: Report, *, color: bool = False, width: int = 110) -> Rendered:
    """The whole console summary: header, models, tasks, rules, notes, warnings, verdict."""
    buffer = io.StringIO()
    console = _console(buffer, color, width)
    console.print(
        f"[bold]prunegate[/] {_text(report.tool.get('version', ''))} · "
        f"policy [bold]{_text(report.policy.name)}[/] · "
        f"seed {report.seed} · {report.timing.duration_s:.1f} s"
    )
    console.print(models_line(report))
    line = isolation_line(report)
    if line:
        console.print(line)
    console.print(tasks_table(report))
    line = corruption_line(report)
    if line:
        console.print(line)
    console.print(rules_table(report))
    for line in undecided_lines(report):
        console.print(line, soft_wrap=True)
    for rule in report.rules:
        if rule.note:
            console.print(f"[bold red]{_text(rule.name)}[/]: {_text(rule.note)}", soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {_text(warning)}", soft_wrap=True)
    console.print(verdict_line(report))
    return Rendered(buffer.getvalue())


def render_potential(result: dict, *, color: bool = False, width: int = 110) -> Rendered:
    """The prune-potential table: per group, the dense model's error, each member's error (its
    column headed by its short name and prune ratio) and the potential (a prune ratio); below it,
    each member's file, and the warnings (delta below the sampling resolution)."""
    from prunegate.potential import labels_of

    buffer = io.StringIO()
    console = _console(buffer, color, width)
    members, labels = result["members"], labels_of(result)
    error = result.get("error", "error")
    table = Table(
        title=f"Prune potential per task group: {error} of the dense model and of each member; potential = "
        f"the largest prune ratio whose {error} is within {100 * result['delta']:g} pp of dense",
        title_justify="left",
    )
    table.add_column("group")
    table.add_column(f"dense\nprune ratio 0%\n{_text(error)}", justify="right")
    for label, m in zip(labels, members):
        table.add_column(f"{_text(label)}\nprune ratio {100 * m['prune_ratio']:.1f}%\n{_text(error)}", justify="right")
    table.add_column("potential\n(prune ratio)", justify="right")
    for g in result["groups"]:
        potential = pct(g["potential"]) if g["potential"] > 0 else "0 (none within delta)"
        table.add_row(_text(g["name"]), pct(g["dense_error"]), *(pct(e) for e in g["errors"]), f"[bold]{potential}[/]")
    console.print(table)
    for label, m in zip(labels, members):
        console.print(
            f"  {_text(label)}: {_text(m.get('path', '?'))} (prune ratio {100 * m['prune_ratio']:.1f}%)", soft_wrap=True
        )
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning[/]: {_text(warning)}", soft_wrap=True)
    return Rendered(buffer.getvalue())


def render_verdict(report: Report, *, color: bool = False, width: int = 110) -> Rendered:
    """Only the verdict line (`check --quiet`), on one line however long."""
    buffer = io.StringIO()
    _console(buffer, color, width).print(verdict_line(report), soft_wrap=True)
    return Rendered(buffer.getvalue())


class ConsoleRenderer(Renderer):
    """The console summary (`options.color`, `options.width`; `options.verdict_only`: the verdict line)."""

    name = Format.console

    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> Rendered:
        """The report as console text, a `Rendered` string a rich console prints as it is."""
        if options.verdict_only:
            return render_verdict(report, color=options.color, width=options.width)
        return render(report, color=options.color, width=options.width)
