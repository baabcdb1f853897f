"""Policy -> the list of tasks to evaluate.

A task is one (source, shift) pair; its name is shared by the report, the rules' globs and the
random streams: `clean`, `ood/<set>`, `noise/<kind>/<level>`, `corruption/<name>/<severity>`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal, Optional

from prunegate.errors import PolicyError
from prunegate.policy import Policy, repeated

TEST_SOURCE = "test"
TaskKind = Literal["clean", "ood", "noise", "corruption"]


@dataclass(frozen=True)
class Task:
    name: str
    kind: TaskKind
    source: str  # "test" or the name of an ood set
    shift: Optional[str] = None  # noise kind or corruption name
    param: Optional[float] = None  # noise level or corruption severity
    draws: int = 1
    preset: Optional[str] = None
    precomputed: bool = False  # read from a precomputed folder: the source is already shifted

    @property
    def group(self) -> str:
        """clean, ood, noise, or the corruption's name: the unit of the paper's summaries."""
        if self.kind == "corruption":
            return self.shift or "corruption"
        return self.kind


def format_level(level: float) -> str:
    return f"{level:g}"


def build_plan(policy: Policy) -> list[Task]:
    tasks = [Task("clean", "clean", TEST_SOURCE)]
    tasks += [Task(f"ood/{o.name}", "ood", o.name) for o in policy.data.ood]
    for noise in policy.suite.noise:
        for level in noise.levels:
            name = f"noise/{noise.kind}/{format_level(level)}"
            tasks.append(Task(name, "noise", TEST_SOURCE, noise.kind, float(level), noise.draws))
    corruptions = policy.suite.corruptions
    if corruptions is not None:
        for corruption in corruptions.corruption_names():
            for severity in corruptions.severities:
                name = f"corruption/{corruption}/{severity}"
                if corruptions.precomputed:  # each (corruption, severity) block is its own source
                    tasks.append(Task(name, "corruption", name, corruption, severity, precomputed=True))
                else:
                    tasks.append(Task(name, "corruption", TEST_SOURCE, corruption, severity, preset=corruptions.preset))
    names = [t.name for t in tasks]
    twice = repeated(names)
    if twice:
        raise PolicyError(f"the suite lists task {twice[0]!r} twice", file=policy.file, field="suite")
    check_rules_match(policy, names)
    return tasks


def match_tasks(globs: list[str], names: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def check_rules_match(policy: Policy, names: list[str]) -> None:
    for i, rule in enumerate(policy.gate.rules):
        for glob in rule.globs:
            if not match_tasks([glob], names):
                raise PolicyError(
                    f"rule {rule.name!r}: tasks {glob!r} matches no task; tasks are: {', '.join(names)}",
                    file=policy.file,
                    field=f"gate.rules.{i}.tasks",
                )
