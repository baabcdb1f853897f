"""The names of the shifts, without importing torch.

The policy and the plan need only names to validate and expand a suite, and `policy validate`
must start fast. `prunegate.shifts` registers the implementations under these same names
(tests/test_shifts_registry.py checks that the two agree).
"""

from __future__ import annotations

# The benchmark's order: the 15 ImageNet-C corruptions, then the 4 extra ones.
CORRUPTION_NAMES: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
NOISE_KINDS: tuple[str, ...] = ("gaussian", "uniform")
PRESET_NAMES: tuple[str, ...] = ("cifar10-c", "imagenet-c")

# A policy field naming a folder of assets -> the corruption that overlays them.
ASSET_SHIFTS = {"frost_textures": "frost"}
ASSET_NAMES = tuple(ASSET_SHIFTS)
