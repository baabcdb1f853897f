"""The HTML report's figures, drawn with matplotlib and returned as SVG data: URIs.

Each function returns None when the report has nothing to draw for it (no corruption tasks, no
noise tasks, no per-class counts). A segmentation report draws mIoU where a classification one
draws top-1 accuracy, and pixel agreement for agreement. Output is deterministic: fixed hash
salt, no dates.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunegate.plan import TaskKind
from prunegate.report.render import common
from prunegate.report.schema import Interval, Report, TaskRecord

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.figure
    from matplotlib.axes import Axes

DENSE, PRUNED, AGREE = "#0969da", "#d1242f", "#1a7f37"  # blue, red, green
FAILED = "#cf222e"
MAX_CLASSES = 20  # the per-class figure shows the classes that lose most
MIN_CLASS_SAMPLES = 20  # below this in every class a per-class recall is noise: the figure is left out


def _context() -> AbstractContextManager[None]:
    """matplotlib's object-oriented API with our style: no pyplot, so no global backend or
    figure registry is touched (safe inside a notebook or a server)."""
    import matplotlib

    return matplotlib.rc_context(_style())


def _figure(width: float, height: float) -> matplotlib.figure.Figure:
    """A matplotlib figure of this size in inches, outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _style() -> dict:
    return {
        "svg.hashsalt": "prunegate",
        "svg.fonttype": "path",
        "font.size": 8,
        "axes.titlesize": 8.5,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.frameon": False,
        "figure.dpi": 100,
    }


SCALE = 1.35  # shown this much larger than the figure's nominal size: 8 pt labels read as ~14 px


@dataclass(frozen=True)
class Figure:
    """One figure of the page: an SVG data: URI and the width to show it at."""

    uri: str  # data:image/svg+xml;base64,...
    width: int  # CSS pixels to show it at (the page caps it at its own width)


def _uri(fig: matplotlib.figure.Figure) -> Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "prunegate"})
    svg = buffer.getvalue()
    match = re.search(rb'width="([0-9.]+)pt"', svg[:2000])
    width = round(float(match.group(1)) * 96 / 72 * SCALE) if match else 800
    return Figure("data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii"), width)


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def _side_metric(report: Report) -> tuple[str, str]:
    """(the ModelSide field the figures draw, its axis label): accuracy or, segmentation, mIoU."""
    return ("miou", "mIoU") if report.task == "segmentation" else ("accuracy", "top-1 accuracy")


def _agreement_metric(report: Report) -> str:
    return "pixel_agreement" if report.task == "segmentation" else "agreement"


def _band(ax: Axes, task_list: Sequence[TaskRecord | None], xs: Sequence[float], key: str, colour: str) -> None:
    """Shade a metric's interval where the report has one for every point."""
    found = [t.intervals.get(key) if t is not None else None for t in task_list]
    intervals: list[Interval] = [i for i in found if i is not None]
    if intervals and len(intervals) == len(found):
        ax.fill_between(xs, [i.low for i in intervals], [i.high for i in intervals], color=colour, alpha=0.15, lw=0)


def accuracy_vs_severity(report: Report) -> Figure | None:
    """Small multiples, one per corruption: dense and pruned top-1 accuracy over severities
    (severity 0 is the clean task, when there is one)."""
    by_name: dict[str, dict[int, TaskRecord]] = defaultdict(dict)
    for task in report.tasks:
        if task.kind is TaskKind.CORRUPTION:
            by_name[task.group][int(task.name.rsplit("/", 1)[1])] = task
    if not by_name:
        return None
    clean = next((t for t in report.tasks if t.kind is TaskKind.CLEAN), None)
    failing = common.failing_tasks(report)
    metric, label = _side_metric(report)
    with _context():
        rows, cols = _grid(len(by_name), 5)
        fig = _figure(2.05 * cols, 1.75 * rows + 0.25)
        axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
        for ax, (name, tasks) in zip(axes.flat, by_name.items()):
            severities = sorted(tasks)
            points = ([(0, clean)] if clean is not None else []) + [(s, tasks[s]) for s in severities]
            xs = [x for x, _ in points]
            for side, colour, style in (("dense", DENSE, "-"), ("pruned", PRUNED, "--")):
                ys = [getattr(getattr(t, side), metric) for _, t in points]
                ax.plot(xs, ys, style, color=colour, marker="o", ms=2.5, lw=1.3, label=side)
                _band(ax, [t for _, t in points], xs, f"{side}_{metric}", colour)
            failed = any(t.name in failing for t in tasks.values())
            ax.set_title(
                name.replace("_", " ") + (" (a rule failed)" if failed else ""), color=FAILED if failed else "#24292f"
            )
            ax.set_xticks(xs)
            ax.set_xticklabels(["clean" if x == 0 else str(x) for x in xs])
            ax.set_ylim(0, 1.02)
        for ax in list(axes.flat)[len(by_name) :]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel(label)
        for ax in axes[-1]:
            ax.set_xlabel("severity")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        height = fig.get_size_inches()[1]
        fig.legend(handles, labels, loc="upper right", ncol=2, bbox_to_anchor=(1.0, 1.0), fontsize=7.5)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.22 / height))
        return _uri(fig)


