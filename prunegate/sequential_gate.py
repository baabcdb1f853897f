"""The sequential gate (gate.sequential): evaluate each data set in a seeded random order, look at
the evidence as batches arrive, and stop as soon as every rule is decided, validly.

Each rule is decided on anytime-valid confidence sequences (prunegate.metrics.sequential), one
per task it reads (one for a mean over the tasks of one data set), with 1 - confidence split over
the rules and their sequences, so that the chance that any rule's decision is wrong stays within
1 - confidence however many looks there are. The pass:

- reads each data set in a seeded permutation (suite.seed), so that every prefix is a random
  sample; all tasks of a data set advance together;
- after each batch (or every gate.looks images), feeds each rule's sequences the per-image values
  of the images just evaluated (the mean over a noise task's draws), in permutation order;
- stops a data set, once it has gate.min_samples images, when every rule that reads it is
  decided (or its tasks in it are, for a rule that checks each task); stops everything when a rule
  is decided fail (then the verdict is FAIL, and the data sets not yet read give only
  gate.min_samples images each, so that every task still has a record);
- otherwise runs to the end of the data, where a rule still straddling its threshold is undecided.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from prunegate.distributed import SINGLE, World, gather_objects
from prunegate.metrics import TaskTally
from prunegate.metrics import functional as F
from prunegate.metrics.paired import top5_correctness
from prunegate.metrics.sequential import ConfidenceSequence, RuleShape, combine, decide_rule, split_alpha
from prunegate.plan import Task, match_tasks
from prunegate.policy import Policy, Rule
from prunegate.shifts.rng import task_key

METHOD = "predictable plug-in empirical-Bernstein confidence sequence (Waudby-Smith & Ramdas 2024)"
INTERVAL_METHOD = "anytime"
Look = Literal["continue", "stop-source", "stop-all"]
SlotValues = Callable[[TaskTally], np.ndarray]


def _correct(tally: TaskTally) -> tuple[np.ndarray, np.ndarray]:
    dense, pruned = tally.correctness()
    return dense.numpy().astype(np.float64), pruned.numpy().astype(np.float64)


def _top5(tally: TaskTally) -> tuple[np.ndarray, np.ndarray]:
    dense, pruned = top5_correctness(tally)
    return dense.numpy().astype(np.float64), pruned.numpy().astype(np.float64)


def _agree(tally: TaskTally) -> np.ndarray:
    return F.agree(tally.dense_pred, tally.pruned_pred).numpy().astype(np.float64)


def _float(values: torch.Tensor) -> np.ndarray:
    return values.double().numpy()


# The metrics a sequential rule may use: per-sample values whose mean is the metric, and their
# range (a confidence sequence needs bounded values). NLL and KL are unbounded; ECE, the selective
# risk, class and group drops and the error consistency are not means of per-sample values.
ANYTIME_METRICS: dict[str, tuple[SlotValues, float, float]] = {
    "accuracy_drop": (lambda t: np.subtract(*_correct(t)), -1.0, 1.0),
    "dense_accuracy": (lambda t: _correct(t)[0], 0.0, 1.0),
    "pruned_accuracy": (lambda t: _correct(t)[1], 0.0, 1.0),
    "agreement": (_agree, 0.0, 1.0),
    "newly_wrong": (lambda t: _correct(t)[0] * (1 - _correct(t)[1]), 0.0, 1.0),
    "newly_right": (lambda t: (1 - _correct(t)[0]) * _correct(t)[1], 0.0, 1.0),
    "softmax_l2": (lambda t: _float(t.l2), 0.0, math.sqrt(2.0)),
    "softmax_linf": (lambda t: _float(t.linf), 0.0, 1.0),
    "top5_drop": (lambda t: np.subtract(*_top5(t)), -1.0, 1.0),
    "dense_top5": (lambda t: _top5(t)[0], 0.0, 1.0),
    "pruned_top5": (lambda t: _top5(t)[1], 0.0, 1.0),
    "brier_increase": (lambda t: _float(t.pruned_brier) - _float(t.dense_brier), -2.0, 2.0),
    "dense_brier": (lambda t: _float(t.dense_brier), 0.0, 2.0),
    "pruned_brier": (lambda t: _float(t.pruned_brier), 0.0, 2.0),
    "probability_loyalty": (lambda t: 1.0 - _float(t.js), 0.0, 1.0),
}


def read_order(seed: int, source: str, indices: np.ndarray) -> np.ndarray:
    """The data set's indices in the seeded random order the sequential gate reads them in."""
    rng = np.random.default_rng(task_key(seed, f"sequential-order/{source}"))
    return indices[rng.permutation(len(indices))]


@dataclass
class _RuleState:
    rule: Rule
    tasks: list[str]
    sources: dict[str, list[str]]  # source -> the rule's tasks in it
    sequences: dict[str, ConfidenceSequence]  # task name, or "mean/<source>", -> its sequence
    status: str = "undecided"
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (images used, low, high)

    @property
    def comparison(self) -> Literal["max", "min"]:
        return "max" if self.rule.max is not None else "min"

    @property
    def threshold(self) -> float:
        value = self.rule.max if self.rule.max is not None else self.rule.min
        assert value is not None
        return value

    def each_like(self) -> bool:
        """Decided task by task: `each`, or the extreme that is the worst task (max of a max rule)."""
        aggregate = self.rule.aggregate
        return aggregate == "each" or aggregate == self.comparison


