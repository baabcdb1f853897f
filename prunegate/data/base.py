"""What every on-disk image format provides, and the loader that streams it.

A format reader (`ImageSet`) knows its labels up front and reads images by index as uint8
HWC tensors. `select` picks the deterministic, class-balanced subset a `limit` asks for, and
`batches` streams (indices, images, labels) in background workers, resized and centre-cropped to
the model's input size, while each file's sha256 is taken from the bytes already read for
decoding (the data manifest costs no extra I/O).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from prunegate.errors import DataError, missing_reason

CROP_FRACTION = 0.875  # the usual 256 -> 224 evaluation resize
IGNORED = -1  # a mask pixel no metric counts, whatever the data set's ignore index was


class ImageSet(ABC):
    """A labelled image set. `field` names it in the policy, for error messages."""

    format: str = ""

    def __init__(self, path: Path, field: str):
        self.path = path
        self.field = field
        self.labels: np.ndarray = np.zeros(0, dtype=np.int64)
        self.classes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        """Images (uint8 HWC, any size) and one content digest per image for these indices."""

    def read_batch(
        self, indices: list[int], size: Size, max_pixels: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """One batch as the models take it: uint8 NHWC images fitted to `size`, their labels (a
        set with per-pixel labels returns its masks, fitted alike) and their digests."""
        pictures, digests = self.read(indices, max_pixels)
        fitted = [fit_to_size(p.permute(2, 0, 1), size) for p in pictures]
        batch = torch.stack(fitted).permute(0, 2, 3, 1).contiguous()
        return batch, torch.from_numpy(self.labels[indices]), digests

    def sample_name(self, index: int) -> str:
        """How a person finds sample `index`: the set's file and the index ('test_batch.bin #1002');
        sets of one file per image name that file."""
        return f"{self.path.name} #{index}"

    def error(self, message: str, file: Path | None = None) -> DataError:
        return DataError(message, file=file or self.path, field=self.field)

    def describe(self) -> dict:
        names = {"classes": self.classes} if self.classes else {}
        return {"format": self.format, "path": str(self.path), "size": len(self), **names}

    def contents_key(self) -> str:
        """What identifies the files behind the set, cheaply (no read of every image): see
        `fingerprint`. Readers of one file return its digest; folders list their files."""
        stat = self.path.stat()
        return f"{stat.st_size} {stat.st_mtime_ns}"

    def fingerprint(self) -> str:
        """A digest of the set's description and its files, which a checkpoint is bound to: a
        set that changed between a run and its resumption is not continued."""
        text = json.dumps(self.describe(), sort_keys=True) + "\n" + self.contents_key()
        return hashlib.sha256(text.encode()).hexdigest()


def files_key(files: list[Path]) -> str:
    """A `contents_key` of the files behind a set: each file's name, size and modification time."""
    lines = []
    for file in files:
        try:
            stat = file.stat()
            lines.append(f"{file} {stat.st_size} {stat.st_mtime_ns}")
        except OSError:
            lines.append(f"{file} missing")
    return "\n".join(lines)


def require_path(path: Path, field: str, *, directory: bool) -> None:
    """Raise a DataError unless `path` exists and is a folder (or a file, when not `directory`)."""
    if not path.exists():
        raise DataError(missing_reason(path), file=path, field=field)
    if directory and not path.is_dir():
        raise DataError("expected a folder, found a file", file=path, field=field)
    if not directory and path.is_dir():
        raise DataError("expected a file, found a folder", file=path, field=field)


