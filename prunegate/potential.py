"""Prune potential and excess error across a family of pruned models of one dense parent.

Definitions (Liebenwein et al., "Lost in Pruning", MLSys 2021):
- a member's prune ratio is 1 - nonzero/total parameters of its file;
- the prune potential of a task is the largest prune ratio whose error on the task is within
  `delta` of the dense model's error there. Any qualifying member counts, even if a less pruned
  one does not qualify; the dense model itself (ratio 0) always qualifies;
- the excess error of a task group at a prune ratio is how much the (group - clean) error gap
  grew relative to the dense model's: (e_group - e_clean)_pruned - (e_group - e_clean)_dense.

Groups: clean, each ood set, each noise kind, each corruption (its severities' mean error).
Pure functions on errors; the CLI runs the pass, `annotate`s the result and renders.

Other metrics (`--metric`): the potential of a task under a paired metric M (one that compares
the member with the dense model, and that a gate rule can bound) is the largest prune ratio whose
M stays within `delta` of the value M takes for the dense model against itself: 0 for the drops,
increases, divergences and distances (accuracy_drop, top5_drop, ece_increase, nll_increase,
brier_increase, kl_divergence, selective_risk_increase, group_accuracy_drop, class_recall_drop,
newly_wrong, softmax_l2, softmax_linf; segmentation: miou_drop, pixel_accuracy_drop,
class_iou_drop), so M <= delta qualifies; 1 for the similarities (agreement, probability_loyalty,
error_consistency; pixel_agreement), so M >= 1 - delta qualifies. delta is in M's own units (nats
for nll_increase and kl_divergence). A signed increase below 0 (the member better calibrated)
qualifies. An undefined value (NaN) never qualifies. `accuracy_drop` gives the same potential as
the default `error`; only the default has an excess error (the others are differences already).
One model's own numbers (dense_top5, pruned_ece, ...) and newly_right (a gain) have no potential.

Sampling resolution: on n samples an error moves in steps of 1/n, so a delta of at most 1/n
(0.5 pp at n = 200: one image) lets a member differ from the dense model by one sample at most,
and the potential turns on single samples. `annotate` names the tasks where that is so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import PurePath
from statistics import fmean
from typing import TYPE_CHECKING, Literal

from prunegate.plan import Task, TaskKind

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_DELTA = 0.005
ERROR_NAMES = {"classification": "top-1 error", "segmentation": "1 - mIoU"}
DEFAULT_METRIC = "error"  # the kind's error: top-1 error, 1 - mIoU
Better = Literal["lower", "higher"]
# --metric: per kind, the paired metrics with a potential and which way is better (the dense
# model's value against itself is 0 for "lower", 1 for "higher")
POTENTIAL_METRICS: dict[str, dict[str, Better]] = {
    "classification": {
        **dict.fromkeys(
            (
                "accuracy_drop",
                "top5_drop",
                "ece_increase",
                "nll_increase",
                "brier_increase",
                "kl_divergence",
                "selective_risk_increase",
                "group_accuracy_drop",
                "class_recall_drop",
                "newly_wrong",
                "softmax_l2",
                "softmax_linf",
            ),
            "lower",
        ),
        **dict.fromkeys(("agreement", "probability_loyalty", "error_consistency"), "higher"),
    },
    "segmentation": {
        **dict.fromkeys(("miou_drop", "pixel_accuracy_drop", "class_iou_drop"), "lower"),
        "pixel_agreement": "higher",
    },
}
# continuous metrics: no one-sample step, so no sampling-resolution warning
CONTINUOUS = (
    *("ece_increase", "nll_increase", "brier_increase", "kl_divergence", "probability_loyalty"),
    *("softmax_l2", "softmax_linf"),
)


def potential_metric(metric: str, kind: str) -> tuple[str, Better]:
    """`--metric` checked for the policy's kind: (the key task records keep it under, which way is
    better). `selective_risk_increase@0.9` names a coverage (default 0.8). A ValueError with the
    one-line reason otherwise."""
    from prunegate.policy import DEFAULT_COVERAGE, METRICS

    if metric == DEFAULT_METRIC:
        return metric, "lower"
    name, at, coverage = metric.partition("@")
    known = POTENTIAL_METRICS.get(kind, {})
    if name not in known:
        choices = ", ".join([DEFAULT_METRIC, *known])
        if name in METRICS and name.startswith(("dense_", "pruned_")):
            reason = f"{name} is one model's own number, not a comparison with the dense model"
        elif name == "newly_right":
            reason = "newly_right counts the member's gains: it has no tolerance to stay within"
        elif name in METRICS:
            reason = f"{name} is not a {kind} metric"
        else:
            reason = f"unknown metric {name!r}"
        raise ValueError(f"{reason}; expected one of {choices}")
    if at and name != "selective_risk_increase":
        raise ValueError(f"only selective_risk_increase takes a coverage (@C), got {metric!r}")
    if name == "selective_risk_increase":
        try:
            value = float(coverage) if at else DEFAULT_COVERAGE
        except ValueError:
            value = float("nan")
        if not 0 < value <= 1:
            raise ValueError(f"the coverage in {metric!r} must be a number in (0, 1]")
        return f"{name}@{value:g}", "lower"
    return name, known[name]


def task_group(task: Task) -> str:
    """The group a task's errors are averaged in: clean, each ood set, each noise kind, each corruption."""
    if task.kind is TaskKind.NOISE:
        return f"noise/{task.shift}"
    if task.kind is TaskKind.OOD:
        return task.name
    return task.group  # clean, or the corruption's name


