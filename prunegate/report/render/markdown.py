"""A GitHub-flavoured Markdown summary: the verdict, failed rules first, compact tables.

Meant for a pull-request comment or `$GITHUB_STEP_SUMMARY`: short enough to read at a glance,
with the full task list folded away in a <details> block.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.errors import printable
from prunegate.report.render import common
from prunegate.report.render._calibration import rule_columns
from prunegate.report.render.interface import Format, Renderer, RenderOptions
from prunegate.report.schema import Report

if TYPE_CHECKING:  # pragma: no cover
    from prunegate.diff import Diff

ICON = {"pass": "✅", "fail": "❌", "undecided": "⚠️"}
MAX_TASK_ROWS = 40  # beyond this the folded task table shows one row per group

_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def escape(text: object) -> str:
    """Text as it should appear literally in a table cell or a line of GFM (whitespace runs, line
    breaks included, as one space; other control characters escaped: the summary may be printed)."""
    return _SPECIAL.sub(r"\\\1", printable(" ".join(str(text).split())))


def code(text: object) -> str:
    """Inline code; backticks inside are avoided, pipes escaped (GFM tables split on them)."""
    return "`" + printable(" ".join(str(text).split())).replace("`", "'").replace("|", "\\|") + "`"


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A GFM table. `align` has one letter per column: l or r (default l)."""
    marks = [("---:" if (align[i : i + 1] == "r") else ":---") for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict_lines(report: Report) -> list[str]:
    """The heading with the verdict and the policy, and which rules did not pass."""
    failed = report.failed_rules()
    status = "pass" if report.verdict == "pass" else "fail"
    lines = [f"## {ICON[status]} prunegate: {report.verdict.upper()} — policy {code(report.policy.name)}", ""]
    if failed:
        names = ", ".join(f"**{escape(r.name)}**" for r in failed)
        lines.append(f"{len(failed)} of {len(report.rules)} rules did not pass: {names}")
    else:
        lines.append(f"All {len(report.rules)} rules passed.")
    return lines


def rules_table(report: Report) -> str:
    """The rules as a GFM table, failed first."""
    rules = common.rules_failed_first(report)
    with_interval = any(r.interval is not None for r in rules)
    with_bound = any(r.bound is not None for r in rules)
    columns = [("status", "l"), ("rule", "l"), ("metric", "l"), ("over", "l"), ("value", "r"), ("threshold", "r")]
    columns += [("bound", "r")] * with_bound + [("interval", "l")] * with_interval + [("worst task", "l")]
    rows = []
    for rule in rules:
        status = common.rule_status(rule)
        worst = common.worst_task(rule)
        row = [
            f"{ICON[status]} {common.STATUS_LABEL[status]}",
            escape(rule.name),
            code(common.metric_label(rule)),
            escape(common.over_text(rule)),
            common.format_metric(rule.metric, rule.value),
            escape(common.threshold_text(rule)),
        ]
        if with_bound:
            row.append(common.rule_bound_text(rule) or "")
        if with_interval:
            row.append(escape(common.interval_text(rule) or ""))
        row.append(code(worst.task) if worst is not None and len(rule.per_task) > 1 else "")
        rows.append(row)
    return table([c for c, _ in columns], rows, "".join(a for _, a in columns))


def undecided_notes(report: Report) -> list[str]:
    """A list item per undecided rule."""
    notes = []
    for rule in report.rules:
        if common.rule_status(rule) == "undecided":
            more = f"; about {rule.samples_needed:,} samples per task would decide it" if rule.samples_needed else ""
            notes.append(
                f"- ⚠️ **{escape(rule.name)}** is undecided: its interval straddles the threshold "
                f"(counted as a failure{more})."
            )
    return notes


def tasks_table(report: Report) -> str:
    """The task metrics as a GFM table (per group beyond MAX_TASK_ROWS tasks)."""
    grouped = len(report.tasks) > MAX_TASK_ROWS
    columns = common.task_columns(report)
    metrics = [m for m, _ in columns]
    rows = common.group_rows(report.tasks, metrics) if grouped else [common.task_row(t, metrics) for t in report.tasks]
    extras = common.segmentation_columns(report)
    # segmentation's table shows the drop's interval after the drop; classification's never has
    drop = common.drop_metric(report)
    with_interval = common.is_segmentation(report) and not grouped and any(drop in t.intervals for t in report.tasks)
    interval = [f"{100 * (report.confidence or 0.95):g}% CI"] if with_interval else []
    header = ["task" + (" group" if grouped else ""), "n", *(h for _, h in columns[:3]), *interval]
    header += [*(h for _, h in columns[3:]), *(h for h, _ in extras)]
    asked = rule_columns(report)  # what the rules ask beyond top-1, with the task's interval
    header += [escape(c.header) for c in asked]
    body = []
    for r in rows:
        beyond = [
            escape(" ".join(filter(None, (c.text(r["tasks"]), "" if grouped else c.interval_text(r["tasks"][0])))))
            for c in asked
        ]
        values = [common.format_metric(m, r[m]) for m in metrics]
        intervals = [escape(common.format_interval(drop, r["tasks"][0].intervals.get(drop)) or "")] * with_interval
        body.append(
            [
                code(r["name"]) if not grouped else escape(r["name"]),
                f"{r['n']:,}",
                *values[:3],
                *intervals,
                *values[3:],
                *(escape(text(r["tasks"])) for _, text in extras),
                *beyond,
            ]
        )
    return table(header, body, "l" + "r" * (len(header) - 1))


def models_line(report: Report) -> str:
    """Both models, the seed, the task count, the duration and prunegate's version, in one line."""
    parts = []
    for role in ("dense", "pruned"):
        m = getattr(report.models, role)
        parts.append(f"{role} {code(Path(m.path).name)} ({escape(m.format)}, sparsity {100 * m.sparsity:.1f}%)")
    return (
        f"Models: {'; '.join(parts)}. Seed {report.seed}, {len(report.tasks)} tasks, "
        f"{report.timing.duration_s:.1f} s, prunegate {escape(report.tool.get('version', ''))}."
    )


def render(report: Report) -> str:
    """The report as a GitHub-flavoured Markdown summary."""
    lines = verdict_lines(report)
    line = common.sequential_line(report)
    if line:
        lines += ["", escape(line)]
    lines += ["", rules_table(report)]
    notes = undecided_notes(report)
    notes += [f"- **{escape(r.name)}**: {escape(r.note)}" for r in report.rules if r.note]
    notes += [f"- ⚠️ {escape(w)}" for w in report.warnings]
    if notes:
        lines += ["", *notes]
    summary = f"Tasks ({len(report.tasks)}{', mean per group' if len(report.tasks) > MAX_TASK_ROWS else ''})"
    lines += ["", f"<details><summary>{summary}</summary>", "", tasks_table(report), "", "</details>"]
    lines += ["", models_line(report)]
    line = common.sanity_line(report)
    if line:
        lines += ["", escape(common.sentence(line))]
    lines += [""]
    return "\n".join(lines)


class MarkdownRenderer(Renderer):
    """The GitHub-flavoured Markdown summary (no options)."""

    name = Format.markdown

    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> str:
        """The report as GFM."""
        return render(report)


# --- diff ---------------------------------------------------------------------------------------


def _diff_icon(mark: str) -> str:
    return {"✗": ICON["fail"], "✓": ICON["pass"], "!": ICON["undecided"]}.get(mark, "")


def _metric_rows(changes: list) -> list[list[str]]:
    from prunegate.diff import mark

    return [
        [
            _diff_icon(mark(c)),
            escape(c.task),
            escape(c.metric),
            c.old_text,
            c.new_text,
            c.delta_text,
            escape(c.change),
            escape(c.reason),
        ]
        for c in changes
    ]


METRIC_HEADER = ["", "task", "metric", "old", "new", "change", "", "why"]


def _diff_task_sections(diff: Diff, verbose: bool) -> list[str]:
    """The regressions and the metrics undefined on one side; with `verbose`, every task."""
    if verbose:
        rows = []
        for name in diff.task_names:
            changed = [c for c in diff.changed if c.task == name]
            rows += _metric_rows(changed) or [["", escape(name), "", "", "", "", "no metric changed", ""]]
        return ["", f"### Tasks ({len(diff.task_names)})", "", table(METRIC_HEADER, rows, "lllrrrll")]
    from prunegate.diff import listed

    lines = []
    for title, changes in (("Regressions", diff.task_regressions), ("Undefined in one report", diff.undefined)):
        if changes:
            shown, more = listed(changes)
            lines += ["", f"### {title} ({len(changes)})", "", table(METRIC_HEADER, _metric_rows(shown), "lllrrrll")]
            lines += ["", escape(more)] if more else []
    return lines


def render_diff(diff: Diff, verbose: bool = False) -> str:
    """The comparison of two reports (see prunegate.diff) as GFM: the rules, a row per task group
    and each regression; with `verbose`, every task."""
    from prunegate.diff import group_counts_text, headline, mark, rule_tasks_text

    status = "fail" if diff.regressed else "pass"
    lines = [
        f"## {ICON[status]} prunegate diff: {escape(headline(diff))}",
        "",
        f"Old: policy {code(diff.old_policy)}, verdict {diff.old_verdict.upper()}. "
        f"New: policy {code(diff.new_policy)}, verdict {diff.new_verdict.upper()}.",
    ]
    if diff.signatures:
        lines += ["", f"Signatures: {escape(diff.signatures)}"]
    if diff.notes:
        lines += ["", *(f"- {escape(note)}" for note in diff.notes)]
    if diff.rules:
        rows = [
            [
                _diff_icon(mark(c)),
                escape(c.name),
                escape(c.metric),
                c.old_text,
                c.new_text,
                escape(c.change),
                rule_tasks_text(diff, c),
            ]
            for c in diff.rules
        ]
        header = ["", "rule", "metric", "old", "new", "change", "tasks"]
        lines += ["", f"### Rules ({len(diff.rules)})", "", table(header, rows, "llllrll")]
    groups = diff.groups()
    if groups:
        rows = [[escape(g.name), str(g.tasks), group_counts_text(g), escape(g.worst_text)] for g in groups]
        lines += [
            "",
            f"### Task groups ({len(groups)})",
            "",
            table(["group", "tasks", "changes", "worst"], rows, "lrll"),
        ]
    else:
        lines += ["", "No task compared."]
    lines += _diff_task_sections(diff, verbose)
    return "\n".join(lines) + "\n"
