from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from prunegate.shifts.rng import SampleRNG, task_key

KEY = task_key(0, "noise/uniform/0.1")
P_MIN = 1e-3  # goodness-of-fit tests with a fixed key: fail only on a real mismatch


def draws(rng: SampleRNG) -> list[torch.Tensor]:
    """One of each kind of draw, in a fixed sequence of calls (as a shift would make them)."""
    return [
        rng.bits(4),
        rng.uniform(2, 3),
        rng.normal(5),
        rng.randint(2, 9, 6),
        rng.poisson(torch.tensor([[0.5, 4.0, 25.0, 300.0]]).expand(rng.n, 4)),
    ]


def test_a_samples_draws_do_not_depend_on_its_batch() -> None:
    whole = draws(SampleRNG(KEY, torch.arange(10)))
    part = draws(SampleRNG(KEY, torch.tensor([7, 3])))
    for full, subset in zip(whole, part):
        assert torch.equal(full[[7, 3]], subset)


def test_sample_ids_not_positions_key_the_streams() -> None:
    a = SampleRNG(KEY, torch.tensor([100, 101])).uniform(8)
    b = SampleRNG(KEY, torch.tensor([0, 1])).uniform(8)
    assert not torch.equal(a, b)
    assert torch.equal(SampleRNG(KEY, torch.tensor([101, 100])).uniform(8), a.flip(0))


def test_same_key_same_numbers() -> None:
    for first, second in zip(draws(SampleRNG(KEY, torch.arange(5))), draws(SampleRNG(KEY, torch.arange(5)))):
        assert torch.equal(first, second)


def test_key_sensitivity() -> None:
    keys = [KEY, KEY + 1, KEY ^ (1 << 40), task_key(1, "noise/uniform/0.1"), task_key(0, "noise/uniform/0.2")]
    assert len(set(keys)) == len(keys)
    samples = [SampleRNG(k, torch.arange(4)).uniform(64) for k in keys]
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            assert (samples[i] == samples[j]).float().mean() < 0.01


def test_successive_calls_use_new_streams() -> None:
    rng = SampleRNG(KEY, torch.arange(4))
    first, second = rng.uniform(64), rng.uniform(64)
    assert (first == second).float().mean() < 0.01


def test_neighbouring_samples_are_uncorrelated() -> None:
    u = SampleRNG(KEY, torch.arange(2000)).uniform(64).double()
    r = np.corrcoef(u[:-1].flatten().numpy(), u[1:].flatten().numpy())[0, 1]
    assert abs(r) < 0.01


def test_uniform_range_mean_variance_and_ks() -> None:
    u = SampleRNG(KEY, torch.arange(1000)).uniform(100).double().flatten().numpy()
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > P_MIN


def test_uniform_dtype_and_shape() -> None:
    rng = SampleRNG(KEY, torch.arange(3))
    assert rng.uniform(2, 4).shape == (3, 2, 4) and rng.uniform(5).dtype == torch.float32
    assert rng.uniform(5, dtype=torch.float64).dtype == torch.float64


def test_normal_matches_scipy() -> None:
    z = SampleRNG(KEY, torch.arange(1000)).normal(100).double().flatten().numpy()
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(stats.skew(z)) < 0.03 and abs(stats.kurtosis(z)) < 0.06
    assert stats.kstest(z, "norm").pvalue > P_MIN


def poisson_chi_square_p(samples: np.ndarray, rate: float) -> float:
    """Chi-square goodness of fit to Poisson(rate), pooling the tails so each bin expects >= 5."""
    dist = stats.poisson(rate)
    low, high = int(dist.ppf(1e-4)), int(dist.ppf(1 - 1e-4))
    edges = np.arange(low, high + 1)
    observed = np.array([(samples < low).sum()] + [(samples == k).sum() for k in edges] + [(samples > high).sum()])
    expected = np.array([dist.cdf(low - 1)] + [dist.pmf(k) for k in edges] + [dist.sf(high)]) * len(samples)
    keep = expected >= 5
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] < 5:  # fold a tiny remainder into the largest bin
        observed[np.argmax(expected[:-1])] += observed[-1]
        expected[np.argmax(expected[:-1])] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


@pytest.mark.parametrize("rate", [0.05, 4.5, 9.99, 10.0, 40.0, 250.0])  # inversion below 10, rejection above
def test_poisson_matches_scipy(rate: float) -> None:
    rng = SampleRNG(KEY, torch.arange(200))
    k = rng.poisson(torch.full((200, 100), rate)).double().flatten().numpy()
    assert (k >= 0).all() and np.array_equal(k, np.round(k))
    assert abs(k.mean() - rate) < 4 * np.sqrt(rate / k.size) + 1e-9
    assert abs(k.var() - rate) < 0.05 * rate + 0.01
    assert poisson_chi_square_p(k, rate) > P_MIN


def test_poisson_with_mixed_rates_per_element() -> None:
    rates = torch.tensor([0.0, 2.0, 50.0]).repeat(2000, 1)
    k = SampleRNG(KEY, torch.arange(2000)).poisson(rates)
    assert k.dtype == torch.float32 and k.shape == (2000, 3)
    assert (k[:, 0] == 0).all()
    assert abs(k[:, 1].mean().item() - 2.0) < 0.15 and abs(k[:, 2].mean().item() - 50.0) < 0.7


@pytest.mark.parametrize(("low", "high"), [(0, 2), (-3, 4), (5, 6), (0, 1000)])
def test_randint_range(low: int, high: int) -> None:
    values = SampleRNG(KEY, torch.arange(400)).randint(low, high, 50)
    assert values.dtype == torch.int64 and values.shape == (400, 50)
    assert values.min() >= low and values.max() < high
    if 2 <= high - low <= 10:
        counts = torch.bincount(values.flatten() - low, minlength=high - low).numpy()
        assert (counts > 0).all()
        assert stats.chisquare(counts).pvalue > P_MIN


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_equal_cpu_draws() -> None:
    cpu = draws(SampleRNG(KEY, torch.arange(64)))
    gpu = draws(SampleRNG(KEY, torch.arange(64), device="cuda"))
    for a, b in zip(cpu[:4], gpu[:4]):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-6, atol=1e-6)