def _agreement_thresholds(report: Report, names: set[str]) -> list[tuple[str, float]]:
    return [
        (r.name, r.threshold)
        for r in report.rules
        if r.metric == _agreement_metric(report) and any(t.task in names for t in r.per_task)
    ]


def agreement_vs_noise(report: Report) -> Figure | None:
    """One panel per noise kind: agreement (and both accuracies) over the noise level; level 0 is
    the clean task. Agreement rules over these tasks are drawn as dashed lines."""
    by_kind: dict[str, list[TaskRecord]] = defaultdict(list)
    for task in report.tasks:
        if task.kind is TaskKind.NOISE:
            by_kind[task.name.split("/")[1]].append(task)
    if not by_kind:
        return None
    clean = next((t for t in report.tasks if t.kind is TaskKind.CLEAN), None)
    metric, label = _side_metric(report)
    agreement = _agreement_metric(report)
    with _context():
        rows, cols = _grid(len(by_kind), 3)
        fig = _figure(3.3 * cols, 2.3 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, (kind, tasks) in zip(axes.flat, by_kind.items()):
            tasks = sorted(tasks, key=lambda t: float(t.name.rsplit("/", 1)[1]))
            levels = [(float(t.name.rsplit("/", 1)[1]), t) for t in tasks]
            points = ([(0.0, clean)] if clean is not None else []) + levels
            xs = [x for x, _ in points]
            ys = [getattr(t, agreement) for _, t in points]
            ax.plot(xs, ys, "-", color=AGREE, marker="o", ms=3, lw=1.8, label=agreement.replace("_", " "))
            _band(ax, [t for _, t in points], xs, agreement, AGREE)
            name = "accuracy" if metric == "accuracy" else label
            for side, colour, style in (("dense", DENSE, "-"), ("pruned", PRUNED, "--")):
                ys = [getattr(getattr(t, side), metric) for _, t in points]
                ax.plot(xs, ys, style, color=colour, lw=1, alpha=0.8, label=f"{side} {name}")
            for name, threshold in _agreement_thresholds(report, {t.name for t in tasks}):
                ax.axhline(threshold, color="#6e7781", ls=":", lw=1)
                ax.annotate(
                    f"{name} ≥ {100 * threshold:g}%",
                    (xs[-1], threshold),
                    xytext=(-2, 3),
                    ha="right",
                    textcoords="offset points",
                    fontsize=6.5,
                    color="#57606a",
                )
            ax.set_title(f"{kind} noise")
            ax.set_xlabel("noise level")
            ax.set_ylim(0, 1.02)
            ax.legend(loc="lower left", fontsize=6.5)
        for ax in list(axes.flat)[len(by_kind) :]:
            ax.axis("off")
        fig.tight_layout()
        return _uri(fig)


@dataclass(frozen=True)
class ClassSeries:
    """Per-class recall counts of a group of tasks: `n` samples each class had in one task (the
    most of any member task), and the recall drop over the members' counts pooled."""

    label: str
    n: list[int]
    drops: list[float]


def _class_series(label: str, tasks: list[TaskRecord]) -> ClassSeries | None:
    counts = [t.class_recall for t in tasks if t.class_recall is not None]
    if not counts:
        return None
    width = max(len(c.n) for c in counts)
    per_task, total, dense, pruned = [0] * width, [0] * width, [0] * width, [0] * width
    for c in counts:
        for i in range(len(c.n)):
            per_task[i] = max(per_task[i], c.n[i])
            total[i] += c.n[i]
            dense[i] += c.dense_correct[i]
            pruned[i] += c.pruned_correct[i]
    if len(counts) > 1:
        label = f"{label} ({len(counts)} tasks pooled)"
    drops = [(d - p) / k if k else 0.0 for k, d, p in zip(total, dense, pruned)]
    return ClassSeries(label, per_task, drops)


def class_series(report: Report) -> list[ClassSeries]:
    """The per-class figure's series: the clean task, the shifted tasks (noise and corruptions)
    pooled, and the out-of-distribution sets pooled; those without per-class counts left out."""
    groups = (
        ("clean", [t for t in report.tasks if t.kind is TaskKind.CLEAN]),
        ("noise and corruptions", [t for t in report.tasks if t.kind in (TaskKind.NOISE, TaskKind.CORRUPTION)]),
        ("out of distribution", [t for t in report.tasks if t.kind is TaskKind.OOD]),
    )
    made = (_class_series(label, members) for label, members in groups)
    return [s for s in made if s is not None]


def too_few_per_class(report: Report) -> str | None:
    """Why the per-class figure is left out when every class has fewer than MIN_CLASS_SAMPLES
    samples in a task (ImageNet's validation subsets: often one image per class), else None."""
    series = class_series(report)
    if not series:
        return None
    most = max(max(s.n, default=0) for s in series)
    if most >= MIN_CLASS_SAMPLES:
        return None
    step = f"one sample moves a class's recall by {100 / most:.0f} points" if most else "no class has a sample"
    return (
        f"Not drawn: every class has fewer than {MIN_CLASS_SAMPLES} samples in a task (at most {most}), "
        f"too few for a per-class recall to mean anything ({step})."
    )


def class_recall_drop(report: Report) -> Figure | None:
    """Per-class recall drop (dense recall minus pruned recall) on the clean task and pooled over
    the shifted tasks and the out-of-distribution sets; the classes that lose most when there
    are many. Each bar is labelled with its class's samples in a task. None when there are no
    per-class counts or too few (`too_few_per_class`)."""
    series = class_series(report)
    if not series or too_few_per_class(report) is not None:
        return None
    width = max(len(s.drops) for s in series)
    names = common.class_names(report, "test") or []
    labels = [common.class_name(names, i) for i in range(width)]
    order = sorted(range(width), key=lambda i: -max(s.drops[i] if i < len(s.drops) else 0.0 for s in series))
    shown = sorted(order[:MAX_CLASSES]) if width > MAX_CLASSES else list(range(width))
    colours = ("#57606a", PRUNED, "#8250df")
    with _context():
        fig = _figure(7.2, 0.6 + 0.24 * len(shown) * max(1, len(series)) ** 0.5)
        ax = fig.subplots()
        bar = 0.8 / len(series)
        for k, s in enumerate(series):
            ys = [i + (k - (len(series) - 1) / 2) * bar for i in range(len(shown))]
            bars = ax.barh(
                ys,
                [100 * s.drops[c] if c < len(s.drops) else 0.0 for c in shown],
                height=bar,
                color=colours[k % 3],
                label=s.label,
            )
            counts = [f"n={s.n[c]:,}" if c < len(s.n) else "" for c in shown]
            ax.bar_label(bars, labels=counts, padding=2, fontsize=5.5, color="#57606a")
        ax.margins(x=0.12)  # room for the counts at the bars' ends
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([labels[c] for c in shown])
        ax.invert_yaxis()
        ax.axvline(0, color="#24292f", lw=0.8)
        ax.set_xlabel("recall drop (percentage points; > 0: the pruned model is worse)")
        if width > MAX_CLASSES:
            ax.set_title(f"the {len(shown)} of {width} classes that lose most", loc="left", pad=18)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(series), fontsize=7, borderaxespad=0.2)
        fig.tight_layout()
        return _uri(fig)


