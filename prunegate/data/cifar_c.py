"""Precomputed corruption sets in the CIFAR-10-C layout.

A folder holds `<corruption>.npy` (uint8 [S * N, H, W, 3]: S severity blocks of N images each,
severity 1 first) and `labels.npy` (the N labels, tiled S times as CIFAR-10-C ships them, or
given once). `prunegate corrupt` writes this layout, plus a `prunegate-c.json` naming its
severities when it wrote fewer than five.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from prunegate.digest import file_sha256
from prunegate.errors import DataError

from .arrays import ArrayImages, load_npy
from .base import require_path

SEVERITY_FILE = "prunegate-c.json"


def folder_severities(folder: Path, field: str = "suite.corruptions.precomputed") -> list[int]:
    """The severities of a folder's blocks, in order: those its prunegate-c.json names, else all five.
    A file that is there but unreadable is an error: guessing would mislabel the blocks."""
    meta = folder / SEVERITY_FILE
    if not meta.is_file():
        return [1, 2, 3, 4, 5]
    try:
        severities = json.loads(meta.read_text(encoding="utf-8"))["severities"]
        if (
            not isinstance(severities, list)
            or not severities
            or any(type(s) is not int or not 1 <= s <= 5 for s in severities)
            or len(set(severities)) != len(severities)
        ):
            raise ValueError
        return severities
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise DataError('expected {"severities": [distinct integers 1-5]}', file=meta, field=field) from None


class CorruptedArrays(ArrayImages):
    """One corruption at one severity, read from a precomputed folder."""

    format = "cifar-c"

    def __init__(self, folder: Path, name: str, severity: int, field: str):
        super().__init__(folder / f"{name}.npy", field)
        require_path(folder, field, directory=True)
        require_path(self.path, field, directory=False)
        require_path(folder / "labels.npy", field, directory=False)
        severities = folder_severities(folder, field)
        if severity not in severities:
            raise self.error(f"severity {severity} is not in this folder (it has {severities})")
        images = load_npy(self.path, self.error)
        labels = np.asarray(load_npy(folder / "labels.npy", self.error))
        if images.ndim == 0:
            raise self.error(f"images must be uint8 [S * N, H, W, 3]; found shape {images.shape}")
        if labels.ndim != 1:
            raise self.error(f"labels must be a 1-D integer array; found shape {labels.shape}", folder / "labels.npy")
        blocks = len(severities)
        if images.shape[0] % blocks:
            raise self.error(f"{images.shape[0]} rows do not split into {blocks} severity blocks")
        n = images.shape[0] // blocks
        if len(labels) == blocks * n:
            labels = labels[:n]
        elif len(labels) != n:
            raise self.error(
                f"labels.npy has {len(labels)} labels; expected {n} or {blocks * n}", folder / "labels.npy"
            )
        block = severities.index(severity)
        self._set_arrays(images[block * n : (block + 1) * n], labels, self.path)
        self.severity = severity
        self.digest = hashlib.sha256(f"{file_sha256(self.path)}:{severity}".encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "severity": self.severity}
