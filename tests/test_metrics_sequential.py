"""Confidence sequences for the sequential gate: valid under optional stopping where the fixed-sample
interval checked after every batch is not, nominal coverage, checkpointing, width, error split and
the stopping rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import beta as beta_dist

from prunegate import gate
from prunegate.metrics.intervals import newcombe_paired, wilson
from prunegate.metrics.sequential import (
    ConfidenceSequence,
    RuleShape,
    State,
    combine,
    decide,
    decide_rule,
    intervals_at,
    paired_drop,
    per_sample_mean,
    split_alpha,
    stop_verdict,
)

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# cells of the paired 2x2 table: newly wrong, newly right, both wrong (the rest: both right);
# dense accuracy 0.9, pruned 0.88, drop 0.02, 5% discordant pairs
NEWLY_WRONG, NEWLY_RIGHT, BOTH_WRONG = 0.035, 0.015, 0.085


def paired_runs(rng: np.random.Generator, runs: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[runs, n] correctness of the dense and the pruned model, i.i.d. samples of the table above."""
    u = rng.random((runs, n))
    newly_wrong = u < NEWLY_WRONG
    newly_right = (u >= NEWLY_WRONG) & (u < NEWLY_WRONG + NEWLY_RIGHT)
    both_wrong = (u >= NEWLY_WRONG + NEWLY_RIGHT) & (u < NEWLY_WRONG + NEWLY_RIGHT + BOTH_WRONG)
    return ~(newly_right | both_wrong), ~(newly_wrong | both_wrong)


def clopper_pearson(k: int, n: int, confidence: float = 0.99) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds (each at `confidence`) for a binomial rate."""
    a = 1 - confidence
    low = 0.0 if k == 0 else float(beta_dist.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta_dist.ppf(1 - a, k + 1, n - k))
    return low, high


def first_decision(lows: np.ndarray, highs: np.ndarray, threshold: float) -> str:
    """The gate's status at the first look that decides a `max` rule (undecided if none does)."""
    for lo, hi in zip(lows, highs):
        status = decide(float(lo), float(hi), "max", threshold)
        if stop_verdict([status], at_end=False) != "continue":
            return status
    return "undecided"


# --- the issue's "done when": optional stopping at the threshold --------------------------------


RUNS, N, BATCH = 2000, 2000, 50
LOOKS = np.arange(BATCH, N + 1, BATCH)  # 40 looks
THRESHOLD = NEWLY_WRONG - NEWLY_RIGHT  # the true drop sits exactly at the tolerance


@pytest.fixture(scope="module")
def at_threshold() -> tuple[np.ndarray, np.ndarray]:
    return paired_runs(np.random.default_rng(18), RUNS, N)


@pytest.mark.parametrize("horizon", [N, None])
def test_sequential_gate_keeps_its_error_under_optional_stopping(at_threshold, horizon):
    dense, pruned = at_threshold
    lows, highs = intervals_at(paired_drop(dense, pruned), LOOKS, ALPHA, low=-1, high=1, horizon=horizon)
    # a max rule at the true value: pass is right (within tolerance), fail is a wrong decision
    wrong = sum(first_decision(lo, hi, THRESHOLD) == "fail" for lo, hi in zip(lows, highs))
    assert clopper_pearson(wrong, RUNS)[1] <= ALPHA
    # the stricter event: the sequence excludes the true drop at some look
    missed = int(((lows > THRESHOLD + 1e-12) | (highs < THRESHOLD - 1e-12)).any(axis=1).sum())
    assert clopper_pearson(missed, RUNS)[1] <= ALPHA


def test_naive_fixed_sample_interval_after_every_batch_is_not_valid(at_threshold):
    """The bug the sequences fix: Newcombe at 95% checked after every batch, stop at the first decision."""
    dense, pruned = at_threshold
    both = np.cumsum(dense & pruned, axis=1)[:, LOOKS - 1]
    only_dense = np.cumsum(dense & ~pruned, axis=1)[:, LOOKS - 1]
    only_pruned = np.cumsum(~dense & pruned, axis=1)[:, LOOKS - 1]
    wrong = 0
    for run in range(RUNS):
        for j, n in enumerate(LOOKS):
            table = (int(both[run, j]), int(only_dense[run, j]), int(only_pruned[run, j]))
            lo, hi = newcombe_paired(*table, int(n) - sum(table), CONFIDENCE)
            status = decide(lo, hi, "max", THRESHOLD)
            if status != "undecided":
                wrong += status == "fail"
                break
    assert clopper_pearson(wrong, RUNS)[0] > 1.5 * ALPHA  # measured ~0.11 against 0.05


def test_sequential_gate_stops_early_when_the_answer_is_clear():
    dense, pruned = paired_runs(np.random.default_rng(5), 500, N)
    lows, highs = intervals_at(paired_drop(dense, pruned), LOOKS, ALPHA, low=-1, high=1, horizon=N)
    decided = [first_decision(lo, hi, 0.06) for lo, hi in zip(lows, highs)]  # true drop 0.02
    assert decided.count("pass") == 500
    stops = [int(np.argmax(hi <= 0.06 + 1e-12)) for hi in highs]
    assert np.median(stops) < len(LOOKS) / 2


