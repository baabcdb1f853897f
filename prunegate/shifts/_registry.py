"""Registries of shifts by name, in the manner of timm's `register_model`.

Two families share the mechanism:
- corruptions (`register_shift`): ImageNet-C / CIFAR-10-C style, `fn(x, param, rng) -> x`,
  where `param` is one entry of a preset's severity table (see presets.py);
- input noise (`register_noise`): the paper's noise tasks, `fn(x, level, rng) -> x`, applied in
  the space the noise declares: "pixel" (float [0, 1] images) or "normalized" (model input).

Images are float NCHW in [0, 1] on any device; `rng` is a `SampleRNG` for the batch's samples.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from prunegate.errors import PrunegateError

from .rng import SampleRNG

ShiftFn = Callable[[torch.Tensor, Any, SampleRNG], torch.Tensor]
Space = Literal["pixel", "normalized"]


@dataclass(frozen=True)
class Shift:
    name: str
    fn: ShiftFn
    space: Space = "pixel"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._shifts: dict[str, Shift] = {}

    def register(self, name: str, *, space: Space = "pixel") -> Callable[[ShiftFn], ShiftFn]:
        def decorator(fn: ShiftFn) -> ShiftFn:
            if name in self._shifts:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._shifts[name] = Shift(name, fn, space)
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