def select(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the class-balanced subset: samples are taken by their rank within their class
    (all first samples of each class, then all second ones, ...) until `limit` are chosen, so each
    class gets floor or ceil of limit/K; returned in file order."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts
    chosen = np.lexsort((labels, rank))[:limit]  # by rank, then by class
    return np.sort(chosen)


Size = int | tuple[int, int]  # a square side, or (height, width)


def as_shape(size: Size) -> tuple[int, int]:
    """(height, width) of a size."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def covering_size(image_hw: tuple[int, int], size: Size, crop_fraction: float) -> list[int]:
    """What `torchvision.transforms.v2.functional.resize` is given so that an image of `image_hw`
    covers `size` / crop_fraction: for a square size, the short side (torchvision scales the long
    one alike); otherwise both sides, scaled by one factor and never below the size."""
    height, width = as_shape(size)
    if height == width:
        return [round(height / crop_fraction)]
    scale = max(height / image_hw[0], width / image_hw[1]) / crop_fraction
    return [max(height, round(image_hw[0] * scale)), max(width, round(image_hw[1] * scale))]


def fit_to_size(
    image: torch.Tensor,
    size: Size,
    crop_fraction: float = CROP_FRACTION,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> torch.Tensor:
    """CHW -> the size (side, or (height, width)): an image of another size is resized (antialiased,
    so that it covers the size / crop_fraction: the short side to size/0.875 by default) and
    centre-cropped; an image already that size is left alone."""
    shape = as_shape(size)
    if tuple(image.shape[-2:]) == shape:
        return image
    antialias = interpolation == InterpolationMode.BILINEAR
    resized = TF.resize(
        image,
        covering_size((int(image.shape[-2]), int(image.shape[-1])), shape, crop_fraction),
        interpolation,
        antialias=antialias,
    )
    return TF.center_crop(resized, list(shape))


# One decoded batch: (sample indices, uint8 NHWC images, labels, one digest per image).
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]


class _Fetch(torch.utils.data.Dataset):
    """Worker-side reading of whole batches: the sampler yields lists of indices.

    A user-facing error is returned, not raised: DataLoader re-raises worker exceptions as a
    new exception whose message carries the worker's traceback."""

    def __init__(self, images: ImageSet, size: Size, max_pixels: int):
        self.images, self.size, self.max_pixels = images, size, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> Batch | DataError:
        try:
            batch, labels, digests = self.images.read_batch(indices, self.size, self.max_pixels)
        except DataError as error:
            return error
        return torch.tensor(indices, dtype=torch.int64), batch, labels, digests


def _identity(batch: Batch | DataError) -> Batch | DataError:
    return batch


@dataclass
class Manifest:
    """What was read: enough for a reviewer to know the data, and a digest to pin it."""

    info: dict
    indices: np.ndarray
    _digests: dict[int, str] = field(default_factory=dict)

    def add(self, indices: torch.Tensor, digests: list[str]) -> None:
        self._digests.update(zip(indices.tolist(), digests))

    @property
    def digests(self) -> dict[int, str]:
        return self._digests

    def merge(self, digests: dict[int, str]) -> None:
        """Add what other processes read (torchrun)."""
        self._digests.update(digests)

    def to_dict(self) -> dict:
        lines = "".join(f"{i} {self._digests.get(int(i), '')}\n" for i in self.indices)
        return {
            **self.info,
            "used": int(len(self.indices)),
            "sha256": hashlib.sha256(lines.encode()).hexdigest(),
        }


PREFETCH = 4  # decoded batches each worker keeps ready ...
PREFETCH_BYTES = 128 << 20  # ... unless those of all workers would take more than this


def prefetch_factor(size: Size, batch_size: int, workers: int) -> int:
    """Batches each worker decodes ahead: PREFETCH, fewer (at least 1) where the decoded batches in
    flight (uint8 images and masks) would pass PREFETCH_BYTES. Speed only: nothing read changes."""
    height, width = as_shape(size)
    batch_bytes = batch_size * height * width * 4  # 3 channels of uint8, and a mask or label
    return max(1, min(PREFETCH, PREFETCH_BYTES // max(1, batch_bytes * workers)))


def batches(
    images: ImageSet, indices: np.ndarray, size: Size, batch_size: int, workers: int, max_pixels: int
) -> Iterator[Batch]:
    """(sample indices, uint8 NHWC images, labels or masks, digests) in order, decoded in workers."""
    chunks = [indices[i : i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
    processes = min(workers, len(chunks))
    loader = torch.utils.data.DataLoader(
        _Fetch(images, size, max_pixels),
        batch_size=None,
        sampler=chunks,
        num_workers=processes,
        # With batch_size=None torch calls collate_fn on each item, not on a list as its type says.
        collate_fn=_identity,  # type: ignore[arg-type]
        prefetch_factor=prefetch_factor(size, batch_size, processes) if processes else None,
        persistent_workers=False,
    )
    for item in loader:
        if isinstance(item, DataError):
            raise item
        yield item