# --- coverage and the shape of the sequence ------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_coverage_of_a_proportion_is_nominal_or_better(p):
    runs, n = 2000, 1000
    x = (np.random.default_rng(int(p * 100)).random((runs, n)) < p).astype(float)
    lows, highs = intervals_at(x, np.arange(1, n + 1), ALPHA, horizon=n)
    final_miss = int(((lows[:, -1] > p) | (highs[:, -1] < p)).sum())
    ever_miss = int(((lows > p) | (highs < p)).any(axis=1).sum())
    assert clopper_pearson(final_miss, runs)[1] <= ALPHA
    assert clopper_pearson(ever_miss, runs)[1] <= ALPHA


def test_coverage_of_a_bounded_mean_on_its_own_range():
    """Softmax distances: values in [0, sqrt(2)] (the l2 distance of two probability vectors)."""
    runs, n, bound = 1000, 1000, float(np.sqrt(2))
    rng = np.random.default_rng(3)
    x = bound * rng.beta(0.5, 8.0, size=(runs, n))
    true = bound * 0.5 / 8.5
    lows, highs = intervals_at(x, np.arange(1, n + 1), ALPHA, low=0, high=bound, horizon=n)
    assert lows.min() >= 0 and highs.max() <= bound
    missed = int(((lows > true) | (highs < true)).any(axis=1).sum())
    assert clopper_pearson(missed, runs)[1] <= ALPHA


def test_interval_contains_the_mean_shrinks_and_stays_in_range():
    rng = np.random.default_rng(7)
    dense, pruned = paired_runs(rng, 1, 3000)
    d = paired_drop(dense[0], pruned[0])
    cs = ConfidenceSequence(ALPHA, low=-1, high=1)
    assert cs.interval() == (-1.0, 1.0) and cs.n == 0
    previous = cs.interval()
    for start in range(0, len(d), 100):
        low, high = cs.update(d[start : start + 100])
        assert -1 <= low <= d[: start + 100].mean() <= high <= 1
        assert previous[0] <= low and high <= previous[1]  # the running intersection only shrinks
        previous = (low, high)
    assert cs.n == len(d)
    all_wrong = ConfidenceSequence(ALPHA)
    assert all_wrong.update(np.zeros(500))[0] == 0.0  # clipped to the range


def test_batches_and_checkpoints_give_the_same_sequence():
    x = (np.random.default_rng(11).random(5000) < 0.9).astype(float)
    whole = ConfidenceSequence(ALPHA, horizon=5000)
    whole.update(x)
    pieces = ConfidenceSequence(ALPHA, horizon=5000)
    cuts = [0, 1, 50, 51, 700, 2500, 5000]
    for a, b in zip(cuts, cuts[1:]):
        pieces.update(x[a:b])
        if b == 700:  # through JSON and back: what a checkpoint keeps
            saved = json.loads(json.dumps(pieces.state.as_dict()))
            pieces = ConfidenceSequence.from_state(State.from_dict(saved), ALPHA, horizon=5000)
    np.testing.assert_allclose(pieces.interval(), whole.interval(), rtol=1e-12, atol=1e-14)
    assert pieces.n == 5000
    lows, highs = intervals_at(x, [700, 5000], ALPHA, horizon=5000)
    np.testing.assert_allclose((lows[-1], highs[-1]), whole.interval(), rtol=1e-12)


def test_values_outside_the_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        ConfidenceSequence(ALPHA).update(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="NaN|nan|lie in"):
        ConfidenceSequence(ALPHA).update(np.array([np.nan]))
    with pytest.raises(ValueError, match="alpha"):
        ConfidenceSequence(1.0)
    with pytest.raises(ValueError, match="looks"):
        intervals_at(np.zeros(10), [11], ALPHA)


# --- width against today's fixed-sample intervals ------------------------------------------------


def width_ratios(seed: int, n: int = 10_000) -> tuple[float, float]:
    """(accuracy, drop): the sequence's width at its horizon n over Wilson's and Newcombe's at n."""
    dense, pruned = (c[0] for c in paired_runs(np.random.default_rng(seed), 1, n))
    low, high = ConfidenceSequence(ALPHA, horizon=n).update(dense)
    w_low, w_high = wilson(int(dense.sum()), n, CONFIDENCE)
    cs = ConfidenceSequence(ALPHA, low=-1, high=1, horizon=n)
    d = paired_drop(dense, pruned)
    for start in range(0, n, 50):  # the gate's batches
        d_low, d_high = cs.update(d[start : start + 50])
    table = (int((dense & pruned).sum()), int((dense & ~pruned).sum()), int((~dense & pruned).sum()))
    n_low, n_high = newcombe_paired(*table, n - sum(table), CONFIDENCE)
    return (high - low) / (w_high - w_low), (d_high - d_low) / (n_high - n_low)


