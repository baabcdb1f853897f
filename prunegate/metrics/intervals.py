"""Confidence intervals and paired tests for the two models' per-sample outcomes. Pure functions.

Both models see the same inputs, so their outcomes are paired: the right interval for the drop in
accuracy uses the 2x2 table of (dense right?, pruned right?), not two independent proportions.

- Wilson score interval for one proportion (agreement, an accuracy, a flip rate).
- Newcombe's hybrid score interval for a difference of paired proportions (his method 10,
  Stat Med 1998;17:2635), with his continuity-corrected correlation term.
- Exact McNemar test: the discordant pairs are binomial(b + c, 1/2) when accuracies are equal.
- A seeded paired bootstrap (percentile): samples are resampled together for both models and
  for every task of one data set, so it covers metrics without a closed form, aggregates over
  tasks (their mean), and tasks with several noise draws per image (resampled by image).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch


def z_value(confidence: float) -> float:
    """Two-sided standard normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (NaN, NaN for no trials)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = z_value(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_paired(
    both: int, only_first: int, only_second: int, neither: int, confidence: float
) -> tuple[float, float]:
    """Interval for p1 - p2 where p1 = (both + only_first)/n and p2 = (both + only_second)/n.

    For accuracy_drop: first = dense right, second = pruned right, so only_first counts the
    newly wrong samples and only_second the newly right ones."""
    n = both + only_first + only_second + neither
    if n <= 0:
        return (float("nan"), float("nan"))
    first, second = both + only_first, both + only_second
    p1, p2 = first / n, second / n
    l1, u1 = wilson(first, n, confidence)
    l2, u2 = wilson(second, n, confidence)
    margins = first * (n - first) * second * (n - second)
    phi = 0.0
    if margins > 0:
        a = both * neither - only_first * only_second
        if a > n / 2:
            phi = (a - n / 2) / math.sqrt(margins)
        elif a < 0:
            phi = a / math.sqrt(margins)
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, lower), min(1.0, upper))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    m = only_first + only_second
    if m == 0:
        return 1.0
    k = min(only_first, only_second)
    # P(X <= k) for X ~ Binomial(m, 1/2), summed in log space so m in the millions is fine
    logs = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) - m * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2 * tail)


def mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Normal-approximation interval for a mean (softmax distances: n is in the hundreds or more)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    mean = float(values.mean())
    if n == 1:
        return (mean, mean)
    half = z_value(confidence) * float(values.std(ddof=1)) / math.sqrt(n)
    return (mean - half, mean + half)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval over the finite replicates (NaN, NaN when none is finite)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return (float(low), float(high))


@dataclass(frozen=True)
class Resampler:
    """Bootstrap weights for one data set: replicate b counts how often each image was drawn.

    The weights come from a seeded generator and depend only on (seed, data set, image count,
    replicates), so every task of the set, and both models, see the same resamples."""

    seed: int
    images: int
    replicates: int = 1000
    chunk: int = 250  # replicates per weight matrix: bounds memory at chunk x images

    def weights(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        done = 0
        while done < self.replicates:
            rows = min(self.chunk, self.replicates - done)
            draws = rng.integers(0, self.images, size=(rows, self.images))
            yield np.stack([np.bincount(row, minlength=self.images) for row in draws]).astype(np.float32)
            done += rows

    def weighted_sums(self, columns: np.ndarray) -> np.ndarray:
        """columns: [images, k] per-image values -> [replicates, k] resampled sums."""
        columns = np.asarray(columns, dtype=np.float32).reshape(self.images, -1)
        # float32 sums of 0/1 columns are exact below 2**24 samples; it halves the matmul's time.
        # One thread: a BLAS splits a wide product over its threads, which changes the last bits
        # of the float columns' sums, and a report must not depend on the thread count (torchrun
        # gives each process one).
        right = torch.from_numpy(columns)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            sums = [(torch.from_numpy(w) @ right).numpy().astype(np.float64) for w in self.weights()]
        finally:
            torch.set_num_threads(threads)
        return np.concatenate(sums, axis=0)
