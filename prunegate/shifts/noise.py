"""Noise corruptions: gaussian, shot, impulse, speckle (ImageNet-C / CIFAR-10-C).

Each draws one value per pixel and channel, as the reference does (`size=x.shape`).
"""

from __future__ import annotations

import torch

from ._alias import MAX_RATE, poisson_levels_table
from ._color import as_float64, as_levels64, truncate_uint8
from ._registry import register_shift
from .rng import SampleRNG


@register_shift("gaussian_noise")
def gaussian_noise(x: torch.Tensor, sigma: float, rng: SampleRNG) -> torch.Tensor:
    """clip(x + N(0, sigma^2))."""
    x = as_float64(x)
    noise = rng.normal(*x.shape[1:], dtype=x.dtype).to(x.device)
    return truncate_uint8(x + sigma * noise)


@register_shift("shot_noise")
def shot_noise(x: torch.Tensor, photons: float, rng: SampleRNG) -> torch.Tensor:
    """clip(Poisson(x * photons) / photons): photon noise with `photons` per unit intensity.

    Values on the uint8 grid (decoded images: all of them) draw from an alias table of the 256
    levels' Poisson laws, one lookup each; any others use the general sampler (further streams)."""
    levels = as_levels64(x.clamp(0.0, 1.0))
    if photons > MAX_RATE or levels.dtype != torch.float64:
        return truncate_uint8(rng.poisson(levels / 255.0 * photons).to(levels.dtype) / photons)
    rows = levels.round()
    counts = rng.alias(poisson_levels_table(float(photons), levels.device), rows.to(torch.int64)).to(levels.dtype)
    off_grid = rows != levels
    if bool(off_grid.any()):
        general = rng.poisson(levels / 255.0 * photons).to(levels.dtype)
        counts = torch.where(off_grid, general, counts)
    return truncate_uint8(counts / photons)


@register_shift("impulse_noise")
def impulse_noise(x: torch.Tensor, amount: float, rng: SampleRNG) -> torch.Tensor:
    """skimage.util.random_noise(mode="s&p", amount, salt_vs_pepper=0.5): each value (per
    channel) flips with probability `amount`, to 1 or 0 with equal odds."""
    x = as_float64(x)
    flipped = rng.uniform(*x.shape[1:], dtype=x.dtype).to(x.device) <= amount  # skimage: random() <= p
    salt = rng.uniform(*x.shape[1:], dtype=x.dtype).to(x.device) <= 0.5
    out = torch.where(flipped, salt.to(x.dtype), x)
    return truncate_uint8(out)


@register_shift("speckle_noise")
def speckle_noise(x: torch.Tensor, sigma: float, rng: SampleRNG) -> torch.Tensor:
    """clip(x + x * N(0, sigma^2)): multiplicative noise."""
    x = as_float64(x)
    noise = rng.normal(*x.shape[1:], dtype=x.dtype).to(x.device)
    return truncate_uint8(x + x * (sigma * noise))  # numpy: x + x * normal(scale=sigma)
