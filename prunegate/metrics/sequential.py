"""Anytime-valid confidence sequences for a sequential gate, and how a gate spends its error on them.

Why not the fixed-sample intervals. Wilson and Newcombe intervals hold at one planned n. A gate
that looks after every batch and stops at the first decision gets as many chances to be wrong as
it has looks (optional stopping): with 40 looks at 95%, a drop sitting exactly at its tolerance
fails about one run in eight, not one in forty. A confidence sequence (CS) is a sequence of
intervals C_1, C_2, ... with P(the mean lies in every C_t, for all t at once) >= 1 - alpha, so
every look, and any stopping rule built on them, keeps the error at alpha.

Method. The predictable plug-in empirical-Bernstein CS of Waudby-Smith and Ramdas, "Estimating
means of bounded random variables by betting", JRSS-B 86(1), 2024 (arXiv 2010.09686), Theorem 2,
for values in [0, 1] (other bounded ranges are mapped onto it):

    C_t = [ sum(l_i x_i) / sum(l_i)  -+  (log(2/alpha) + sum(v_i psi(l_i))) / sum(l_i) ]
    v_i = 4 (x_i - mu_{i-1})^2,   psi(l) = (-log(1 - l) - l) / 4,
    mu_t = (1/2 + sum x) / (t + 1),   s2_t = (1/4 + sum (x_i - mu_i)^2) / (t + 1),
    l_i = min(sqrt(2 log(2/alpha) / (s2_{i-1} h_i)), 1/2),

a closed form, so the state is eight numbers (checkpoint and resume exactly), it is vectorised
over samples and over simulated runs, and there is no grid of candidate means to resolve (a drop
of 0.02 +- 0.004 would need tens of thousands of grid points for the hedged betting CS). The
hedged betting CS of the same paper is somewhat tighter; at the widths measured below it is not
needed. Every l_i depends only on the past, so the CS is valid for any h_i; h_i tunes where it
is tightest:
- horizon=None: h_i = i log(1 + i), tight over all times; at n = 10,000 it is ~2x as wide as
  the fixed-sample interval.
- horizon=N (the number of samples the source has): h_i = N, tightest at the last look; at
  n = N = 10,000 and 95% it is ~1.25x the Wilson interval of an accuracy of 0.9 and ~1.35x the
  Newcombe interval of a drop of 0.02 with 5% discordant pairs (at most 1.47x over ten seeds;
  sqrt(2 log(2/alpha)) / z = 1.39 in theory), and wider at early looks.
The reported interval is the running intersection of C_1 .. C_t over every sample (not only at
the looks), so it only shrinks and does not depend on how the samples were batched.

Assumptions: the per-sample values are i.i.d. draws from the population whose mean the gate is
about (the fixed-sample intervals assume the same). A data set on disk may be sorted (by class,
by file name), so the gate must feed each source in a seeded uniformly random order; a random
permutation of an i.i.d. sample is i.i.d. Several noise draws of one image are not independent:
feed one value per image, its mean over the draws.

Error split (Bonferroni). alpha = 1 - confidence is split equally over the rules; a rule over k
tasks with aggregate each, min or max splits its share over its k tasks (all k sequences cover
at once with probability >= 1 - alpha_rule, and then the extreme of the intervals bounds the
extreme of the means); a mean over tasks on the same images needs one sequence, on the
per-sample mean over the tasks (`per_sample_mean`), which is itself a bounded per-sample value.
Each sequence is two-sided: a rule passes on one end and fails on the other. (The true value
decides which of the two can be wrong, so each decision's error is in fact at most alpha_rule/2;
the split keeps the two-sided level so that the reported intervals mean what the fixed-sample
ones do.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np

Comparison = Literal["max", "min"]
Status = Literal["pass", "fail", "undecided"]
Aggregate = Literal["each", "mean", "min", "max"]

TOLERANCE = 1e-12  # gate.TOLERANCE: a bound exactly at the threshold passes despite rounding
TRUNCATION = 0.5  # the largest bet l_i (the paper's c); psi(l) grows without bound as l -> 1


@dataclass(frozen=True)
class State:
    """Everything a sequence carries between updates, on the [0, 1] scale. Each field is a float,
    or an array of floats over independent runs (simulations): the leading dimensions of values."""

    t: np.ndarray | float = 0.0  # samples seen
    sum_x: np.ndarray | float = 0.0
    sum_sq: np.ndarray | float = 0.0  # sum of (x_i - mu_i)^2
    sum_lam: np.ndarray | float = 0.0
    sum_lam_x: np.ndarray | float = 0.0
    sum_penalty: np.ndarray | float = 0.0  # sum of v_i psi(l_i)
    low: np.ndarray | float = 0.0  # the running intersection
    high: np.ndarray | float = 1.0

    def as_dict(self) -> dict[str, list[float] | float]:
        """Plain numbers (JSON-ready) for a checkpoint."""
        return {f.name: np.asarray(getattr(self, f.name)).tolist() for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> State:
        """The inverse of as_dict."""
        return cls(**{f.name: np.asarray(data[f.name], dtype=np.float64) for f in fields(cls)})


def _shift(first: np.ndarray, series: np.ndarray) -> np.ndarray:
    """series delayed by one step along the last axis, `first` in front: the value before each."""
    return np.concatenate([np.asarray(first)[..., None], series[..., :-1]], axis=-1)


def advance(
    state: State, x: np.ndarray, alpha: float, horizon: int | None = None
) -> tuple[State, np.ndarray, np.ndarray]:
    """Feed values x in [0, 1] (last axis in order) to the sequence: (new state, the running
    intersection's low and high after each value). Vectorised over leading axes (runs)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] == 0:
        empty = np.zeros(x.shape)
        return state, empty, empty
    lead = x.shape[:-1]  # a fresh state's scalars stand for every run
    t0, sum_x, sum_sq, sum_lam0, sum_lam_x0, sum_penalty0, low0, high0 = (
        np.broadcast_to(np.asarray(getattr(state, f.name), dtype=np.float64), lead) for f in fields(state)
    )
    t = t0[..., None] + np.arange(1, x.shape[-1] + 1)
    mu = (0.5 + sum_x[..., None] + np.cumsum(x, axis=-1)) / (t + 1)
    sq = sum_sq[..., None] + np.cumsum((x - mu) ** 2, axis=-1)
    mu_before = _shift((0.5 + sum_x) / (t0 + 1), mu)
    var_before = _shift((0.25 + sum_sq) / (t0 + 1), (0.25 + sq) / (t + 1))
    log_term = math.log(2 / alpha)
    h = t * np.log1p(t) if horizon is None else float(horizon)
    lam = np.minimum(np.sqrt(2 * log_term / (var_before * h)), TRUNCATION)
    penalty = (x - mu_before) ** 2 * (-np.log1p(-lam) - lam)  # v_i psi(l_i): the 4 and the 1/4 cancel
    sum_lam = sum_lam0[..., None] + np.cumsum(lam, axis=-1)
    sum_lam_x = sum_lam_x0[..., None] + np.cumsum(lam * x, axis=-1)
    sum_penalty = sum_penalty0[..., None] + np.cumsum(penalty, axis=-1)
    centre, half = sum_lam_x / sum_lam, (log_term + sum_penalty) / sum_lam
    low = np.maximum.accumulate(np.maximum(centre - half, low0[..., None]), axis=-1)
    high = np.minimum.accumulate(np.minimum(centre + half, high0[..., None]), axis=-1)
    low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    new = State(
        t=t[..., -1],
        sum_x=sum_x + x.sum(axis=-1),
        sum_sq=sq[..., -1],
        sum_lam=sum_lam[..., -1],
        sum_lam_x=sum_lam_x[..., -1],
        sum_penalty=sum_penalty[..., -1],
        low=low[..., -1],
        high=high[..., -1],
    )
    return new, low, high


def _to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.size and (np.isnan(values).any() or values.min() < low or values.max() > high):
        raise ValueError(f"values must lie in [{low}, {high}]: found [{values.min()}, {values.max()}]")
    return (values - low) / (high - low)


class ConfidenceSequence:
    """Anytime-valid two-sided CS at level 1 - alpha for the mean of values in [low, high].

    alpha is fixed at construction: the bets depend on it. `update` takes the next values in
    order, in batches of any size; `interval` is the running intersection so far (the whole
    range before any value). `state` / `from_state` checkpoint it exactly. The intersection can
    come out empty (low > high) only when the sequence has missed (probability <= alpha); it is
    returned as it is."""

    def __init__(self, alpha: float, *, low: float = 0.0, high: float = 1.0, horizon: int | None = None) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1): found {alpha}")
        if not high > low:
            raise ValueError(f"the range must have high > low: found [{low}, {high}]")
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be a positive number of samples: found {horizon}")
        self.alpha, self.low, self.high, self.horizon = alpha, low, high, horizon
        self.state = State()

    @property
    def n(self) -> int:
        """Values seen so far."""
        return int(self.state.t)

    def update(self, values: np.ndarray) -> tuple[float, float]:
        """Feed the next values (1-D, in order); the interval after them."""
        x = _to_unit(np.ravel(values), self.low, self.high)
        self.state = advance(self.state, x, self.alpha, self.horizon)[0]
        return self.interval()

    def interval(self) -> tuple[float, float]:
        """(low, high) on the values' own scale."""
        span = self.high - self.low
        return (self.low + span * float(self.state.low), self.low + span * float(self.state.high))

    @classmethod
    def from_state(
        cls, state: State, alpha: float, *, low: float = 0.0, high: float = 1.0, horizon: int | None = None
    ) -> ConfidenceSequence:
        """Resume from a checkpointed state (with the same alpha, range and horizon)."""
        sequence = cls(alpha, low=low, high=high, horizon=horizon)
        sequence.state = replace(state)
        return sequence


