"""Noise corruptions against the reference formulas (numpy) and their statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunegate.shifts import SampleRNG, corrupt, get_preset
from prunegate.shifts._alias import poisson_levels_table

KEY = 77


def grey(n: int = 2, size: int = 48, level: int = 128) -> torch.Tensor:
    return torch.full((n, 3, size, size), level / 255.0)


def ramp(n: int = 2, size: int = 32) -> torch.Tensor:
    levels = torch.arange(n * 3 * size * size).remainder(256).float().view(n, 3, size, size)
    return levels / 255


def reference_uint8(values: np.ndarray) -> np.ndarray:
    """What the reference stores: np.uint8(np.clip(v, 0, 1) * 255) (truncation)."""
    return np.uint8(np.clip(values, 0, 1) * 255).astype(np.float64)


@pytest.mark.parametrize("preset", ["cifar10-c", "imagenet-c"])
@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_and_speckle_match_the_reference_formula(preset: str, severity: int) -> None:
    x = ramp()
    ids = torch.arange(2)
    xs = np.round(x.numpy().astype(np.float64) * 255) / 255  # the reference: np.array(img) / 255.
    for name, formula in [
        ("gaussian_noise", lambda v, z, c: v + c * z),
        ("speckle_noise", lambda v, z, c: v + v * c * z),
    ]:
        c = get_preset(preset).param(name, severity)
        ours = corrupt(x, name, severity, SampleRNG(KEY, ids), preset).numpy() * 255
        z = SampleRNG(KEY, ids).normal(3, 32, 32, dtype=torch.float64).numpy()  # the same draws
        np.testing.assert_array_equal(np.round(ours), reference_uint8(formula(xs, z, c)))


def test_gaussian_noise_statistics() -> None:
    sigma = get_preset("imagenet-c").param("gaussian_noise", 1)  # 0.08: little clipping at 0.5
    y = corrupt(grey(4, 64), "gaussian_noise", 1, SampleRNG(KEY, torch.arange(4)))
    d = (y - 128 / 255).flatten()
    # truncation to uint8 lowers the mean by half a level
    assert float(d.mean()) == pytest.approx(-0.5 / 255, abs=0.003)
    assert float(d.std()) == pytest.approx(sigma, rel=0.03)


def test_shot_noise_matches_poisson_statistics() -> None:
    for preset, severity in [("imagenet-c", 5), ("imagenet-c", 1), ("cifar10-c", 1)]:
        photons = get_preset(preset).param("shot_noise", severity)  # 3, 60, 500: both sampling paths
        y = corrupt(grey(4, 64, 64), "shot_noise", severity, SampleRNG(KEY, torch.arange(4)), preset)
        counts = torch.round(y * 255) / 255 * photons  # back to counts, up to the uint8 truncation
        rate = 64 / 255 * photons
        assert float(counts.mean()) == pytest.approx(rate, rel=0.02, abs=photons * 1.0 / 255)
        assert float(counts.var()) == pytest.approx(rate, rel=0.08, abs=photons * photons / 255**2)


@pytest.mark.parametrize("rate", [0.3, 4.0, 9.9, 10.0, 40.0, 600.0])
def test_rng_poisson_moments(rate: float) -> None:
    rng = SampleRNG(5, torch.arange(8))
    draws = rng.poisson(torch.full((8, 4096), rate))
    assert float(draws.mean()) == pytest.approx(rate, rel=0.02, abs=0.01)
    assert float(draws.var()) == pytest.approx(rate, rel=0.06, abs=0.02)
    assert torch.equal(draws, draws.round()) and float(draws.min()) >= 0


def test_shot_noise_replays_the_reference_formula() -> None:
    x = ramp()
    ids = torch.arange(2)
    c = get_preset("imagenet-c").param("shot_noise", 2)
    ours = np.round(corrupt(x, "shot_noise", 2, SampleRNG(KEY, ids)).numpy() * 255)
    xs = np.round(x.numpy().astype(np.float64) * 255) / 255
    table = poisson_levels_table(float(c), torch.device("cpu"))  # the draws (tested in test_shifts_alias)
    counts = SampleRNG(KEY, ids).alias(table, torch.from_numpy(np.round(xs * 255)).long()).numpy()
    np.testing.assert_array_equal(ours, reference_uint8(counts / c))


def test_shot_noise_off_the_uint8_grid_uses_the_general_sampler() -> None:
    """Values between uint8 levels get Poisson(x * photons) from SampleRNG.poisson; values on
    the grid keep their table draws whatever else is in the batch."""
    c = get_preset("imagenet-c").param("shot_noise", 1)
    x = ramp(4, 16)
    ids = torch.arange(4)
    on_grid = corrupt(x, "shot_noise", 1, SampleRNG(KEY, ids))
    mixed = x.clone()
    mixed[3] = 0.5 + 0.37 / 255  # between levels 127 and 128
    out = corrupt(mixed, "shot_noise", 1, SampleRNG(KEY, ids))
    assert torch.equal(out[:3], on_grid[:3])
    counts = torch.round(out[3] * 255) / 255 * c  # back to counts, up to the uint8 truncation
    assert float(counts.mean()) == pytest.approx(float(mixed[3, 0, 0, 0]) * c, rel=0.03)


@pytest.mark.parametrize(("preset", "severity"), [("imagenet-c", 5), ("cifar10-c", 3)])
def test_impulse_noise_flips_the_right_fraction(preset: str, severity: int) -> None:
    amount = get_preset(preset).param("impulse_noise", severity)
    x = grey(4, 64)
    y = corrupt(x, "impulse_noise", severity, SampleRNG(KEY, torch.arange(4)), preset)
    salt, pepper = float((y == 1).float().mean()), float((y == 0).float().mean())
    untouched = float((y == x).float().mean())
    n = y.numel()
    tol = 4 * np.sqrt(amount / 2 / n) + 1e-4
    assert salt == pytest.approx(amount / 2, abs=tol) and pepper == pytest.approx(amount / 2, abs=tol)
    assert salt + pepper + untouched == pytest.approx(1.0)
    # values flip per channel, independently (skimage's s&p works on every array element)
    flipped = (y != x).float()
    assert float(flipped.mean(dim=1).eq(1).float().mean()) < 3 * amount**2


def test_speckle_noise_scales_with_intensity() -> None:
    sigma = get_preset("imagenet-c").param("speckle_noise", 1)
    dark, mid = grey(4, 48, 40), grey(4, 48, 120)
    ids = torch.arange(4)
    d_dark = corrupt(dark, "speckle_noise", 1, SampleRNG(KEY, ids)) - dark
    d_mid = corrupt(mid, "speckle_noise", 1, SampleRNG(KEY, ids)) - mid
    assert float(d_dark.std()) == pytest.approx(sigma * 40 / 255, rel=0.05)
    assert float(d_mid.std()) == pytest.approx(sigma * 120 / 255, rel=0.05)


def dense_poisson(rng: SampleRNG, rate: torch.Tensor) -> torch.Tensor:
    """The Poisson sampler written plainly: every step on every element (inversion for rate < 10
    with 40 fixed steps, 12 PTRS rounds, then the normal fallback), in SampleRNG.poisson's
    stream order. The library skips the work on decided elements; the draws must not change."""
    rate = rate.to(torch.float32)
    shape = tuple(rate.shape[1:])
    small = rate < 10.0
    u = rng.uniform(*shape)
    lam = rate.clamp(max=10.0)
    p = torch.exp(-lam)
    cdf, k_inv = p.clone(), torch.zeros_like(lam)
    for i in range(1, 41):
        k_inv = k_inv + (u > cdf).to(k_inv.dtype)
        p = p * lam / i
        cdf = cdf + p
    if bool(small.all()):
        return k_inv
    lam = rate.clamp(min=10.0)
    slam, loglam = torch.sqrt(lam), torch.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    result = torch.full_like(lam, float("nan"))
    for _ in range(12):
        uu = rng.uniform(*shape) - 0.5
        v = rng.uniform(*shape).clamp(min=1e-12)
        us = 0.5 - uu.abs()
        k = torch.floor((2.0 * a / us + b) * uu + lam + 0.43)
        quick = (us >= 0.07) & (v <= vr)
        rejected = (k < 0) | ((us < 0.013) & (v > us))
        log_accept = torch.log(v) + torch.log(inv_alpha) - torch.log(a / (us * us) + b)
        slow = ~rejected & (log_accept <= -lam + k * loglam - torch.lgamma(k + 1.0))
        result = torch.where((quick | slow) & torch.isnan(result), k, result)
    fallback = torch.clamp(torch.round(lam + slam * rng.normal(*shape)), min=0.0)
    return torch.where(small, k_inv, torch.where(torch.isnan(result), fallback, result))


@pytest.mark.parametrize(("low", "high"), [(0.0, 3.0), (0.0, 12.0), (0.0, 500.0), (20.0, 3000.0)])
def test_poisson_skips_work_without_changing_draws(low: float, high: float) -> None:
    g = torch.Generator().manual_seed(int(high))
    rate = low + (high - low) * torch.rand(6, 3, 17, 19, generator=g)
    rate[0, 0, :2] = 0.0
    fast, plain = SampleRNG(KEY, torch.arange(6)), SampleRNG(KEY, torch.arange(6))
    assert torch.equal(fast.poisson(rate), dense_poisson(plain, rate))
    assert torch.equal(fast.uniform(4), plain.uniform(4))  # the same streams were used up
