"""Distribution shifts: the ImageNet-C / CIFAR-10-C corruptions and input noise.

Importing this package registers every corruption. Use `corrupt(x, name, severity, rng)` to
apply one at a benchmark severity, or `get_shift(name).apply(x, param, rng)` with a parameter of
your own. Assets a corruption overlays (frost's photographs) are passed in as a `ShiftAssets`.
Images are float NCHW RGB in [0, 1] on any device; every random draw comes from the
`SampleRNG`, so a sample's result depends only on its key and id, never on its batch.
"""

from __future__ import annotations

import torch

from prunegate.errors import PrunegateError
from prunegate.shift_names import CORRUPTION_NAMES

from . import blur, digital, input_noise, noise, weather  # noqa: F401  (importing registers the shifts)
from ._registry import (
    CORRUPTIONS,
    NOISES,
    Registry,
    Shift,
    get_noise,
    get_shift,
    list_noises,
    list_shifts,
    register_noise,
    register_shift,
)
from .assets import NO_ASSETS, ShiftAssets
from .presets import Preset, get_preset, list_presets
from .rng import SampleRNG, task_key

MAX_CHUNK = 64  # samples per shift call
# On the CPU the shifts are bound by memory traffic (dozens of passes over float64 images), so a
# call also stays within this many values (N x C x H x W): one 224-px image, 64 CIFAR images.
# Measured single-threaded on the 19 x 5 imagenet-c tasks: 20.8 s CPU in chunks of 16 images,
# 12.9 s in 4s, 11.3 s one at a time (the same outputs: samples are independent). For CIFAR
# (2 threads, 256 images) 2**18 gave ~90 suite img/s and 2**17 ~70: per-call overhead dominates.
CPU_CHUNK_VALUES = 1 << 18


def chunk_size(x: torch.Tensor) -> int:
    """Samples per shift call for a batch like x: at most MAX_CHUNK, fewer for large images on
    the CPU, and the batch split evenly (no small last chunk paying a whole call's overhead)."""
    limit = MAX_CHUNK if x.device.type != "cpu" else max(1, min(MAX_CHUNK, CPU_CHUNK_VALUES // max(1, x[0].numel())))
    if x.shape[0] == 0:
        return limit
    chunks = -(-x.shape[0] // limit)
    return -(-x.shape[0] // chunks)


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    rng: SampleRNG,
    preset: str = "imagenet-c",
    assets: ShiftAssets = NO_ASSETS,
) -> torch.Tensor:
    """Apply corruption `name` at `severity` (1..5) of `preset` to a batch x [N, 3, H, W],
    overlaying `assets` where the corruption takes some."""
    table = get_preset(preset)
    shift = get_shift(name)
    param = table.param(name, severity)
    if x.ndim != 4 or x.shape[1] != 3:
        raise PrunegateError(f"corruptions take RGB batches [N, 3, H, W]; got shape {tuple(x.shape)}")
    if rng.n != x.shape[0]:
        raise PrunegateError(f"the random streams cover {rng.n} samples but the batch has {x.shape[0]}")
    if not x.is_floating_point():
        raise PrunegateError(f"corruptions take float images in [0, 1]; got {x.dtype}")
    x = x.to(torch.float32)
    chunk = chunk_size(x)
    if x.shape[0] <= chunk:
        return shift.apply(x, param, rng, assets)
    # Samples are independent, so chunks give identical results; bounded chunks keep the working
    # set of the shifts in cache.
    return torch.cat(
        [
            shift.apply(x[i : i + chunk], param, rng.subset(slice(i, i + chunk)), assets)
            for i in range(0, x.shape[0], chunk)
        ]
    )


__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_NAMES",
    "NOISES",
    "NO_ASSETS",
    "Preset",
    "Registry",
    "SampleRNG",
    "Shift",
    "ShiftAssets",
    "corrupt",
    "get_noise",
    "get_preset",
    "get_shift",
    "list_noises",
    "list_presets",
    "list_shifts",
    "register_noise",
    "register_shift",
    "task_key",
]
