"""Registries of shifts by name, in the manner of timm's `register_model`.

Two families share the mechanism:
- corruptions (`register_shift`): ImageNet-C / CIFAR-10-C style, `fn(x, param, rng) -> x`,
  where `param` is one entry of a preset's severity table (see presets.py); a corruption that
  overlays assets (frost's photographs) registers with `assets=True` and is called
  `fn(x, param, rng, assets)` with the run's `ShiftAssets`;
- input noise (`register_noise`): the paper's noise tasks, `fn(x, level, rng) -> x`, applied in
  the space the noise declares: "pixel" (float [0, 1] images) or "normalized" (model input).

Images are float NCHW in [0, 1] on any device; `rng` is a `SampleRNG` for the batch's samples.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from prunegate.errors import PrunegateError

from .assets import NO_ASSETS, ShiftAssets
from .rng import SampleRNG

ShiftFn = Callable[[torch.Tensor, Any, SampleRNG], torch.Tensor]
Space = Literal["pixel", "normalized"]


@dataclass(frozen=True)
class Shift:
    """A registered shift: its function, the space it works in, whether it takes assets."""

    name: str
    fn: Callable[..., torch.Tensor]
    space: Space = "pixel"
    takes_assets: bool = False

    def apply(self, x: torch.Tensor, param: Any, rng: SampleRNG, assets: ShiftAssets = NO_ASSETS) -> torch.Tensor:
        """The shifted batch; `assets` reach only a shift that declared it takes them."""
        if self.takes_assets:
            return self.fn(x, param, rng, assets)
        return self.fn(x, param, rng)


class Registry:
    """Shifts of one family by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._shifts: dict[str, Shift] = {}

    def register(
        self, name: str, *, space: Space = "pixel", assets: bool = False
    ) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
        """A decorator that registers `fn` under `name` (a duplicate name is an error)."""

        def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            if name in self._shifts:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._shifts[name] = Shift(name, fn, space, assets)
            return fn

        return decorator

    def get(self, name: str) -> Shift:
        try:
            return self._shifts[name]
        except KeyError:
            known = ", ".join(sorted(self._shifts))
            raise PrunegateError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._shifts if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._shifts


CORRUPTIONS = Registry("corruption")
NOISES = Registry("noise kind")

register_shift = CORRUPTIONS.register
register_noise = NOISES.register


def get_shift(name: str) -> Shift:
    return CORRUPTIONS.get(name)


def list_shifts(pattern: str = "*") -> list[str]:
    return CORRUPTIONS.names(pattern)


def get_noise(name: str) -> Shift:
    return NOISES.get(name)


def list_noises(pattern: str = "*") -> list[str]:
    return NOISES.names(pattern)
