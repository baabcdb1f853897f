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
from prunegate.errors import DataError

from .base import ImageSet, require_path

MIXED_SIZES = ("holds an object array, not one uint8 array (images of different sizes?): {format} needs the "
               "images as one uint8 array [N, H, W, 3] of same-size images; use imagefolder for images of any size")
_INT64_MAX = np.iinfo(np.int64).max


class _Arrays(ImageSet):
    images: np.ndarray
    digest: str

    def _set_arrays(self, images: np.ndarray, labels: np.ndarray, where: Path) -> None:
        if images.dtype == object:
            raise self.error(MIXED_SIZES.format(format=self.format), where)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise self.error(f"images must be uint8 NHWC with 1 or 3 channels; found shape {images.shape}", where)
        if images.dtype != np.uint8:
            raise self.error(f"images must be uint8; found {images.dtype}", where)
        if 0 in images.shape[1:3]:
            raise self.error(f"images must be at least 1 x 1 pixels; found shape {images.shape}", where)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise self.error(f"labels must be a 1-D integer array; found {labels.dtype} {labels.shape}", where)
        if len(labels) != len(images):
            raise self.error(f"{len(images)} images but {len(labels)} labels", where)
        if len(labels) == 0:
            raise self.error("the dataset is empty", where)
        if labels.min() < 0:
            raise self.error(f"labels must be >= 0; found {labels.min()}", where)
        if labels.max() > _INT64_MAX:  # an unsigned label too large for int64 would turn negative
            raise self.error(f"label {labels.max()} is too large", where)
        self.images, self.labels = images, labels.astype(np.int64)

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        height, width = self.images.shape[1:3]
        if height * width > max_pixels:
            raise self.error(f"images have {height * width} pixels ({height} x {width}), over the limit of "
                             f"{max_pixels} (data.max_pixels)")
        try:
            block = torch.from_numpy(np.ascontiguousarray(self.images[indices]))
        except (OSError, ValueError) as exc:  # a memory-mapped file that changed or shrank under us
            raise self.error(f"cannot read the images ({_first_line(exc)})") from None
        if block.shape[-1] == 1:
            block = block.expand(-1, -1, -1, 3)
        return list(block), [self.digest] * len(indices)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _load_npy(path: Path, field_error, format: str = "npy") -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower():  # numpy: "Python objects in dtype" / "Object arrays cannot be loaded"
            raise field_error(MIXED_SIZES.format(format=format), path) from None
        raise field_error(f"not a readable .npy array ({_first_line(exc)})", path) from None
    except Exception as exc:  # numpy also raises SyntaxError, tokenize.TokenError... on a damaged header
        raise field_error(f"not a readable .npy array ({_first_line(exc)})", path) from None
    if not isinstance(array, np.ndarray):  # an .npz archive given as .npy
        if hasattr(array, "close"):
            array.close()
        raise field_error("not a .npy array (an .npz archive? use format npz)", path)
    return array


def _read_member(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array of an .npz, after checking that its header fits its size: a header may claim
    any shape, and numpy allocates what it claims before reading."""
    member = name if name in archive.namelist() else name + ".npy"
    info = archive.getinfo(member)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version in read_header:  # (3, 0) differs only in utf-8 field names: numpy checks it
            shape, _, dtype = read_header[version](stream)
            if dtype.hasobject:
                raise ValueError("object arrays cannot be loaded")
            expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            available = info.file_size - stream.tell()
            if expected > available:
                raise ValueError(f"array {name!r}: its header claims shape {shape} ({expected} bytes) but the archive "
                                 f"holds {available} bytes of it")
    with archive.open(member) as stream:
        return np.lib.format.read_array(stream, allow_pickle=False)


class NpzImages(_Arrays):
    format = "npz"

    def __init__(self, path: Path, field: str, images_key: str = "images", labels_key: str = "labels"):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=False)
        try:
            with zipfile.ZipFile(path) as archive:
                keys = [n[: -len(".npy")] if n.endswith(".npy") else n for n in archive.namelist()]
                missing = [k for k in (images_key, labels_key) if k not in keys]
                if missing:
                    raise self.error(f"no array {missing[0]!r} in the archive; it has {keys}")
                arrays = {key: _read_member(archive, key) for key in (images_key, labels_key)}
        except DataError:
            raise
        except ValueError as exc:
            if "object" in str(exc).lower():
                raise self.error(MIXED_SIZES.format(format="npz")) from None
            raise self.error(f"not a readable .npz archive ({_first_line(exc)})") from None
        except Exception as exc:  # zipfile, zlib and numpy raise many kinds (BadZipFile, zlib.error, SyntaxError...)
            raise self.error(f"not a readable .npz archive ({_first_line(exc)})") from None
        self._set_arrays(arrays[images_key], arrays[labels_key], path)
        self.digest = file_sha256(path)


class NpyImages(_Arrays):
    format = "npy"

    def __init__(self, path: Path, field: str, labels_path: Path):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=False)
        require_path(labels_path, field + ".labels", directory=False)
        images = _load_npy(path, self.error)
        labels = np.asarray(_load_npy(labels_path, self.error))
        self._set_arrays(images, labels, path)
        self.labels_path = labels_path
        self.digest = hashlib.sha256((file_sha256(path) + file_sha256(labels_path)).encode()).hexdigest()
