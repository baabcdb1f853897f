"""The console summary: the task metrics (a row per corruption and noise kind; every task when
verbose), the rules, and last, where a terminal leaves them in view, the files written, the rules
that did not pass and the verdict. Tables fit the console's width (`_columns`): a narrow one
leaves out columns, never cuts a name.

Every string from the report (rule, task, policy and file names: the report may come from anyone)
goes through `_text`: control characters escaped, rich markup escaped, so `a\x1b[2Jb` and
`[bold red]x[/]` are shown as the characters they are. `render` returns a `Rendered` string,
which a rich console prints as it is rather than reading it as markup again.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from prunegate.errors import printable
from prunegate.report.render._calibration import rule_columns
from prunegate.report.render._columns import Column, fitted_table
from prunegate.report.render.common import (
    compact_interval,
    drop_metric,
    error_text,
    format_metric,
    is_segmentation,
    mean_present,
    metric_label,
    over_text,
    pct,
    rule_status,
    sanity_line,
    segmentation_columns,
    sequential_line,
    task_columns,
    task_value,
    threshold_text,
    worst_task,
)
from prunegate.report.render.interface import Format, Renderer, RenderOptions
from prunegate.report.schema import Report, RuleRecord, TaskRecord


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
    return compact_interval(metric, low, high)


def _tasks_text(rule: RuleRecord) -> str:
    """The task, or how many tasks and which was worst."""
    over = over_text(rule)
    worst = worst_task(rule)
    return _text(f"{over}, worst {worst.task}" if len(rule.per_task) > 1 and worst is not None else over)


STATUS = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "undecided": "[bold yellow]UNDECIDED[/]"}
_ORDER = {"fail": 0, "undecided": 1, "pass": 2}


def _failed_first(report: Report) -> list[RuleRecord]:
    """The rules, failed first, then undecided, then passed (each in policy order)."""
    return sorted(report.rules, key=lambda r: _ORDER[rule_status(r)])


def rules_table(report: Report, width: int = 110) -> Table:
    """The rules, failed first: status, value, interval (when decided at a confidence), threshold,
    the tasks; at a narrow width the metric, then the tasks, then the interval are left out."""
    confident = any(r.confidence for r in report.rules)
    decided = f" (decided at {100 * report.confidence:g}% confidence)" if confident and report.confidence else ""
    rules = _failed_first(report)

    def interval(rule: RuleRecord) -> str:
        return format_interval(rule.metric, rule.interval.low, rule.interval.high) if rule.interval else ""

    columns = [
        Column("", [STATUS[rule_status(r)] for r in rules], justify="left"),
        Column("rule", [_text(r.name) for r in rules], justify="left", wrap=True),
        Column("metric", [_text(metric_label(r)) for r in rules], dispensable=3, justify="left"),
        Column("value", [format_metric(r.metric, r.value) for r in rules]),
        *([Column("interval", [interval(r) for r in rules], dispensable=1)] if confident else []),
        Column("threshold", [threshold_text(r) for r in rules]),
        Column("tasks", [_tasks_text(r) for r in rules], dispensable=2, justify="left", wrap=True),
    ]
    return fitted_table("Rules" + decided, columns, width)


def failed_rule_lines(report: Report) -> list[str]:
    """One line per rule that did not pass, failed first: a failed rule's value against its
    threshold and its worst task; an undecided rule's interval and how many samples would likely
    decide it; then the rule's note, if any."""
    lines = []
    for rule in _failed_first(report):
        if rule.passed:
            continue
        lines.append(_undecided_text(rule) if rule_status(rule) == "undecided" else _failed_text(rule))
        if rule.note:
            lines.append(f"  [bold red]{_text(rule.name)}[/]: {_text(rule.note)}")
    return lines


def _failed_text(rule: RuleRecord) -> str:
    worst = worst_task(rule)
    where = f"; worst {_text(worst.task)} {format_metric(rule.metric, worst.value)}" if worst is not None else ""
    return (
        f"[bold red]failed[/] {_text(rule.name)}: {_text(metric_label(rule))} {format_metric(rule.metric, rule.value)} "
        f"({_text(over_text(rule))}), needs {threshold_text(rule)}{where}"
    )