class SequentialGate:
    """The looks of one sequential pass: which sequences exist, what each look decides."""

    def __init__(
        self,
        policy: Policy,
        tasks: list[Task],
        indices: dict[str, np.ndarray],
        label_sets: dict[str, torch.Tensor | None] | None = None,
        world: World = SINGLE,
        batch_size: int = 256,
    ) -> None:
        """`indices`: each data set's selected indices (positions refer to them); `label_sets`:
        per data set its data.label_map matrix (a prediction is right when in its label's
        set), if any; `world`: the torchrun processes, which look together; `batch_size`: one
        process's batch, the looks' step unless gate.looks sets one."""
        sizes = {name: len(found) for name, found in indices.items()}
        gate = policy.gate
        self.label_sets = label_sets or {}
        self.world = world
        self.indices = indices
        self.rank_of: dict[str, dict[int, int]] = {}
        self.read: dict[str, np.ndarray] = {}
        assert gate.confidence is not None  # the policy requires it with sequential
        self.confidence = gate.confidence
        self.min_samples = gate.min_samples
        # looks at every `step` images of a data set's seeded order, whatever the processes
        self.step = gate.looks if isinstance(gate.looks, int) else batch_size
        self.seed = policy.suite.seed
        self.sizes = sizes
        self.draws = {t.name: t.draws for t in tasks}
        source_of = {t.name: t.source for t in tasks}
        names = [t.name for t in tasks]
        matched = [match_tasks(rule.globs, names) for rule in gate.rules]
        shapes = []
        for rule, found in zip(gate.rules, matched):
            one_source = len({source_of[t] for t in found}) == 1
            shapes.append(RuleShape(rule.aggregate, max(len(found), 1), shared_samples=one_source))
        alphas = split_alpha(self.confidence, shapes)
        self.rules: list[_RuleState] = []
        for rule, found, shape, alpha in zip(gate.rules, matched, shapes, alphas):
            _, low, high = ANYTIME_METRICS[rule.metric]
            by_source: dict[str, list[str]] = {}
            for task in found:
                by_source.setdefault(source_of[task], []).append(task)
            keys = [f"mean/{s}" for s in by_source] if rule.aggregate == "mean" and shape.shared_samples else found
            sequences = {
                key: ConfidenceSequence(
                    alpha, low=low, high=high, horizon=sizes[key[5:] if key.startswith("mean/") else source_of[key]]
                )
                for key in keys
            }
            self.rules.append(_RuleState(rule, found, by_source, sequences))
        self.used: dict[str, int] = dict.fromkeys(sizes, 0)
        self.looks = 0
        self.failed = False
        self.stopped: dict[str, bool] = dict.fromkeys(sizes, False)

    def order(self, source: str, indices: np.ndarray) -> np.ndarray:
        """What this process reads of `source`, in order: its share of every prefix of the
        seeded order (all of it in one process), so that after each batch the processes
        together have read a prefix."""
        everything = read_order(self.seed, source, indices)
        self.read[source] = everything
        self.rank_of[source] = {int(index): rank for rank, index in enumerate(everything)}
        return everything[self.world.rank :: self.world.size]

    def _image_values(self, rule: Rule, tally: TaskTally, draws: int, positions: np.ndarray) -> np.ndarray:
        """The rule's per-image values at `positions` (a noise task's draws averaged)."""
        values, _, _ = ANYTIME_METRICS[rule.metric]
        per_slot = values(tally)
        slots = (positions[:, None] * draws + np.arange(draws)[None, :]).reshape(-1)
        return per_slot[slots].reshape(len(positions), draws).mean(axis=1)

    def _values(self, source: str, tallies: dict[str, TaskTally], positions: np.ndarray) -> dict[str, np.ndarray]:
        """Per sequence of `source`'s rules (its key: the rule's index and the task, or the mean),
        the per-image values of the images at `positions`."""
        sets = self.label_sets.get(source)
        found: dict[str, np.ndarray] = {}
        for i, state in enumerate(self.rules):
            tasks = state.sources.get(source, [])
            judged = [tallies[t] if sets is None else dataclasses.replace(tallies[t], label_sets=sets) for t in tasks]
            values = [self._image_values(state.rule, t, self.draws[n], positions) for t, n in zip(judged, tasks)]
            if f"mean/{source}" in state.sequences:  # a mean over tasks on the same images: their per-image mean
                found[f"{i}/mean/{source}"] = np.mean(np.stack(values), axis=0)
            else:
                found.update({f"{i}/{task}": v for task, v in zip(tasks, values)})
        return found

    def feed(
        self, source: str, tallies: dict[str, TaskTally], positions: np.ndarray, *, exhausted: bool = False
    ) -> tuple[Look, bool]:
        """Give `source`'s sequences the values of the images at `positions` (every process's,
        under torchrun: each must call it as often), in the seeded order, looking at every
        `step` images of that order; stop feeding at a look that stops the source. Returns the
        decision and whether every process has read all its share (`exhausted`)."""
        ids = self.indices[source][positions] if len(positions) else np.zeros(0, dtype=np.int64)
        parts = gather_objects((ids, self._values(source, tallies, positions), exhausted), self.world)
        everyone = all(p[2] for p in parts)
        ids = np.concatenate([p[0] for p in parts])
        order = np.argsort([self.rank_of[source][int(i)] for i in ids], kind="stable")
        values = {key: np.concatenate([p[1][key] for p in parts])[order] for key in parts[0][1]}
        looked: Look = "continue"
        start = 0
        while start < len(ids) and looked == "continue":
            end = min(len(ids), start + self.step - self.used[source] % self.step)
            for key, found in values.items():
                rule, _, name = key.partition("/")
                self.rules[int(rule)].sequences[name].update(found[start:end])
            self.used[source] += end - start
            start = end
            if self.used[source] % self.step == 0 or self.used[source] >= self.sizes[source]:
                looked = self._decide(source)
        return looked, everyone

    def kept(self, source: str) -> np.ndarray:
        """The images of `source` the sequences were fed: the first of its seeded order (a
        process may have evaluated a few more, past the look that stopped it)."""
        return self.read[source][: self.used[source]]

    def _intervals(self, state: _RuleState) -> list[tuple[float, float]]:
        _, low, high = ANYTIME_METRICS[state.rule.metric]
        out = []
        for sequence in state.sequences.values():
            out.append(sequence.interval() if sequence.n else (low, high))
        return out

    def rule_interval(self, state: _RuleState) -> tuple[float, float]:
        return combine(state.rule.aggregate, state.comparison, self._intervals(state))

    def task_interval(self, state: _RuleState, task: str) -> tuple[float, float] | None:
        sequence = state.sequences.get(task)
        return sequence.interval() if sequence is not None and sequence.n else None

    def drain(self, source: str, tallies: dict[str, TaskTally]) -> None:
        """Under torchrun, once this process has read all its share of `source`: keep looking,
        with nothing new of its own, until every process has (or the gate stops), so that all
        make the same collective calls."""
        if self.world.size <= 1:
            return
        while True:
            looked, exhausted = self.feed(source, tallies, np.zeros(0, dtype=np.int64), exhausted=True)
            if looked != "continue" or exhausted:
                return

    def look(self, source: str, tallies: dict[str, TaskTally], positions: np.ndarray) -> Look:
        """After a batch of `source`: feed it, looking where the schedule says; whether to go on."""
        return self.feed(source, tallies, positions)[0]

    def _decide(self, source: str) -> Look:
        """A look at a step boundary of `source`: every rule's status, and whether to go on."""
        if self.failed:  # a rule failed earlier: later data sets only give their minimum
            return "stop-source" if self.used[source] >= self.min_samples else "continue"
        self.looks += 1
        images = sum(self.used.values())
        for state in self.rules:
            state.status = decide_rule(state.rule.aggregate, state.comparison, state.threshold, self._intervals(state))
            state.history.append((images, *self.rule_interval(state)))
        if self.used[source] < self.min_samples:
            return "continue"
        if any(state.status == "fail" for state in self.rules):
            self.failed = True
            self.stopped[source] = self.used[source] < self.sizes[source]
            return "stop-all"
        if not any(self._needs(state, source) for state in self.rules):
            self.stopped[source] = self.used[source] < self.sizes[source]
            return "stop-source"
        return "continue"

    def _needs(self, state: _RuleState, source: str) -> bool:
        """Whether the rule still needs more of `source`'s images."""
        if state.status != "undecided" or source not in state.sources:
            return False
        if state.each_like() and state.rule.aggregate != "mean":
            intervals = [self.task_interval(state, t) for t in state.sources[source]]
            return any(
                i is None or decide_rule("each", state.comparison, state.threshold, [i]) == "undecided"
                for i in intervals
            )
        return True

    def reason(self) -> str:
        if self.failed:
            return "a rule was decided fail"
        if all(state.status == "pass" for state in self.rules):
            return "every rule was decided"
        return "end of the data"

    def record(self) -> dict:
        """The report's `sequential`: the method, the looks, the images used per data set, why it stopped."""
        return {
            "method": METHOD,
            "confidence": self.confidence,
            "min_samples": self.min_samples,
            "looks": self.looks,
            "order": "each data set in a seeded random permutation (suite.seed)",
            "stopped": self.reason(),
            "sources": [{"name": s, "used": self.used[s], "total": self.sizes[s]} for s in self.sizes],
            "rules": [
                {
                    "name": state.rule.name,
                    "status": state.status,
                    "history": [{"images": n, "low": lo, "high": hi} for n, lo, hi in state.history],
                }
                for state in self.rules
            ],
        }

    def anytime_intervals(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Per rule name: per task (and `*` for the rule's own value) the final sequence interval."""
        out = {}
        for state in self.rules:
            found = {t: i for t in state.tasks if (i := self.task_interval(state, t)) is not None}
            found["*"] = self.rule_interval(state)
            out[state.rule.name] = found
        return out
