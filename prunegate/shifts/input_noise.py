"""Input noise of "Lost in Pruning": perturbations of the model input itself.

Unlike the corruptions, these are not saved images, so nothing is quantised to uint8.
"""

from __future__ import annotations

import torch

from ._registry import register_noise
from .rng import SampleRNG


@register_noise("uniform", space="normalized")
def uniform_noise(x: torch.Tensor, level: float, rng: SampleRNG) -> torch.Tensor:
    """U[-level, level] added to the normalised model input, as in the paper."""
    u = rng.uniform(*x.shape[1:]).to(x.dtype)
    return x + (2.0 * u - 1.0) * level


@register_noise("gaussian")
def gaussian_noise(x: torch.Tensor, level: float, rng: SampleRNG) -> torch.Tensor:
    """N(0, level^2) added in [0, 1] pixel space, clipped back to [0, 1]."""
    return (x + rng.normal(*x.shape[1:]).to(x.dtype) * level).clamp_(0.0, 1.0)