def _undecided_text(rule: RuleRecord) -> str:
    more = (
        f"about {rule.samples_needed:,} samples per task would likely decide it"
        if rule.samples_needed
        else "the estimate sits on the threshold: more samples alone may not decide it"
    )
    return (
        f"[yellow]undecided[/] {_text(rule.name)}: the {100 * (rule.confidence or 0):g}% interval "
        f"straddles {threshold_text(rule)}; {more}"
    )


def summary_label(task: TaskRecord) -> str:
    """The summary row a task belongs to: its corruption (all severities), its noise kind
    (`noise/uniform`, all levels), or the task itself (clean, ood/<set>)."""
    if task.kind == "corruption":
        return task.group
    if task.kind == "noise":
        return task.name.rsplit("/", 1)[0]
    return task.name


def summary_groups(report: Report) -> list[tuple[str, list[TaskRecord]]]:
    """(label, tasks) per summary row, in the report's order of tasks."""
    groups: dict[str, list[TaskRecord]] = defaultdict(list)
    for task in report.tasks:
        groups[summary_label(task)].append(task)
    return list(groups.items())


def tasks_table(report: Report, width: int = 110, verbose: bool = False) -> Table:
    """The task metrics: with `verbose` one row per task, else one row per corruption, noise kind
    or other task (means over its tasks, and its worst task named in full). Columns that do not fit
    in `width` are left out, least important first; task names are never cut."""
    if verbose:
        return fitted_table("Tasks", _task_columns(report), width)
    title = "Tasks: mean per corruption and noise kind, and the task that drops most (--verbose: every task)"
    return fitted_table(title, _summary_columns(report), width)


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


def _metric_columns(report: Report, rows: list[list[TaskRecord]]) -> list[Column]:
    """The metric columns (means over each row's tasks): dense, pruned, drop (kept at any width),
    agreement, then the kind's extras (the most dispensable)."""
    headers = [(m, _HEADERS.get(m, h)) for m, h in task_columns(report)]
    dispensable = (0, 0, 0, 1)  # dense, pruned, drop, agreement

    def means(metric: str) -> list[str]:
        return [format_metric(metric, mean_present(task_value(t, metric) for t in tasks)) for tasks in rows]

    columns = [Column(header, means(m), dispensable=d) for (m, header), d in zip(headers, dispensable, strict=True)]
    extras = segmentation_columns(report) if is_segmentation(report) else _CLASSIFICATION_COLUMNS
    columns += [Column(header, [_text(text(tasks)) for tasks in rows], dispensable=3) for header, text in extras]
    return columns


def _asked_columns(report: Report, rows: list[list[TaskRecord]], verbose: bool = False) -> list[Column]:
    """The columns the policy's rules ask for (calibration, probabilities, subgroups: see
    `_calibration.rule_columns`), means over each row's tasks. The policy asked for them: they
    are left out after agreement (level 1), one at a time, the last asked first; with `verbose`,
    each is followed by its interval, left out just before the drop's (level 2)."""
    columns = []
    for k, asked in enumerate(rule_columns(report)):
        level = min(k + 1, 9) / 10
        columns.append(Column(asked.header, [_text(asked.text(tasks)) for tasks in rows], dispensable=level))
        if verbose and any(asked.interval_text(tasks[0]) for tasks in rows):
            cells = [asked.interval_text(tasks[0]) for tasks in rows]
            columns.append(Column("CI", cells, dispensable=2 + level))
    return columns


def _task_columns(report: Report) -> list[Column]:
    """Every task's row: name, n, the metrics, the drop's interval after the drop, the columns the
    rules ask for."""
    rows = [[t] for t in report.tasks]
    drop = drop_metric(report)

    def interval(task: TaskRecord) -> str:
        found = task.intervals.get(drop)
        return format_interval(drop, found.low, found.high) if found else ""

    ci = f"{100 * (report.confidence or 0.95):g}% CI"
    metrics = _metric_columns(report, rows)
    return [
        Column("task", [_text(t.name) for t in report.tasks], justify="left", wrap=True),
        Column("n", [str(t.n) for t in report.tasks], dispensable=4),
        *metrics[:3],
        Column(ci, [interval(t) for t in report.tasks], dispensable=2),
        *_asked_columns(report, rows, verbose=True),
        *metrics[3:],
    ]


