"""The HTML report: one self-contained file a person reads on a laptop or prints.

Rendered with Jinja2 from `prunegate/templates/report.html.j2`. Figures are matplotlib SVGs and
gallery thumbnails PNGs, both inlined as data: URIs; there are no scripts, web fonts or links
to fetch, and a Content-Security-Policy forbids any request the page could make. The renderer
returns a string; the gallery's images are made by the caller (`prunegate.report.gallery`).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.plan import TaskKind
from prunegate.report.gallery import Gallery, select_examples
from prunegate.report.render import common
from prunegate.report.render.interface import Format, Renderer, RenderOptions
from prunegate.report.schema import Report, RuleRecord, TaskRecord

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "undecided": "#9a6700"}  # banner and badges
MAX_LISTED_TASKS = 12  # failing tasks listed on a failed rule's card


def _environment() -> jinja2.Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("prunegate", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["metric"] = common.format_metric
    env.filters["pct"] = lambda x: f"{100 * x:.2f}%"
    env.filters["num"] = lambda x: f"{x:,}"
    env.filters["when"] = _when
    env.filters["ratio"] = lambda x: "n/a" if x is None or x != x else f"{x:.3f}"
    return env


def _when(iso: str) -> str:
    """'2026-01-02T03:04:05+00:00' -> '2026-01-02 03:04 UTC' (as recorded when it is not that form)."""
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.utcoffset() is not None:
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def _rule_view(rule: RuleRecord) -> dict:
    status = common.rule_status(rule)
    worst = common.worst_task(rule)
    failing = [t for t in rule.per_task if not t.passed]
    pick = (lambda t: -t.value) if rule.comparison == "max" else (lambda t: t.value)
    failing.sort(key=pick)
    return {
        "name": rule.name,
        "metric": rule.metric,
        "status": status,
        "label": common.STATUS_LABEL[status],
        "globs": ", ".join(rule.tasks),
        "aggregate": rule.aggregate,
        "over": common.over_text(rule),
        "value": common.format_metric(rule.metric, rule.value),
        "threshold": common.threshold_text(rule),
        "bound": common.rule_bound_text(rule),
        "interval": common.interval_text(rule),
        "samples_needed": rule.samples_needed,
        "worst": worst.task if worst is not None and len(rule.per_task) > 1 else "",
        "failing": [
            {"task": t.task, "value": common.format_metric(rule.metric, t.value), "status": common.task_status(t)}
            for t in failing[:MAX_LISTED_TASKS]
        ],
        "failing_more": max(0, len(failing) - MAX_LISTED_TASKS),
        "failing_count": len(failing),
        "tasks_count": len(rule.per_task),
        "note": rule.note,
    }


def _optional(value: float | None, text: Callable[[float], str]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else text(value)


def _task_view(task: TaskRecord, failing: set[str]) -> dict:
    def with_interval(metric: str, value: float) -> dict:
        return {
            "value": common.format_metric(metric, value),
            "interval": common.format_interval(metric, task.intervals.get(metric)) or "",
        }

    worst = task.worst_class
    return {
        "name": task.name,
        "n": task.n,
        "failing": task.name in failing,
        "dense": with_interval("dense_accuracy", task.dense.accuracy),
        "pruned": with_interval("pruned_accuracy", task.pruned.accuracy),
        "drop": with_interval("accuracy_drop", task.accuracy_drop),
        "agreement": with_interval("agreement", task.agreement),
        "softmax_l2": f"{task.softmax_l2:.4f}",
        "newly_wrong": _optional(task.newly_wrong, lambda v: f"{100 * v:.2f}%"),
        "mcnemar_p": _optional(task.mcnemar_p, lambda v: f"{v:.2g}"),
        "kappa": _optional(task.error_consistency, lambda v: f"{v:.3f}"),
        "worst_class": (f"{worst.name or worst.label} {100 * worst.drop:+.1f}pp" if worst is not None else ""),
        "nonfinite": task.dense.nonfinite + task.pruned.nonfinite,
    }


def _task_columns(report: Report) -> dict:
    tasks = report.tasks
    return {
        "newly_wrong": any(t.newly_wrong is not None for t in tasks),
        "mcnemar_p": any(t.mcnemar_p is not None for t in tasks),
        "kappa": any(t.error_consistency is not None for t in tasks),
        "worst_class": any(t.worst_class is not None for t in tasks),
        "nonfinite": any(t.dense.nonfinite or t.pruned.nonfinite for t in tasks),
    }


def _png_uri(data: bytes | None) -> str | None:
    return None if data is None else "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _gallery_view(report: Report, gallery: Gallery | None) -> dict:
    chosen = select_examples(report)
    recorded = sum(len(t.examples) for t in report.tasks)
    cards = []
    for task, example in chosen:
        names = common.class_names(report, task.source)
        key = (task.name, example.index, example.draw)
        cards.append(
            {
                "task": task.name,
                "index": example.index,
                "draw": example.draw,
                "source": task.source or "test",
                "label": common.class_name(names, example.label),
                "dense": common.class_name(names, example.dense),
                "dense_right": example.dense == example.label,
                "pruned": common.class_name(names, example.pruned),
                "image": _png_uri(gallery.images.get(key)) if gallery else None,
                "original": _png_uri(gallery.originals.get((task.source or "test", example.index)))
                if gallery
                else None,
                "shifted": task.kind in (TaskKind.NOISE, TaskKind.CORRUPTION),
            }
        )
    notes = list(gallery.notes) if gallery else []
    if chosen and gallery is None:
        notes.append("images not rebuilt for this page (only indices and predictions are shown)")
    return {
        "cards": cards,
        "recorded": recorded,
        "shown": len(cards),
        "notes": notes,
        "with_images": any(c["image"] for c in cards),
    }


def _provenance(report: Report) -> dict:
    models = []
    for role in ("dense", "pruned"):
        m = getattr(report.models, role)
        models.append(
            {
                "role": role,
                "file": Path(m.path).name,
                "path": m.path,
                "format": m.format,
                "parameters": m.parameters,
                "nonzero": m.nonzero_parameters,
                "sparsity": m.sparsity,
                "runtime": f"{m.backend} on {m.device}" + (f" ({m.provider})" if m.provider else ""),
                "sha256": m.sha256,
                "pickle": m.pickle_allowed,
            }
        )
    environment = {k: v for k, v in report.environment.items() if not isinstance(v, (dict, list))}
    return {"models": models, "data": report.data, "environment": environment, "options": report.options}


def render(report: Report, *, gallery: Gallery | None = None, signature: str | None = None) -> str:
    """The report as one HTML page. `gallery`: thumbnails from `build_gallery` (None: indices only);
    `signature`: a line about the envelope's signature, which the predicate itself cannot know."""
    from prunegate.report.render import plots

    failing = common.failing_tasks(report)
    rules = [_rule_view(r) for r in common.rules_failed_first(report)]
    grouped = common.group_rows(report.tasks) if len(report.tasks) > 12 else []
    summary = report.corruption_summary
    context = {
        "report": report,
        "verdict": report.verdict,
        "colours": COLOURS,
        "rules": rules,
        "failed": [r for r in rules if r["status"] != "pass"],
        "tasks": [_task_view(t, failing) for t in report.tasks],
        "columns": _task_columns(report),
        "groups": grouped,
        "figures": plots.figures(report),
        "gallery": _gallery_view(report, gallery),
        "corruptions": summary,
        "provenance": _provenance(report),
        "dense_file": Path(report.models.dense.path).name,
        "pruned_file": Path(report.models.pruned.path).name,
        "signature": signature,
        "confidence": report.confidence,
        "warnings": report.warnings,
    }
    return _environment().get_template("report.html.j2").render(**context)


class HtmlRenderer(Renderer):
    """The self-contained HTML page (`options.gallery`, `options.signature`)."""

    name = Format.html

    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> str:
        """The report as one HTML page."""
        return render(report, gallery=options.gallery, signature=options.signature)
