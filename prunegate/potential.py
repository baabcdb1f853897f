"""Prune potential and excess error across a family of pruned models of one dense parent.

Definitions (Liebenwein et al., "Lost in Pruning", MLSys 2021):
- a member's prune ratio is 1 - nonzero/total parameters of its file;
- the prune potential of a task is the largest prune ratio whose error on the task is within
  `delta` of the dense model's error there. Any qualifying member counts, even if a less pruned
  one does not qualify; the dense model itself (ratio 0) always qualifies;
- the excess error of a task group at a prune ratio is how much the (group - clean) error gap
  grew relative to the dense model's: (e_group - e_clean)_pruned - (e_group - e_clean)_dense.

Groups: clean, each ood set, each noise kind, each corruption (its severities' mean error).
Pure functions on errors; the CLI runs the pass and renders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import fmean

from prunegate.plan import Task, TaskKind

DEFAULT_DELTA = 0.005


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


def prune_potential(dense_error: float, errors: list[float], ratios: list[float], delta: float) -> float:
    """The largest prune ratio whose error is within `delta` of the dense error (0: the dense model)."""
    qualifying = [r for e, r in zip(errors, ratios) if e <= dense_error + delta + 1e-12]
    return max([0.0, *qualifying])


def analyse(
    tasks: list[Task],
    dense_errors: dict[str, float],
    member_errors: list[dict[str, float]],
    members: list[Member],
    delta: float,
) -> dict:
    """The potential table: per task and per group, plus excess errors per group."""
    ratios = [m.prune_ratio for m in members]

    def row(name: str, dense_error: float, errors: list[float]) -> Row:
        return Row(name, dense_error, errors, prune_potential(dense_error, errors, ratios, delta))

    task_rows = [row(t.name, dense_errors[t.name], [e[t.name] for e in member_errors]) for t in tasks]
    groups: dict[str, list[str]] = {}
    for t in tasks:
        groups.setdefault(task_group(t), []).append(t.name)
    group_rows = []
    for name, names in groups.items():
        dense = fmean(dense_errors[n] for n in names)
        group_rows.append(row(name, dense, [fmean(e[n] for n in names) for e in member_errors]))
    clean = next((g for g in group_rows if g.name == "clean"), None)
    if clean is not None:
        for g in group_rows:
            g.excess_error = [(e - c) - (g.dense_error - clean.dense_error) for e, c in zip(g.errors, clean.errors)]
    return {
        "delta": delta,
        "members": [{**asdict(m), "prune_ratio": m.prune_ratio} for m in members],
        "tasks": [r.to_dict() for r in task_rows],
        "groups": [r.to_dict() for r in group_rows],
    }


def plot_png(result: dict, title: str) -> bytes:
    """Two panels like the paper's: prune potential per group (bars) and excess error vs prune
    ratio per group (lines)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = result["groups"]
    ratios = [m["prune_ratio"] for m in result["members"]]
    order = sorted(range(len(ratios)), key=ratios.__getitem__)
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1.1, 1])
    names = [g["name"] for g in groups]
    potentials = [100 * g["potential"] for g in groups]
    colours = ["#4c72b0" if n == "clean" else "#dd8452" if n.startswith(("noise", "ood")) else "#8c8c8c" for n in names]
    left.bar(range(len(names)), potentials, color=colours)
    left.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    left.set_ylabel("prune potential (%)")
    left.set_ylim(0, 100)
    left.set_title(f"prune potential (error within {100 * result['delta']:g} pp of dense)")
    for g in groups:
        if g.get("excess_error") is None or g["name"] == "clean":
            continue
        style = "-" if g["name"].startswith(("noise", "ood")) else ":"
        right.plot(
            [100 * ratios[i] for i in order],
            [100 * g["excess_error"][i] for i in order],
            style,
            marker=".",
            label=g["name"],
            linewidth=1,
        )
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xlabel("prune ratio (%)")
    right.set_ylabel("excess error (pp)")
    right.set_title("excess error vs clean, relative to dense")
    if right.lines[1:]:
        right.legend(fontsize=6, ncol=2)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