def _summary_columns(report: Report) -> list[Column]:
    """A row per summary group: its label, how many tasks, the mean metrics, and (for a group of
    several tasks) the largest drop and the task it is on, then the columns the rules ask for. The
    drop's mean and the largest drop and its task are kept at any width; dense and pruned go
    before them."""
    groups = summary_groups(report)
    rows = [tasks for _, tasks in groups]
    drop = drop_metric(report)
    worst = [max(tasks, key=lambda t: task_value(t, drop) or 0.0) if len(tasks) > 1 else None for tasks in rows]
    metrics = _metric_columns(report, rows)
    return [
        Column("group", [_text(label) for label, _ in groups], justify="left", wrap=True),
        Column("tasks", [str(len(tasks)) for tasks in rows], dispensable=4),
        *(replace(c, dispensable=2) for c in metrics[:2]),  # dense, pruned
        metrics[2],  # the mean drop
        Column("worst", [format_metric(drop, task_value(w, drop)) if w else "" for w in worst]),
        Column("worst task", [_text(w.name) if w else "" for w in worst], justify="left", wrap=True),
        *_asked_columns(report, rows),
        *metrics[3:],
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


def render(
    report: Report,
    *,
    color: bool = False,
    width: int = 110,
    verbose: bool = False,
    before_verdict: tuple[str, ...] = (),
) -> Rendered:
    """The whole console summary, `width` columns at most: header, models, tasks (per group; every
    task with `verbose`), warnings, rules, then last, where a terminal leaves them in view: the
    `before_verdict` lines (plain text: the files written), the rules that did not pass and the
    verdict."""
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
    console.print(tasks_table(report, width, verbose))
    line = corruption_line(report)
    if line:
        console.print(line)
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {_text(warning)}")
    for line in (sanity_line(report), sequential_line(report)):
        if line:
            console.print(_text(line))
    console.print(rules_table(report, width))
    for line in (*(_text(b) for b in before_verdict), *failed_rule_lines(report), verdict_line(report)):
        console.print(line)
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
    metric = result.get("metric", "error")

    def value(v: float) -> str:  # the kind's error is a proportion; a paired metric has its own unit
        return pct(v) if metric == "error" else format_metric(metric, v)

    delta = result["delta"]
    within = f"{100 * delta:g} pp" if metric == "error" else format_metric(metric, delta).lstrip("+")
    table = Table(
        title=f"Prune potential per task group: {error} of the dense model and of each member; potential = "
        f"the largest prune ratio whose {error} is within {within} of dense",
        title_justify="left",
    )
    table.add_column("group")
    table.add_column(f"dense\nprune ratio 0%\n{_text(error)}", justify="right")
    for label, m in zip(labels, members):
        table.add_column(f"{_text(label)}\nprune ratio {100 * m['prune_ratio']:.1f}%\n{_text(error)}", justify="right")
    table.add_column("potential\n(prune ratio)", justify="right")
    for g in result["groups"]:
        potential = pct(g["potential"]) if g["potential"] > 0 else "0 (none within delta)"
        row = [value(g["dense_error"]), *(value(e) for e in g["errors"])]
        table.add_row(_text(g["name"]), *row, f"[bold]{potential}[/]")
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
    """The console summary (`options.color`, `options.width`, `options.verbose`, `options.before_verdict`;
    `options.verdict_only`: the verdict line)."""

    name = Format.console

    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> Rendered:
        """The report as console text, a `Rendered` string a rich console prints as it is."""
        if options.verdict_only:
            return render_verdict(report, color=options.color, width=options.width)
        return render(
            report,
            color=options.color,
            width=options.width,
            verbose=options.verbose,
            before_verdict=options.before_verdict,
        )