def test_final_width_at_the_horizon_is_within_the_issue_bound():
    """Accuracy 0.9, drop 0.02 with 5% discordant pairs, n = 10,000, 95%: the issue asks for no
    more than ~1.5x today's fixed-sample width at the last look. Measured over seeds 100-109:
    accuracy 1.24 on average (0.94-1.33), drop 1.34 (0.88-1.47); the theory's ratio without the
    running intersection is sqrt(2 log(2/alpha)) / z = 1.39. (It can fall below 1: the running
    intersection keeps the best of the earlier looks.)"""
    ratios = np.array([width_ratios(seed) for seed in range(100, 110)])
    assert ratios.max() <= 1.5
    assert ratios[:, 0].mean() <= 1.35 and ratios[:, 1].mean() <= 1.42


def test_without_a_horizon_the_last_look_is_wider():
    n = 10_000
    x = (np.random.default_rng(100).random(n) < 0.9).astype(float)
    tuned, anytime = ConfidenceSequence(ALPHA, horizon=n).update(x), ConfidenceSequence(ALPHA).update(x)
    early = intervals_at(x, [500], ALPHA, horizon=n), intervals_at(x, [500], ALPHA)
    assert anytime[1] - anytime[0] > 1.3 * (tuned[1] - tuned[0])
    assert early[1][1] - early[1][0] < early[0][1] - early[0][0]  # but narrower at early looks


# --- error split, decisions and the stopping rule ------------------------------------------------


def test_split_alpha_over_rules_and_tasks():
    rules = [
        RuleShape("each", 4),
        RuleShape("mean", 6),
        RuleShape("mean", 3, shared_samples=False),
        RuleShape("max", 1),
    ]
    alphas = split_alpha(0.95, rules)
    assert alphas == pytest.approx([0.0125 / 4, 0.0125, 0.0125 / 3, 0.0125])
    assert sum(a * r.sequences for a, r in zip(alphas, rules)) == pytest.approx(0.05)
    assert split_alpha(0.95, []) == []
    with pytest.raises(ValueError, match="confidence"):
        split_alpha(1.0, rules)


def test_per_sample_mean_covers_a_mean_rule():
    a, b = np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(per_sample_mean([a, b]), [0.5, 1.0, 0.5])
    assert per_sample_mean([a, b]).mean() == pytest.approx((a.mean() + b.mean()) / 2)
    with pytest.raises(ValueError, match="same samples"):
        per_sample_mean([a, b[:2]])


def test_combine_takes_the_worst_task_or_the_mean():
    intervals = [(0.01, 0.03), (0.02, 0.05)]
    assert combine("max", "max", intervals) == (0.02, 0.05)
    assert combine("each", "max", intervals) == (0.02, 0.05)
    assert combine("each", "min", intervals) == (0.01, 0.03)
    assert combine("min", "max", intervals) == (0.01, 0.03)
    assert combine("mean", "max", intervals) == pytest.approx((0.015, 0.04))


@pytest.mark.parametrize(
    ("low", "high", "comparison", "threshold"),
    [
        (0.01, 0.02, "max", 0.02),
        (0.01, 0.03, "max", 0.02),
        (0.021, 0.03, "max", 0.02),
        (0.9, 0.95, "min", 0.9),
        (0.85, 0.95, "min", 0.9),
        (0.8, 0.89, "min", 0.9),
        (float("nan"), float("nan"), "max", 0.02),
        (0.02 + 1e-13, 0.02 + 1e-13, "max", 0.02),
    ],
)
def test_decide_mirrors_the_gate(low, high, comparison, threshold):
    assert decide(low, high, comparison, threshold) == gate._status(low, high, comparison, threshold)


def test_tolerance_is_the_gates():
    from prunegate.metrics import sequential

    assert sequential.TOLERANCE == gate.TOLERANCE


def test_decide_rule_each_needs_every_task():
    assert decide_rule("each", "max", 0.02, [(0.0, 0.01), (0.0, 0.015)]) == "pass"
    assert decide_rule("each", "max", 0.02, [(0.0, 0.01), (0.01, 0.03)]) == "undecided"
    assert decide_rule("each", "max", 0.02, [(0.03, 0.04), (0.01, 0.03)]) == "fail"
    assert decide_rule("max", "max", 0.02, [(0.0, 0.01), (0.01, 0.03)]) == "undecided"
    assert decide_rule("mean", "max", 0.02, [(0.0, 0.01), (0.01, 0.03)]) == "pass"
    assert decide_rule("each", "max", 0.02, []) == "fail"


def test_stopping_rule():
    assert stop_verdict(["pass", "pass"], at_end=False) == "pass"
    assert stop_verdict(["pass", "undecided"], at_end=False) == "continue"
    assert stop_verdict(["undecided", "fail"], at_end=False) == "fail"  # the first fail stops
    assert stop_verdict(["pass", "undecided"], at_end=True) == "fail"  # undecided is not passed
    assert stop_verdict(["pass"], at_end=True) == "pass"
    assert stop_verdict([], at_end=False) == "fail"