def severities_text(report: Report) -> str:
    """The corruption severities that ran, for a caption: 'severity 3', 'severities 1-5',
    'severities 1, 3 and 5' (with a word when not every corruption ran at each)."""
    by_name: dict[str, set[int]] = defaultdict(set)
    for task in report.tasks:
        if task.kind is TaskKind.CORRUPTION:
            by_name[task.group].add(int(task.name.rsplit("/", 1)[1]))
    ran = sorted(set().union(*by_name.values())) if by_name else []
    if not ran:
        return "no severity"
    if len(ran) == 1:
        text = f"severity {ran[0]}"
    elif len(ran) > 2 and ran == list(range(ran[0], ran[-1] + 1)):
        text = f"severities {ran[0]}-{ran[-1]}"
    else:
        text = "severities " + ", ".join(map(str, ran[:-1])) + f" and {ran[-1]}"
    if any(len(severities) < len(ran) for severities in by_name.values()):
        text += " (not every corruption at each)"
    return text


def worst_task(report: Report) -> TaskRecord | None:
    """The segmentation task with the largest mIoU drop that records per-class IoU (first on ties)."""
    tasks = [t for t in report.tasks if t.class_iou is not None and t.miou_drop is not None]
    return max(tasks, key=lambda t: t.miou_drop or 0.0) if tasks else None


