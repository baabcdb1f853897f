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

from .arrays import _Arrays, _load_npy
from .base import require_path

SEVERITY_FILE = "prunegate-c.json"


def folder_severities(folder: Path) -> list[int]:
    meta = folder / SEVERITY_FILE
    if meta.is_file():
        try:
            return [int(s) for s in json.loads(meta.read_text())["severities"]]
        except (ValueError, KeyError, TypeError):
            return [1, 2, 3, 4, 5]
    return [1, 2, 3, 4, 5]


class CorruptedArrays(_Arrays):
    """One corruption at one severity, read from a precomputed folder."""

    format = "cifar-c"

    def __init__(self, folder: Path, name: str, severity: int, field: str):
        super().__init__(folder / f"{name}.npy", field)
        require_path(folder, field, directory=True)
        require_path(self.path, field, directory=False)
        require_path(folder / "labels.npy", field, directory=False)
        severities = folder_severities(folder)
        if severity not in severities:
            raise self.error(f"severity {severity} is not in this folder (it has {severities})")
        images = _load_npy(self.path, self.error)
        labels = np.asarray(_load_npy(folder / "labels.npy", self.error))
        blocks = len(severities)
        if images.shape[0] % blocks:
            raise self.error(f"{images.shape[0]} rows do not split into {blocks} severity blocks")
        n = images.shape[0] // blocks
        if len(labels) == blocks * n:
            labels = labels[:n]
        elif len(labels) != n:
            raise self.error(f"labels.npy has {len(labels)} labels; expected {n} or {blocks * n}", folder / "labels.npy")
        block = severities.index(severity)
        self._set_arrays(images[block * n : (block + 1) * n], labels, self.path)
        self.severity = severity
        self.digest = hashlib.sha256(f"{file_sha256(self.path)}:{severity}".encode()).hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "severity": self.severity}
