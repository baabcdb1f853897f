"""Prediction kinds by name: how a model's outputs are checked, tallied and measured (base.py)."""

from __future__ import annotations

from .base import PredictionKind, Tally
from .classification import CLASSIFICATION, Classification
from .segmentation import SEGMENTATION, Segmentation, SegmentationTally

KINDS: dict[str, PredictionKind] = {CLASSIFICATION.name: CLASSIFICATION, SEGMENTATION.name: SEGMENTATION}


def get_kind(name: str) -> PredictionKind:
    """The prediction kind called `name`."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown prediction kind {name!r}; known: {', '.join(sorted(KINDS))}") from None


__all__ = [
    "CLASSIFICATION",
    "KINDS",
    "Classification",
    "PredictionKind",
    "SEGMENTATION",
    "Segmentation",
    "SegmentationTally",
    "Tally",
    "get_kind",
]