def _iou_drops(task: TaskRecord) -> list[tuple[int, float]]:
    """(class, dense IoU - pruned IoU) for the classes in either model's union; a class one model
    never meets (None) counts as IoU 0 there (it is then 0 for the other too: nothing in truth)."""
    assert task.class_iou is not None
    pairs = zip(task.class_iou.dense, task.class_iou.pruned)
    return [(c, (d or 0.0) - (p or 0.0)) for c, (d, p) in enumerate(pairs) if d is not None or p is not None]


def class_iou_drop(report: Report) -> Figure | None:
    """Per-class IoU drop (dense IoU minus pruned IoU) on the task with the largest mIoU drop; the
    classes that lose most when there are many."""
    task = worst_task(report)
    if task is None:
        return None
    drops = _iou_drops(task)
    if not drops:
        return None
    names = common.class_names(report, task.source) or []
    shown = sorted(sorted(drops, key=lambda d: -d[1])[:MAX_CLASSES]) if len(drops) > MAX_CLASSES else drops
    with _context():
        fig = _figure(7.2, 0.6 + 0.24 * len(shown))
        ax = fig.subplots()
        ax.barh(range(len(shown)), [100 * d for _, d in shown], height=0.6, color=PRUNED, label=task.name)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([common.class_name(names, c) for c, _ in shown])
        ax.invert_yaxis()
        ax.axvline(0, color="#24292f", lw=0.8)
        ax.set_xlabel("IoU drop (percentage points; > 0: the pruned model is worse)")
        title = f"task {task.name}" + (
            f": the {len(shown)} of {len(drops)} classes that lose most" if len(drops) > MAX_CLASSES else ""
        )
        ax.set_title(title, loc="left")
        fig.tight_layout()
        return _uri(fig)


def reliability_diagram(report: Report) -> Figure | None:
    """Both models' reliability diagram on the calibration task (`_calibration.calibration_task`:
    clean, else the first with bins): per non-empty bin of the top-1 probability, its accuracy
    against its mean confidence, the diagonal of a calibrated model, each model's ECE in the
    legend, and below, the samples per bin. None when no task records bins."""
    from prunegate.report.render._calibration import calibration_task

    task = calibration_task(report)
    if task is None or task.calibration is None:
        return None
    sides = [
        ("dense", task.calibration.dense, task.dense.ece, DENSE, "-"),
        ("pruned", task.calibration.pruned, task.pruned.ece, PRUNED, "--"),
    ]
    edges = task.calibration.bins
    with _context():
        fig = _figure(4.2, 4.4)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
        top.plot([0, 1], [0, 1], ":", color="#6e7781", lw=1, label="calibrated")
        for k, (side, bins, ece, colour, style) in enumerate(sides):
            points = [(c, a) for c, a in zip(bins.confidence, bins.accuracy) if c is not None and a is not None]
            ece_text = f"ECE {common.format_metric('dense_ece', ece)}" if ece is not None else "ECE n/a"
            top.plot(
                [c for c, _ in points],
                [a for _, a in points],
                style,
                color=colour,
                marker="o",
                ms=3,
                lw=1.3,
                label=f"{side} ({ece_text})",
            )
            width = 1 / edges / 2.2
            lefts = [(i + 0.5) / edges + (k - 0.5) * width for i in range(len(bins.n))]
            lefts[edges:] = [1.0 + (k - 0.5) * width] * (len(bins.n) - edges)  # the bin of exactly 1
            bottom.bar(lefts, bins.n, width=width, color=colour, alpha=0.7, label=side)
        top.set_xlim(0, 1.04)
        top.set_ylim(0, 1.02)
        top.set_ylabel("accuracy")
        top.set_title(f"task {task.name}", loc="left")
        top.legend(loc="upper left", fontsize=7)
        bottom.set_xlabel("mean top-1 probability (confidence)")
        bottom.set_ylabel("samples")
        fig.tight_layout()
        return _uri(fig)


