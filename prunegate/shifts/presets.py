"""Severity tables of the two reference benchmarks.

Every number here is copied from the reference generators in hendrycks/robustness:
- `cifar10-c`:  ImageNet-C/create_c/make_cifar_c.py    (32 x 32 images)
- `imagenet-c`: ImageNet-C/create_c/make_imagenet_c.py (224 x 224 images)
A table maps a corruption name to its five parameters, severity 1 first, in the order and the
units (pixels of the nominal image size) the reference uses. The named tuples below only name
the reference's tuple fields; they compare equal to plain tuples.

Two entries are ours, marked where they appear: frost's `texture_scale` (the CIFAR generator
shrinks its frost photographs by 0.2 before cropping) and zoom blur's factor lists, which are
the exact float64 values of the reference's `np.arange(...)` calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from prunegate.errors import PrunegateError


class Glass(NamedTuple):
    sigma: float
    max_delta: int
    iterations: int


class Defocus(NamedTuple):
    radius: float
    alias_blur: float


class Motion(NamedTuple):
    radius: float
    sigma: float


class Snow(NamedTuple):
    loc: float
    scale: float
    zoom: float
    threshold: float
    blur_radius: float
    blur_sigma: float
    blend: float


class Frost(NamedTuple):
    image_weight: float
    frost_weight: float
    texture_scale: float  # ours: CIFAR-10-C resizes the frost photos by 0.2 (cv2.resize fx=fy=0.2)


class Fog(NamedTuple):
    strength: float
    decay: float  # plasma fractal's `wibbledecay`


class Spatter(NamedTuple):
    loc: float
    scale: float
    sigma: float
    threshold: float
    intensity: float
    mud: int  # 0: water branch, 1: mud branch


class Saturate(NamedTuple):
    scale: float
    shift: float


class Elastic(NamedTuple):
    alpha: float  # displacement magnitude, pixels
    sigma: float  # smoothing of the displacement field, pixels
    affine: float  # max jitter of the three affine control points, pixels


def np_arange(start: float, stop: float, step: float) -> tuple[float, ...]:
    """The float64 values of numpy.arange(start, stop, step), in pure Python.

    numpy takes ceil((stop - start) / step) values start + i * ((start + step) - start); the
    float error makes e.g. arange(1, 1.11, 0.01) end at 1.11, and the reference's zoom blur uses
    exactly these values (a test checks them against numpy).
    """
    count = math.ceil((stop - start) / step)
    delta = (start + step) - start
    return tuple(start + i * delta for i in range(count))


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int  # the nominal (reference) image size; shifts accept any size
    table: Mapping[str, tuple[Any, ...]] = field(repr=False)

    def param(self, corruption: str, severity: int) -> Any:
        if corruption not in self.table:
            raise PrunegateError(f"preset {self.name!r} has no corruption {corruption!r}")
        if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 5:
            raise PrunegateError(f"severity must be an integer 1..5, got {severity!r}")
        return self.table[corruption][severity - 1]


_IM = 32  # make_cifar_c.py's IMSIZE for the elastic transform
_CIFAR10_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "glass_blur": (Glass(0.05, 1, 1), Glass(0.25, 1, 1), Glass(0.4, 1, 1), Glass(0.25, 1, 2), Glass(0.4, 1, 2)),
    "defocus_blur": (Defocus(0.3, 0.4), Defocus(0.4, 0.5), Defocus(0.5, 0.6), Defocus(1, 0.2), Defocus(1.5, 0.1)),
    "motion_blur": (Motion(6, 1), Motion(6, 1.5), Motion(6, 2), Motion(8, 2), Motion(9, 2.5)),
    "zoom_blur": (
        np_arange(1, 1.06, 0.01),
        np_arange(1, 1.11, 0.01),
        np_arange(1, 1.16, 0.01),
        np_arange(1, 1.21, 0.01),
        np_arange(1, 1.26, 0.01),
    ),
    "fog": (Fog(0.2, 3), Fog(0.5, 3), Fog(0.75, 2.5), Fog(1, 2), Fog(1.5, 1.75)),
    "frost": (
        Frost(1, 0.2, 0.2),
        Frost(1, 0.3, 0.2),
        Frost(0.9, 0.4, 0.2),
        Frost(0.85, 0.4, 0.2),
        Frost(0.75, 0.45, 0.2),
    ),
    "snow": (
        Snow(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        Snow(0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        Snow(0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        Snow(0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        Snow(0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "spatter": (
        Spatter(0.62, 0.1, 0.7, 0.7, 0.5, 0),
        Spatter(0.65, 0.1, 0.8, 0.7, 0.5, 0),
        Spatter(0.65, 0.3, 1, 0.69, 0.5, 0),
        Spatter(0.65, 0.1, 0.7, 0.69, 0.6, 1),
        Spatter(0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": (Saturate(0.3, 0), Saturate(0.1, 0), Saturate(1.5, 0), Saturate(2, 0.1), Saturate(2.5, 0.2)),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "elastic_transform": (
        Elastic(_IM * 0, _IM * 0, _IM * 0.08),
        Elastic(_IM * 0.05, _IM * 0.2, _IM * 0.07),
        Elastic(_IM * 0.08, _IM * 0.06, _IM * 0.06),
        Elastic(_IM * 0.1, _IM * 0.04, _IM * 0.05),
        Elastic(_IM * 0.1, _IM * 0.03, _IM * 0.03),
    ),
}

_E = 244  # make_imagenet_c.py: "244 should have been 224, but ultimately nothing is incorrect"
_IMAGENET_C = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "glass_blur": (Glass(0.7, 1, 2), Glass(0.9, 2, 1), Glass(1, 2, 3), Glass(1.1, 3, 2), Glass(1.5, 4, 2)),
    "defocus_blur": (Defocus(3, 0.1), Defocus(4, 0.5), Defocus(6, 0.5), Defocus(8, 0.5), Defocus(10, 0.5)),
    "motion_blur": (Motion(10, 3), Motion(15, 5), Motion(15, 8), Motion(15, 12), Motion(20, 15)),
    "zoom_blur": (
        np_arange(1, 1.11, 0.01),
        np_arange(1, 1.16, 0.01),
        np_arange(1, 1.21, 0.02),
        np_arange(1, 1.26, 0.02),
        np_arange(1, 1.31, 0.03),
    ),
    "fog": (Fog(1.5, 2), Fog(2, 2), Fog(2.5, 1.7), Fog(2.5, 1.5), Fog(3, 1.4)),
    "frost": (
        Frost(1, 0.4, 1.0),
        Frost(0.8, 0.6, 1.0),
        Frost(0.7, 0.7, 1.0),
        Frost(0.65, 0.7, 1.0),
        Frost(0.6, 0.75, 1.0),
    ),
    "snow": (
        Snow(0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        Snow(0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        Snow(0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        Snow(0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        Snow(0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "spatter": (
        Spatter(0.65, 0.3, 4, 0.69, 0.6, 0),
        Spatter(0.65, 0.3, 3, 0.68, 0.6, 0),
        Spatter(0.65, 0.3, 2, 0.68, 0.5, 0),
        Spatter(0.65, 0.3, 1, 0.65, 1.5, 1),
        Spatter(0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "saturate": (Saturate(0.3, 0), Saturate(0.1, 0), Saturate(2, 0), Saturate(5, 0.1), Saturate(20, 0.2)),
    "jpeg_compression": (25, 18, 15, 10, 7),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "elastic_transform": (
        Elastic(_E * 2, _E * 0.7, _E * 0.1),
        Elastic(_E * 2, _E * 0.08, _E * 0.2),
        Elastic(_E * 0.05, _E * 0.01, _E * 0.02),
        Elastic(_E * 0.07, _E * 0.01, _E * 0.02),
        Elastic(_E * 0.12, _E * 0.01, _E * 0.02),
    ),
}

_PRESETS = {
    "cifar10-c": Preset("cifar10-c", 32, MappingProxyType(_CIFAR10_C)),
    "imagenet-c": Preset("imagenet-c", 224, MappingProxyType(_IMAGENET_C)),
}


def list_presets() -> list[str]:
    """The names of the known corruption presets, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    """The corruption preset of that name, or a PrunegateError naming the known ones."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise PrunegateError(f"unknown corruption preset {name!r}; known: {', '.join(sorted(_PRESETS))}") from None
