"""The HTML report: one self-contained file a person reads on a laptop or prints.

Rendered with Jinja2 from `prunegate/templates/report.html.j2`. Figures are matplotlib SVGs and
gallery thumbnails PNGs, both inlined as data: URIs; there are no scripts, web fonts or links
to fetch, and a Content-Security-Policy forbids any request the page could make. The renderer
returns a string; the gallery's images are made by the caller (`prunegate.report.gallery`).
A segmentation report shows mIoU columns and, instead of the gallery, a panel of its worst image.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.gate import metric_value
from prunegate.plan import TaskKind
from prunegate.report.gallery import (
    MAX_EXAMPLES,
    PER_TASK,
    Card,
    Gallery,
    select_cards,
    voc_palette,
    worst_segmentation_example,
)
from prunegate.report.render import common
from prunegate.report.render._calibration import RuleColumn, calibration_view, rule_columns
from prunegate.report.render.interface import Format, Renderer, RenderOptions
from prunegate.report.schema import Report, RuleRecord, SegmentationExample, TaskRecord

if TYPE_CHECKING:  # pragma: no cover
    import jinja2

COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "undecided": "#9a6700"}  # banner and badges
MAX_LISTED_TASKS = 12  # failing tasks listed on a failed rule's card
MAX_TASKS_ON_CARD = 6  # tasks listed on a gallery card


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
        "metric": common.metric_label(rule),
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


def _task_view(
    task: TaskRecord,
    failing: set[str],
    kind: str = "classification",
    names: list[str] | None = None,
    asked: list[RuleColumn] | None = None,
) -> dict:
    def with_interval(metric: str) -> dict:
        return {
            "value": common.format_metric(metric, metric_value(task, metric)),
            "interval": common.format_interval(metric, task.intervals.get(metric)) or "",
        }

    return {
        "name": task.name,
        "n": task.n,
        "failing": task.name in failing,
        "cells": [with_interval(metric) for metric, _ in common.TASK_COLUMNS[kind]],
        "asked": [{"value": c.text([task]), "interval": c.interval_text(task)} for c in asked or []],
        "softmax_l2": _optional(task.softmax_l2, lambda v: f"{v:.4f}"),
        "newly_wrong": _optional(task.newly_wrong, lambda v: f"{100 * v:.2f}%"),
        "mcnemar_p": _optional(task.mcnemar_p, lambda v: f"{v:.2g}"),
        "kappa": _optional(task.error_consistency, lambda v: f"{v:.3f}"),
        "worst_class": _worst_class_text(task, names),
        "nonfinite": task.dense.nonfinite + task.pruned.nonfinite,
    }


def _worst_class_text(task: TaskRecord, names: list[str] | None) -> str:
    """The class that loses most (recall, or segmentation IoU) and its drop: 'cat -12.0pp'."""
    if task.worst_class is not None:
        worst = task.worst_class
        return f"{worst.name or worst.label} {100 * worst.drop:+.1f}pp"
    if task.worst_class_iou is not None:
        iou = task.worst_class_iou
        return f"{iou.name or common.class_name(names, iou.label)} {100 * iou.drop:+.1f}pp"
    return ""


def _task_columns(report: Report) -> dict:
    tasks = report.tasks
    return {
        "headings": [heading for _, heading in common.task_columns(report)],
        "asked": [c.header for c in rule_columns(report)],  # what the rules ask beyond top-1
        "worst_heading": "worst class (IoU)" if report.task == "segmentation" else "worst class",
        "softmax_l2": any(t.softmax_l2 is not None for t in tasks),
        "newly_wrong": any(t.newly_wrong is not None for t in tasks),
        "mcnemar_p": any(t.mcnemar_p is not None for t in tasks),
        "kappa": any(t.error_consistency is not None for t in tasks),
        "worst_class": any(t.worst_class is not None or t.worst_class_iou is not None for t in tasks),
        "nonfinite": any(t.dense.nonfinite or t.pruned.nonfinite for t in tasks),
    }


def _segmentation_groups(tasks: list[TaskRecord]) -> list[dict]:
    """One row per task group (common.group_rows): the segmentation columns' means, as text."""
    metrics = [metric for metric, _ in common.TASK_COLUMNS["segmentation"]]
    return [
        {"name": row["name"], "n": row["n"], "cells": [common.format_metric(m, row[m]) for m in metrics]}
        for row in common.group_rows(tasks, metrics)
    ]


def _png_uri(data: bytes | None) -> str | None:
    return None if data is None else "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _gallery_view(report: Report, gallery: Gallery | None) -> dict:
    cards = [_card_view(report, card, gallery) for card in select_cards(report)]
    notes = list(gallery.notes) if gallery else []
    if cards and gallery is None:
        notes.append("images not rebuilt for this page (only indices and predictions are shown)")
    return {
        "cards": cards,
        "recorded": sum(len(t.examples) for t in report.tasks),
        "tasks": sum(1 for t in report.tasks if t.examples),
        "notes": notes,
        "with_images": any(c["image"] for c in cards),
    }


def _card_view(report: Report, card: Card, gallery: Gallery | None) -> dict:
    """One image's card: its file, label and the dense prediction, the input of the task it shows
    first, and every task that broke it with the pruned model's prediction there."""
    task, example = card.shown
    names = common.class_names(report, card.source)
    broke = [{"task": t.name, "draw": e.draw, "pruned": common.class_name(names, e.pruned)} for t, e in card.examples]
    return {
        "task": task.name,
        "sample": _sample_caption(card, gallery),
        "label": common.class_name(names, example.label),
        "dense": common.class_name(names, example.dense),
        "dense_right": example.dense == example.label,
        "broke": broke[:MAX_TASKS_ON_CARD],
        "broke_more": max(0, len(broke) - MAX_TASKS_ON_CARD),
        "image": _png_uri(gallery.images.get((task.name, example.index, example.draw))) if gallery else None,
        "original": _png_uri(gallery.originals.get((card.source, card.index))) if gallery else None,
        "shifted": task.kind in (TaskKind.NOISE, TaskKind.CORRUPTION),
    }