@dataclass
class Member:
    path: str
    sha256: str
    parameters: int
    nonzero_parameters: int

    @property
    def prune_ratio(self) -> float:
        return 1.0 - self.nonzero_parameters / self.parameters if self.parameters else 0.0


@dataclass
class Row:
    name: str
    dense_error: float
    errors: list[float]  # one per member, in member order
    potential: float
    excess_error: list[float] | None = None  # groups only, None without a clean task

    def to_dict(self) -> dict:
        return asdict(self)


def prune_potential(
    dense_error: float, errors: list[float], ratios: list[float], delta: float, better: Better = "lower"
) -> float:
    """The largest prune ratio whose error is within `delta` of the dense error (0: the dense model);
    with `better="higher"` (a similarity), whose value is at least the dense value minus `delta`."""
    if better == "higher":
        qualifying = [r for e, r in zip(errors, ratios) if e >= dense_error - delta - 1e-12]
    else:
        qualifying = [r for e, r in zip(errors, ratios) if e <= dense_error + delta + 1e-12]
    return max([0.0, *qualifying])


def analyse(
    tasks: list[Task],
    dense_errors: dict[str, float],
    member_errors: list[dict[str, float]],
    members: list[Member],
    delta: float,
    metric: str = DEFAULT_METRIC,
    better: Better = "lower",
) -> dict:
    """The potential table: per task and per group, plus excess errors per group (the default
    metric only). For another metric the "errors" are its values (the dense model's: its value
    against itself, 0 or 1) and `better` says which way qualifies."""
    ratios = [m.prune_ratio for m in members]

    def row(name: str, dense_error: float, errors: list[float]) -> Row:
        return Row(name, dense_error, errors, prune_potential(dense_error, errors, ratios, delta, better))

    task_rows = [row(t.name, dense_errors[t.name], [e[t.name] for e in member_errors]) for t in tasks]
    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(task_group(t), []).append(t.name)
    group_rows = []
    for name, names in groups.items():
        dense = fmean(dense_errors[n] for n in names)
        group_rows.append(row(name, dense, [fmean(e[n] for n in names) for e in member_errors]))
    clean = next((g for g in group_rows if g.name == "clean"), None)
    if clean is not None and metric == DEFAULT_METRIC:
        for g in group_rows:
            g.excess_error = [(e - c) - (g.dense_error - clean.dense_error) for e, c in zip(g.errors, clean.errors)]
    return {
        "delta": delta,
        "metric": metric,
        "better": better,
        "members": [{**asdict(m), "prune_ratio": m.prune_ratio} for m in members],
        "tasks": [r.to_dict() for r in task_rows],
        "groups": [r.to_dict() for r in group_rows],
    }


def member_labels(paths: list[str | None]) -> list[str]:
    """A short name per member for table columns and plot ticks: the file's stem (wt-30), its
    name where stems repeat (wt-30.onnx, wt-30.pt), else its place in the family (#1, #2, ...)."""
    names = [PurePath(p) if p else None for p in paths]
    for part in ("stem", "name"):
        labels = [getattr(n, part) if n else "" for n in names]
        if all(labels) and len(set(labels)) == len(labels):
            return labels
    return [f"#{i + 1}" for i in range(len(paths))]


def below_resolution(delta: float, n: dict[str, int]) -> dict[str, int]:
    """The tasks (name -> n) where delta admits at most one sample's error: delta <= 1/n."""
    return {name: count for name, count in n.items() if count > 0 and delta * count <= 1 + 1e-9}


def resolution_warning(delta: float, below: dict[str, int], tasks: int) -> str:
    """One line: delta against the sampling resolution of the tasks in `below`."""
    name, smallest = min(below.items(), key=lambda item: item[1])
    return (
        f"delta {100 * delta:g} pp is at most one sample's error on {len(below)} of {tasks} tasks "
        f"(one sample is {100 / smallest:.2f} pp at n = {smallest}, {name}): their potential turns on "
        "single samples; evaluate more samples or raise --delta"
    )


def annotate(result: dict, kind: str) -> dict:
    """`result` (from check.run_potential) with what its readers need to know: what an error is,
    a short label per member and, when delta is below the sampling resolution of some tasks,
    `below_resolution` (task -> n) and a line in `warnings`."""
    for member, label in zip(result["members"], member_labels([m.get("path") for m in result["members"]])):
        member["label"] = label
    metric = result.get("metric", DEFAULT_METRIC)
    result["error"] = ERROR_NAMES.get(kind, "error") if metric == DEFAULT_METRIC else metric
    counted = metric.partition("@")[0] not in CONTINUOUS
    below = below_resolution(result["delta"], result.get("n", {})) if counted else {}
    result["below_resolution"] = below
    result["warnings"] = [resolution_warning(result["delta"], below, len(result["n"]))] if below else []
    return result


