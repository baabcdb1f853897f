"""Noise corruptions against the reference formulas (numpy) and their statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunegate.shifts import SampleRNG, corrupt, get_preset

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
    counts = SampleRNG(KEY, ids).poisson(torch.from_numpy(xs * c)).numpy()
    np.testing.assert_array_equal(ours, reference_uint8(counts / c))


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