def _sample_caption(card: Card, gallery: Gallery | None) -> str:
    """The image's file relative to its data set's folder ('n01440764/x.JPEG'; of an array
    format, its file and index: 'test_batch.bin #1002'), else 'test #1002'; another set than
    the test set is named first ('sketch: ...')."""
    name = gallery.names.get((card.source, card.index)) if gallery else None
    if name is None:
        return f"{card.source} #{card.index}"
    return name if card.source == "test" else f"{card.source}: {name}"


def _segmentation_view(report: Report, gallery: Gallery | None) -> dict:
    """The worst image's panel (four pictures when the gallery drew them, else its numbers) and
    the other recorded images with the largest mIoU drop."""
    chosen = worst_segmentation_example(report)
    if chosen is None:
        return {"panel": None, "others": [], "notes": []}
    task, example = chosen
    notes = list(gallery.notes) if gallery else []
    if example.dense_mask is None or example.pruned_mask is None:
        notes.append("the report records no predicted masks for this image (only its numbers are shown)")
    elif gallery is None:
        notes.append("images not rebuilt for this page (only the numbers are shown)")
    names = common.class_names(report, task.source)
    drawn = gallery.panels.get((task.name, example.index, example.draw)) if gallery else None
    row = _segmentation_row(task, example)
    pictures, legend = [], []
    if drawn is not None:
        pictures = [
            {
                "uri": _png_uri(drawn.input),
                "caption": "input as shifted" if task.kind in (TaskKind.NOISE, TaskKind.CORRUPTION) else "input",
            },
            {"uri": _png_uri(drawn.truth), "caption": "ground truth"},
            {"uri": _png_uri(drawn.dense), "caption": f"dense: mIoU {row['dense']}"},
            {"uri": _png_uri(drawn.pruned), "caption": f"pruned: mIoU {row['pruned']}"},
        ]
        legend = [{"name": common.class_name(names, c), "colour": _colour(c)} for c in drawn.classes]
    others = [
        _segmentation_row(t, e)
        for t, e in _ranked_examples(report)
        if (t.name, e.index, e.draw) != (task.name, example.index, example.draw)
    ]
    named = gallery.names.get((task.source or "test", example.index)) if gallery else None
    panel = {**row, "pictures": pictures, "legend": legend, "file": named}
    return {"panel": panel, "others": others, "notes": notes}


def _segmentation_row(task: TaskRecord, example: SegmentationExample) -> dict:
    """One image's numbers as text."""
    return {
        "task": task.name,
        "source": task.source or "test",
        "index": example.index,
        "draw": example.draw,
        "dense": common.format_metric("dense_miou", example.dense_miou),
        "pruned": common.format_metric("pruned_miou", example.pruned_miou),
        "drop": common.format_metric("miou_drop", example.drop),
    }


def _ranked_examples(report: Report) -> list[tuple[TaskRecord, SegmentationExample]]:
    """The recorded images of the tasks that failed a rule first, then of those that lose most
    mIoU; at most PER_TASK from each and MAX_EXAMPLES in all."""
    failing = common.failing_tasks(report)
    ordered = sorted(
        (t for t in report.tasks if t.segmentation_examples),
        key=lambda t: (t.name not in failing, -(t.miou_drop or 0.0)),
    )
    chosen = [(t, e) for t in ordered for e in t.segmentation_examples[:PER_TASK]]
    return chosen[:MAX_EXAMPLES]


def _colour(label: int) -> str:
    """A class's overlay colour (the VOC palette) as CSS: '#800000'."""
    r, g, b = (int(v) for v in voc_palette()[label])
    return f"#{r:02x}{g:02x}{b:02x}"


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
    segmentation = report.task == "segmentation"
    grouped: list[dict] = []
    if len(report.tasks) > 12:
        grouped = _segmentation_groups(report.tasks) if segmentation else common.group_rows(report.tasks)
    summary = report.corruption_summary
    asked = rule_columns(report)
    context = {
        "report": report,
        "verdict": report.verdict,
        "colours": COLOURS,
        "rules": rules,
        "failed": [r for r in rules if r["status"] != "pass"],
        "tasks": [
            _task_view(t, failing, report.task, common.class_names(report, t.source), asked) for t in report.tasks
        ],
        "columns": _task_columns(report),
        "groups": grouped,
        "figures": plots.figures(report),
        "calibration": calibration_view(report),
        "reliability": plots.reliability_diagram(report),
        "segmentation": _segmentation_view(report, gallery) if segmentation else None,
        "gallery": _gallery_view(report, gallery),
        "corruptions": summary,
        "provenance": _provenance(report),
        "dense_file": Path(report.models.dense.path).name,
        "pruned_file": Path(report.models.pruned.path).name,
        "signature": signature,
        "confidence": report.confidence,
        "warnings": report.warnings,
        "sanity": _sentence_or_none(common.sanity_line(report)),
    }
    return _environment().get_template("report.html.j2").render(**context)


def _sentence_or_none(line: str | None) -> str | None:
    return common.sentence(line) if line else None


class HtmlRenderer(Renderer):
    """The self-contained HTML page (`options.gallery`, `options.signature`)."""

    name = Format.html

    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> str:
        """The report as one HTML page."""
        return render(report, gallery=options.gallery, signature=options.signature)