def sequential_intervals(report: Report) -> Figure | None:
    """gate.sequential: each rule's anytime-valid interval against the images used, at every
    look, with its threshold (dotted). None for a full pass."""
    sequential = report.sequential
    if sequential is None or not any(r.history for r in sequential.rules):
        return None
    thresholds = {r.name: r.threshold for r in report.rules}
    metrics = {r.name: r.metric for r in report.rules}
    with _context():
        fig = _figure(6.0, 1.0 + 1.8 * len(sequential.rules))
        axes = fig.subplots(len(sequential.rules), 1, squeeze=False)[:, 0]
        for ax, rule in zip(axes, sequential.rules):
            images = [look.images for look in rule.history]
            ax.fill_between(images, [look.low for look in rule.history], [look.high for look in rule.history],
                            color=PRUNED, alpha=0.3, step="post", label="anytime-valid interval")  # fmt: skip
            if rule.name in thresholds:
                ax.axhline(thresholds[rule.name], color="#6e7781", ls=":", lw=1.2, label="threshold")
            ax.set_title(f"{rule.name} ({metrics.get(rule.name, '?')}): {rule.status}", loc="left", fontsize=8)
            ax.set_ylabel(metrics.get(rule.name, ""), fontsize=7)
            ax.legend(loc="upper right", fontsize=7)
        axes[-1].set_xlabel("images evaluated")
        fig.tight_layout()
        return _uri(fig)


def figures(report: Report) -> list[dict]:
    """Every figure the report has data for: {id, title, caption, uri, width}; a figure left out
    for too few samples has uri None and says why in its caption."""
    if report.task == "segmentation":
        made = _segmentation_figures(report)
    else:
        made = [
            (
                "accuracy-vs-severity",
                "Accuracy vs corruption severity",
                "Top-1 accuracy of the dense (solid) and pruned (dashed) model for each corruption, "
                f"{severities_text(report)}; 'clean' is the uncorrupted test set.",
                accuracy_vs_severity(report),
            ),
            (
                "agreement-vs-noise",
                "Agreement vs noise level",
                "Fraction of samples on which both models predict the same "
                "class, per noise kind and level; dotted lines are the policy's agreement thresholds.",
                agreement_vs_noise(report),
            ),
            (
                "class-recall-drop",
                "Per-class recall drop",
                "How much recall each class loses after pruning; n: the class's samples in one task "
                "(a pooled series counts them once per task).",
                class_recall_drop(report),
            ),
        ]
    made.append(
        (
            "sequential-intervals",
            "Sequential gate: each rule's interval as images arrive",
            f"{common.sequential_line(report)}. The shaded band is the rule's anytime-valid interval after each "
            "look; the dotted line its threshold. A rule is decided once the band lies on one side.",
            sequential_intervals(report),
        )
    )
    shown = [{"id": i, "title": t, "caption": c, "uri": f.uri, "width": f.width} for i, t, c, f in made if f]
    left_out = too_few_per_class(report) if report.task != "segmentation" else None
    if left_out:  # said where the figure would be, so that its absence is not read as "no drop"
        shown.append({"id": "class-recall-drop", "title": "Per-class recall drop", "caption": left_out, "uri": None})
    return shown


def _segmentation_figures(report: Report) -> list[tuple[str, str, str, Figure | None]]:
    """The figures of a segmentation report: (id, title, caption, figure)."""
    return [
        (
            "miou-vs-severity",
            "mIoU vs corruption severity",
            f"Mean IoU of the dense (solid) and pruned (dashed) model for each corruption, {severities_text(report)}; "
            "'clean' is the uncorrupted test set.",
            accuracy_vs_severity(report),
        ),
        (
            "agreement-vs-noise",
            "Pixel agreement vs noise level",
            "Fraction of valid pixels on which both models predict the same class, per noise kind and "
            "level; dotted lines are the policy's pixel agreement thresholds.",
            agreement_vs_noise(report),
        ),
        (
            "class-iou-drop",
            "Per-class IoU drop",
            "How much IoU each class loses after pruning, on the task with the largest mIoU drop "
            "(classes in neither truth nor prediction are left out).",
            class_iou_drop(report),
        ),
    ]
