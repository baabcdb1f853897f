"""Intervals and tests against independent references (statsmodels, scipy, a published table,
a brute-force bootstrap) and a coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from prunegate.metrics.intervals import (
    Resampler,
    mcnemar_exact,
    mean_interval,
    newcombe_paired,
    percentile_interval,
    wilson,
    z_value,
)


def test_z_value_matches_scipy() -> None:
    for confidence in (0.8, 0.9, 0.95, 0.99):
        assert z_value(confidence) == pytest.approx(stats.norm.ppf(0.5 + confidence / 2), rel=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (81, 100), (8135, 10000), (3, 2000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(k: int, n: int, confidence: float) -> None:
    expected = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert wilson(k, n, confidence) == pytest.approx(expected, abs=1e-12)


def test_newcombe_matches_the_published_example() -> None:
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8:
    # Cavo et al. (2012), table [[59, 6], [16, 80]]: estimate -0.0621, 95% CI -0.1186 to -0.0046.
    low, high = newcombe_paired(59, 6, 16, 80, 0.95)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)


def test_newcombe_is_antisymmetric_and_contains_the_estimate() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b, c, d = (int(v) for v in rng.integers(0, 60, size=4))
        if a + b + c + d == 0:
            continue
        low, high = newcombe_paired(a, b, c, d, 0.95)
        mirrored = newcombe_paired(a, c, b, d, 0.95)
        assert (low, high) == pytest.approx((-mirrored[1], -mirrored[0]), abs=1e-12)
        estimate = (b - c) / (a + b + c + d)
        assert -1 <= low <= estimate + 1e-12 and estimate - 1e-12 <= high <= 1


def test_newcombe_covers_at_the_nominal_rate() -> None:
    # Paired outcomes of two "models": P(dense right) 0.85, P(pruned right) 0.82, correlated.
    rng = np.random.default_rng(1)
    cells = np.array([0.78, 0.07, 0.04, 0.11])  # both right, only dense, only pruned, neither
    truth = cells[1] - cells[2]
    n, trials = 400, 4000
    tables = rng.multinomial(n, cells, size=trials)
    intervals = [newcombe_paired(*map(int, t), 0.95) for t in tables]
    covered = sum(low <= truth <= high for low, high in intervals)
    rate = covered / trials
    assert 0.93 <= rate <= 0.97, rate  # nominal 0.95; Monte Carlo s.e. ~0.0035


def test_wilson_covers_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(2)
    p, n, trials = 0.9, 300, 4000
    hits = rng.binomial(n, p, size=trials)
    covered = sum(lo <= p <= hi for lo, hi in (wilson(int(k), n, 0.95) for k in hits))
    assert 0.93 <= covered / trials <= 0.97


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (3, 9), (12, 2), (40, 41), (250, 200), (1200, 1100)])
def test_mcnemar_exact_matches_statsmodels_and_scipy(b: int, c: int) -> None:
    expected = mcnemar(np.array([[50, b], [c, 50]]), exact=True).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    if b + c:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_mean_interval_matches_the_normal_formula() -> None:
    values = np.random.default_rng(3).random(500)
    low, high = mean_interval(values, 0.95)
    half = stats.norm.ppf(0.975) * values.std(ddof=1) / math.sqrt(len(values))
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))


def test_resampler_equals_a_brute_force_bootstrap_with_the_same_draws() -> None:
    values = np.random.default_rng(4).random((37, 2))
    resampler = Resampler(seed=7, images=37, replicates=300, chunk=64)
    sums = resampler.weighted_sums(values)
    rng = np.random.default_rng(7)  # the draws the resampler makes, chunk by chunk
    brute = []
    for rows in (64, 64, 64, 64, 44):
        for draw in rng.integers(0, 37, size=(rows, 37)):
            brute.append(values[draw].sum(axis=0))
    assert sums == pytest.approx(np.array(brute), rel=1e-6)


def test_resampler_weights_are_seeded_and_sum_to_the_sample_count() -> None:
    a = np.concatenate(list(Resampler(1, 50, 120, chunk=50).weights()))
    b = np.concatenate(list(Resampler(1, 50, 120, chunk=50).weights()))
    c = np.concatenate(list(Resampler(2, 50, 120, chunk=50).weights()))
    assert a.shape == (120, 50) and (a == b).all() and not (a == c).all()
    assert (a.sum(axis=1) == 50).all()


def test_paired_bootstrap_agrees_with_scipy_and_newcombe() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    dense = rng.random(n) < 0.85
    pruned = np.where(rng.random(n) < 0.9, dense, ~dense)
    resampler = Resampler(seed=11, images=n, replicates=2000)
    sums = resampler.weighted_sums(np.stack([dense, pruned], axis=1).astype(float))
    ours = percentile_interval((sums[:, 0] - sums[:, 1]) / n, 0.95)
    reference = stats.bootstrap(
        (dense.astype(float), pruned.astype(float)),
        lambda x, y: np.mean(x) - np.mean(y),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(12),
    ).confidence_interval
    assert ours == pytest.approx((reference.low, reference.high), abs=0.004)
    table = (
        int((dense & pruned).sum()),
        int((dense & ~pruned).sum()),
        int((~dense & pruned).sum()),
        int((~dense & ~pruned).sum()),
    )
    assert ours == pytest.approx(newcombe_paired(*table, 0.95), abs=0.004)


def test_percentile_interval_ignores_undefined_replicates() -> None:
    replicates = np.array([np.nan, *np.linspace(0, 1, 101)])
    assert percentile_interval(replicates, 0.9) == pytest.approx((0.05, 0.95))
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan]), 0.9))


def test_paired_bootstrap_covers_near_the_nominal_rate() -> None:
    rng = np.random.default_rng(6)
    cells = np.array([0.70, 0.08, 0.05, 0.17])
    truth = cells[1] - cells[2]
    n, trials, covered = 400, 300, 0
    for trial in range(trials):
        kind = rng.choice(4, size=n, p=cells)
        dense, pruned = np.isin(kind, (0, 1)), np.isin(kind, (0, 2))
        sums = Resampler(trial, n, 500).weighted_sums(np.stack([dense, pruned], axis=1))
        low, high = percentile_interval((sums[:, 0] - sums[:, 1]) / n, 0.95)
        covered += low <= truth <= high
    assert 0.91 <= covered / trials <= 0.99  # nominal 0.95; Monte Carlo s.e. ~0.013