def intervals_at(
    values: np.ndarray,
    looks: Sequence[int] | np.ndarray,
    alpha: float,
    *,
    low: float = 0.0,
    high: float = 1.0,
    horizon: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The CS's (lows, highs) after the first `looks[j]` values, for ordered values [..., n]
    (leading axes: independent runs). The same computation as ConfidenceSequence.update."""
    x = _to_unit(values, low, high)
    positions = np.asarray(looks, dtype=np.int64)
    if positions.size and (positions.min() < 1 or positions.max() > x.shape[-1]):
        raise ValueError(f"looks must lie in [1, {x.shape[-1]}]: found {positions.min()}..{positions.max()}")
    _, lows, highs = advance(State(), x, alpha, horizon)
    span = high - low
    return low + span * lows[..., positions - 1], low + span * highs[..., positions - 1]


def paired_drop(first_correct: np.ndarray, second_correct: np.ndarray) -> np.ndarray:
    """Per-sample d = first right - second right, in {-1, 0, 1} (range [-1, 1]); its mean is the
    accuracy drop when first is the dense model."""
    return np.asarray(first_correct, dtype=np.float64) - np.asarray(second_correct, dtype=np.float64)


def per_sample_mean(task_values: Sequence[np.ndarray]) -> np.ndarray:
    """The mean over tasks of each sample's value, for tasks on the same images in the same order:
    its mean is the mean of the tasks' means, and it stays within their common range, so one
    sequence covers a `mean` rule."""
    if not task_values:
        raise ValueError("a mean over tasks needs at least one task")
    lengths = {len(v) for v in task_values}
    if len(lengths) != 1:
        raise ValueError(f"tasks of one mean must have the same samples: found lengths {sorted(lengths)}")
    return np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in task_values]), axis=0)


@dataclass(frozen=True)
class RuleShape:
    """What the error split needs of a rule: its aggregate, how many tasks it covers, and (for a
    mean) whether the tasks share their samples (one source) so that one sequence covers them."""

    aggregate: Aggregate
    tasks: int
    shared_samples: bool = True

    @property
    def sequences(self) -> int:
        """How many confidence sequences the rule is decided on."""
        return 1 if self.aggregate == "mean" and self.shared_samples else self.tasks


def split_alpha(confidence: float, rules: Sequence[RuleShape]) -> list[float]:
    """The two-sided alpha of each confidence sequence of each rule (Bonferroni: over the rules,
    then over a rule's sequences), so that P(any rule decided wrongly) <= 1 - confidence."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1): found {confidence}")
    if not rules:
        return []
    if any(r.tasks < 1 for r in rules):
        raise ValueError("every rule must cover at least one task")
    per_rule = (1 - confidence) / len(rules)
    return [per_rule / r.sequences for r in rules]


def combine(
    aggregate: Aggregate, comparison: Comparison, intervals: Sequence[tuple[float, float]]
) -> tuple[float, float]:
    """One interval for a rule's value from its sequences' intervals (all covering at once): the
    extreme of the ends for min, max and each (the worst task), the mean of the ends for a mean
    over tasks that do not share samples; a mean over one sequence is that sequence's interval."""
    if not intervals:
        return (float("nan"), float("nan"))
    lows, highs = [i[0] for i in intervals], [i[1] for i in intervals]
    if aggregate == "mean":
        return (float(np.mean(lows)), float(np.mean(highs)))
    pick = min if (aggregate == "min" or (aggregate == "each" and comparison == "min")) else max
    return (pick(lows), pick(highs))


def _within(value: float, comparison: Comparison, threshold: float) -> bool:
    if math.isnan(value):
        return False
    return value <= threshold + TOLERANCE if comparison == "max" else value >= threshold - TOLERANCE


def decide(low: float, high: float, comparison: Comparison, threshold: float) -> Status:
    """gate._status on a sequence's interval: pass when its conservative end is within the
    threshold, fail when its optimistic end is beyond it (or NaN), else undecided."""
    conservative, optimistic = (high, low) if comparison == "max" else (low, high)
    if _within(conservative, comparison, threshold):
        return "pass"
    if math.isnan(optimistic) or not _within(optimistic, comparison, threshold):
        return "fail"
    return "undecided"


def decide_rule(
    aggregate: Aggregate, comparison: Comparison, threshold: float, intervals: Sequence[tuple[float, float]]
) -> Status:
    """A rule's status from its sequences' intervals, as gate.evaluate_rule does: for each, fail if
    any task fails, undecided if any is undecided, else pass; otherwise the combined interval."""
    if not intervals:
        return "fail"
    if aggregate == "each":
        statuses = {decide(lo, hi, comparison, threshold) for lo, hi in intervals}
        return "fail" if "fail" in statuses else "undecided" if "undecided" in statuses else "pass"
    return decide(*combine(aggregate, comparison, intervals), comparison, threshold)


def stop_verdict(statuses: Sequence[Status], *, at_end: bool) -> Literal["continue", "pass", "fail"]:
    """The stopping rule after a look: fail as soon as any rule fails (the others are reported
    undecided at the stop), pass once every rule passes, continue while any is undecided, and at
    the end of the data fail on an undecided rule (as gate.verdict: undecided is not passed)."""
    if not statuses or "fail" in statuses:
        return "fail"
    if all(s == "pass" for s in statuses):
        return "pass"
    return "fail" if at_end else "continue"
