"""Arrays of images: `npz` (one archive with images and labels) and `npy` (two files).

Images are uint8 NHWC with 3 channels (or NHW greyscale); labels are integers, one per image.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from prunegate.digest import file_sha256

from .base import ImageSet, require_path



class _Arrays(ImageSet):
    images: np.ndarray
    digest: str

    def _set_arrays(self, images: np.ndarray, labels: np.ndarray, where: Path) -> None:
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise self.error(f"images must be uint8 NHWC with 1 or 3 channels; found shape {images.shape}", where)
        if images.dtype != np.uint8:
            raise self.error(f"images must be uint8; found {images.dtype}", where)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise self.error(f"labels must be a 1-D integer array; found {labels.dtype} {labels.shape}", where)
        if len(labels) != len(images):
            raise self.error(f"{len(images)} images but {len(labels)} labels", where)
        if len(labels) == 0:
            raise self.error("the dataset is empty", where)
        if labels.min() < 0:
            raise self.error(f"labels must be >= 0; found {labels.min()}", where)
        self.images, self.labels = images, labels.astype(np.int64)

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        block = torch.from_numpy(np.ascontiguousarray(self.images[indices]))
        if block.shape[-1] == 1:
            block = block.expand(-1, -1, -1, 3)
        return list(block), [self.digest] * len(indices)


def _load_npy(path: Path, field_error) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise field_error(f"not a readable .npy array ({str(exc).splitlines()[0]})", path) from None


class NpzImages(_Arrays):
    format = "npz"

    def __init__(self, path: Path, field: str, images_key: str = "images", labels_key: str = "labels"):
        super().__init__(path, field)
        require_path(path, field, directory=False)
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in (images_key, labels_key) if k not in archive.files]
                if missing:
                    raise self.error(f"no array {missing[0]!r} in the archive; it has {archive.files}")
                images, labels = archive[images_key], archive[labels_key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise self.error(f"not a readable .npz archive ({str(exc).splitlines()[0]})") from None
        self._set_arrays(images, labels, path)
        self.digest = file_sha256(path)


class NpyImages(_Arrays):
    format = "npy"

    def __init__(self, path: Path, field: str, labels_path: Path):
        super().__init__(path, field)
        require_path(path, field, directory=False)
        require_path(labels_path, field + ".labels", directory=False)
        images = _load_npy(path, self.error)
        labels = np.asarray(_load_npy(labels_path, self.error))
        self._set_arrays(images, labels, path)
        self.labels_path = labels_path
        self.digest = hashlib.sha256((file_sha256(path) + file_sha256(labels_path)).encode()).hexdigest()
