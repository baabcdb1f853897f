"""CIFAR-10 binary batches: records of 1 label byte + 3072 image bytes (3 x 32 x 32, CHW).

`path` is one batch file (e.g. `test_batch.bin`) or the `cifar-10-batches-bin` folder, of which
`test_batch.bin` is read. The Python-pickle batches are not read: unpickling runs code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunegate.digest import file_sha256

from .arrays import ArrayImages
from .base import require_path

RECORD = 1 + 3 * 32 * 32
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Cifar10Binary(ArrayImages):
    format = "cifar10-binary"

    def __init__(self, path: Path, field: str):
        if path.is_dir():
            path = path / "test_batch.bin"
        super().__init__(path, field)
        require_path(path, field + ".path", directory=False)
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % RECORD:
            raise self.error(f"size {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
        records = raw.reshape(-1, RECORD)
        labels = records[:, 0].astype(np.int64)
        if labels.max() > 9:
            raise self.error(f"label byte {labels.max()} is not a CIFAR-10 class (0-9)")
        images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self._set_arrays(np.ascontiguousarray(images), labels, path)
        self.classes = CIFAR10_CLASSES
        self.digest = file_sha256(path)
