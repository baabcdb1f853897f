"""Policy -> the list of tasks to evaluate.

A task is one (source, shift) pair; its name is shared by the report, the rules' globs and the
random streams: `clean`, `ood/<set>`, `noise/<kind>/<level>`, `corruption/<name>/<severity>`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum

from prunegate.errors import PolicyError
from prunegate.policy import Policy, repeated

TEST_SOURCE = "test"


class TaskKind(StrEnum):
    """What a task does to its source's images (the report's `tasks[].kind`)."""

    CLEAN = "clean"
    OOD = "ood"
    NOISE = "noise"
    CORRUPTION = "corruption"


@dataclass(frozen=True)
class Task:
    """One (source, shift) pair of the plan."""

    name: str
    kind: TaskKind
    source: str  # "test", the name of an ood set, or a precomputed corruption block
    shift: str | None = None  # noise kind or corruption name
    severity: int | None = None  # corruptions: 1-5
    level: float | None = None  # noise: its level
    draws: int = 1
    preset: str | None = None
    precomputed: bool = False  # read from a precomputed folder: the source is already shifted

    @property
    def group(self) -> str:
        """clean, ood, noise, or the corruption's name: the unit of the paper's summaries."""
        if self.kind is TaskKind.CORRUPTION:
            return self.shift or "corruption"
        return self.kind.value

    @property
    def shifted(self) -> bool:
        """Whether the pass shifts the source's images for this task (noise, generated corruptions)."""
        return self.kind in (TaskKind.NOISE, TaskKind.CORRUPTION) and not self.precomputed


def format_level(level: float) -> str:
    """A noise level as task names spell it (0.1, 0.05, 1e-05)."""
    return f"{level:g}"


def build_plan(policy: Policy) -> list[Task]:
    """The policy's tasks in report order; a duplicate task or a rule that matches none is an error."""
    tasks = [Task("clean", TaskKind.CLEAN, TEST_SOURCE)]
    tasks += [Task(f"ood/{o.name}", TaskKind.OOD, o.name) for o in policy.data.ood]
    for noise in policy.suite.noise:
        for level in noise.levels:
            name = f"noise/{noise.kind}/{format_level(level)}"
            tasks.append(Task(name, TaskKind.NOISE, TEST_SOURCE, noise.kind, level=float(level), draws=noise.draws))
    corruptions = policy.suite.corruptions
    if corruptions is not None:
        for corruption in corruptions.corruption_names():
            for severity in corruptions.severities:
                name = f"corruption/{corruption}/{severity}"
                if corruptions.precomputed:  # each (corruption, severity) block is its own source
                    tasks.append(Task(name, TaskKind.CORRUPTION, name, corruption, severity=severity, precomputed=True))
                else:
                    tasks += corruption_tasks([corruption], [severity], corruptions.preset)
    names = [t.name for t in tasks]
    twice = repeated(names)
    if twice:
        raise PolicyError(f"the suite lists task {twice[0]!r} twice", file=policy.file, field="suite")
    check_rules_match(policy, names)
    return tasks


def corruption_tasks(names: list[str], severities: list[int], preset: str, source: str = TEST_SOURCE) -> list[Task]:
    """The generated corruption tasks of `preset` on `source`: each name at each severity."""
    return [
        Task(f"corruption/{name}/{severity}", TaskKind.CORRUPTION, source, name, severity=severity, preset=preset)
        for name in names
        for severity in severities
    ]


def match_tasks(globs: list[str], names: list[str]) -> list[str]:
    """The names any of the shell-style globs match, in their order."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def check_rules_match(policy: Policy, names: list[str]) -> None:
    """Every glob of every rule must match a task: a typo is an error, not a rule over nothing."""
    for i, rule in enumerate(policy.gate.rules):
        for glob in rule.globs:
            if not match_tasks([glob], names):
                raise PolicyError(
                    f"rule {rule.name!r}: tasks {glob!r} matches no task; tasks are: {', '.join(names)}",
                    file=policy.file,
                    field=f"gate.rules.{i}.tasks",
                )