def labels_of(result: dict) -> list[str]:
    """The members' short names (`annotate`'s, or made from their paths)."""
    members = result["members"]
    if all(m.get("label") for m in members):
        return [m["label"] for m in members]
    return member_labels([m.get("path") for m in members])


def members_caption(result: dict, per_line: int = 4) -> str:
    """'members: wt-30 = wt-30.onnx (prune ratio 29.9%); ...', a few to a line."""
    entries = [
        f"{label} = {PurePath(m['path']).name if m.get('path') else '?'} (prune ratio {100 * m['prune_ratio']:.1f}%)"
        for label, m in zip(labels_of(result), result["members"])
    ]
    lines = ["; ".join(entries[i : i + per_line]) for i in range(0, len(entries), per_line)]
    return "members: " + "\n".join(lines)


def _colour(name: str) -> str:
    return "#4c72b0" if name == "clean" else "#dd8452" if name.startswith(("noise", "ood")) else "#8c8c8c"


def _potential_bars(axes: Axes, groups: list[dict], delta: float, error: str = "error") -> None:
    """Bars of each group's potential, each labelled with its value; a zero potential, which would
    be no bar at all, gets a red marker on the axis and the label '0'."""
    names = [g["name"] for g in groups]
    potentials = [100 * g["potential"] for g in groups]
    bars = axes.bar(range(len(names)), potentials, color=[_colour(n) for n in names])
    axes.bar_label(bars, labels=[f"{p:.0f}" if p else "" for p in potentials], fontsize=7, padding=2)
    zero = [i for i, p in enumerate(potentials) if p == 0]
    if zero:
        axes.plot(
            zero,
            [0] * len(zero),
            linestyle="none",
            marker="^",
            markersize=8,
            color="#c44e52",
            clip_on=False,
            zorder=3,
            label="potential 0: no member within delta",
        )
        for i in zero:  # above the marker, where a bar's value would be
            axes.annotate("0", (i, 0), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=7)
        axes.legend(fontsize=7, loc="upper right")
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes.set_xlabel("task group")
    axes.set_ylabel("prune potential: prune ratio (%)")
    axes.set_ylim(0, 105)
    within = f"{100 * delta:g} pp" if error in ERROR_NAMES.values() or error == "error" else f"{delta:g}"
    axes.set_title(f"prune potential ({error} within {within} of dense)")


def _excess_lines(axes: Axes, result: dict) -> None:
    """Each group's excess error against the members' prune ratios, the members named on the axis
    (the default metric only: for another, the panel says so)."""
    if result.get("metric", DEFAULT_METRIC) != DEFAULT_METRIC:
        axes.text(
            0.5,
            0.5,
            f"excess error: only for --metric {DEFAULT_METRIC}\n({result['metric']} already compares with dense)",
            ha="center",
            transform=axes.transAxes,
        )
        axes.set_axis_off()
        return
    ratios = [100 * m["prune_ratio"] for m in result["members"]]
    order = sorted(range(len(ratios)), key=ratios.__getitem__)
    for g in result["groups"]:
        if g.get("excess_error") is None or g["name"] == "clean":
            continue
        style = "-" if g["name"].startswith(("noise", "ood")) else ":"
        errors = [100 * g["excess_error"][i] for i in order]
        axes.plot([ratios[i] for i in order], errors, style, marker=".", label=g["name"], linewidth=1)
    if not axes.lines:
        axes.text(0.5, 0.5, "no clean task: no excess error", ha="center", transform=axes.transAxes)
    axes.axhline(0, color="black", linewidth=0.8)
    labels = labels_of(result)
    axes.set_xticks([ratios[i] for i in order], [f"{labels[i]}\n{ratios[i]:.1f}%" for i in order], fontsize=7)
    axes.set_xlabel("prune ratio of each member (%)")
    axes.set_ylabel("excess error (pp)")
    axes.set_title(f"excess error ({result.get('error', 'error')} gap to clean, minus dense's)")
    if axes.lines[1:]:
        axes.legend(fontsize=6, ncol=2)


def potential_figure(result: dict, title: str) -> Figure:
    """Two panels like the paper's: prune potential per group (bars) and excess error vs prune
    ratio per group (lines), with the members' files named below."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5.4), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1.1, 1])
    _potential_bars(left, result["groups"], result["delta"], result.get("error", "error"))
    _excess_lines(right, result)
    figure.suptitle(title)
    figure.supxlabel(members_caption(result), fontsize=8)
    return figure


def plot_png(result: dict, title: str) -> bytes:
    """`potential_figure` as PNG bytes."""
    import io

    buffer = io.BytesIO()
    potential_figure(result, title).savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
