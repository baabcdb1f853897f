"""Format `segmentation-folder`: `<path>/images/<stem>.<ext>` with `<path>/masks/<stem>.png`.

A mask is a single-channel index PNG of its image's size: each pixel holds a class index, or the
ignore index (255 by default, as PASCAL VOC marks object borders). Palette PNGs, as VOC ships
them, give their palette indices: a mask is never converted to RGB, whose colours are not classes.
Images decode with Pillow (`imageio.pil_decode`), masks with Pillow's PNG reader alone; each
image's digest covers both its bytes and its mask's, so a changed mask changes the manifest.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from prunegate.errors import link_problem
from prunegate.imageio import PIL_FORMATS, decoder_message, pil_decode

from .base import CROP_FRACTION, ImageSet, fit_to_size, require_path
from .imagefolder import IMAGE_SUFFIXES

# Modes whose pixels are indices: palette, 8-bit grey, 16-bit grey (any byte order), 32-bit integers.
MASK_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I;16N", "I")
# NEAREST_EXACT samples each output pixel at its centre, (i + 0.5) * scale, as the image's bilinear
# resize does (half-pixel centres), so a mask label stays over the image pixel it describes. Plain
# NEAREST samples at i * scale, a shift of up to half a source pixel towards the top-left.
MASK_INTERPOLATION = InterpolationMode.NEAREST_EXACT


def fit_pair(
    image_chw: torch.Tensor, mask_hw: torch.Tensor, size: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (CHW uint8) and its mask (HW) fitted to size x size as `fit_to_size` fits the image,
    the mask resized by nearest neighbour (no invented classes) and cropped alike; `ignore_index`
    is kept as any other value (nearest neighbour only copies values)."""
    del ignore_index  # nearest neighbour needs no padding value: every output value is an input one
    if image_chw.shape[-2:] != mask_hw.shape[-2:]:
        raise ValueError(f"mask size {list(mask_hw.shape[-2:])} differs from image size {list(image_chw.shape[-2:])}")
    if image_chw.shape[-2:] == (size, size):
        return image_chw, mask_hw
    image = fit_to_size(image_chw, size)
    resized = TF.resize(mask_hw[None], [round(size / CROP_FRACTION)], interpolation=MASK_INTERPOLATION)
    mask = TF.center_crop(resized, [size, size])[0]
    return image, mask


class SegmentationFolder(ImageSet):
    """Images with index masks. `labels` are all zero (one per image), so `select` takes the first
    images in file order (sorted by stem); `classes` are the given class names."""

    format = "segmentation-folder"

    def __init__(self, path: Path, field: str, class_names: list[str] | None = None, ignore_index: int = 255):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=True)
        self.ignore_index = ignore_index
        self.classes = class_names
        images_dir, masks_dir = path / "images", path / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise self.error(
                    f"the folder has no {folder.name}/ sub-folder (expected images/<stem>.<ext> and masks/<stem>.png)",
                    folder,
                )
        by_stem: dict[str, Path] = {}
        for entry in self._entries(images_dir):
            if entry.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not entry.is_file():
                problem = link_problem(entry)
                if problem:
                    raise self.error(f"{problem}: fix or remove the link (skipping it would leave it out)", entry)
                continue
            if entry.stem in by_stem:
                raise self.error(
                    f"two images share the stem {entry.stem!r} (and so one mask): {by_stem[entry.stem].name}", entry
                )
            by_stem[entry.stem] = entry
        if not by_stem:
            raise self.error("no image files in images/", images_dir)
        self.files = [by_stem[stem] for stem in sorted(by_stem)]
        self.masks = [masks_dir / f"{file.stem}.png" for file in self.files]
        for file, mask in zip(self.files, self.masks):
            if not mask.is_file():
                raise self.error(f"image {file.name} has no mask: expected {mask}", mask)
        self.labels = np.zeros(len(self.files), dtype=np.int64)

    def describe(self) -> dict:
        return {**super().describe(), "ignore_index": self.ignore_index}

    def contents_key(self) -> str:
        """Every image's and mask's name, size and modification time."""
        lines = []
        for file in [*self.files, *self.masks]:
            try:
                stat = file.stat()
                lines.append(f"{file} {stat.st_size} {stat.st_mtime_ns}")
            except OSError:
                lines.append(f"{file} missing")
        return "\n".join(lines)

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        """Images (uint8 HWC) and, per image, sha256 of its bytes' and its mask's sha256 joined."""
        images, digests = [], []
        for i in indices:
            raw = self._bytes(self.files[i], "image")
            size = self._header_size(self.files[i], raw, "image")
            if size[0] * size[1] > max_pixels:
                raise self.error(
                    f"image has {size[0] * size[1]} pixels, over the limit of {max_pixels} (data.max_pixels)",
                    self.files[i],
                )
            try:
                image = pil_decode(raw)
            except Exception as exc:  # Pillow raises many kinds
                raise self.error(self._undecodable("image", self.files[i], exc), self.files[i]) from None
            mask_raw = self._bytes(self.masks[i], "mask")
            self._decode_mask(i, mask_raw, (image.shape[2], image.shape[1]))  # checks mode and size
            joined = hashlib.sha256(raw).hexdigest() + hashlib.sha256(mask_raw).hexdigest()
            images.append(image.permute(1, 2, 0))
            digests.append(hashlib.sha256(joined.encode()).hexdigest())
        return images, digests

    def read_masks(self, indices: list[int]) -> list[torch.Tensor]:
        """The masks (HW int64 class indices) for these indices, each checked against its image's size."""
        masks = []
        for i in indices:
            size = self._header_size(self.files[i], self._bytes(self.files[i], "image"), "image")
            masks.append(self._decode_mask(i, self._bytes(self.masks[i], "mask"), size))
        return masks

    def check_mask_labels(self, mask: torch.Tensor, classes: int, file: Path) -> None:
        """Raise a DataError if a mask value is neither a class index (0..classes-1) nor the ignore index."""
        values = torch.unique(mask)
        bad = values[((values < 0) | (values >= classes)) & (values != self.ignore_index)]
        if bad.numel():
            raise self.error(
                f"mask value {int(bad[0])} is not a class index (0-{classes - 1}) "
                f"nor the ignore index {self.ignore_index}",
                file,
            )

    def _entries(self, folder: Path) -> list[Path]:
        try:
            return sorted(folder.iterdir())
        except OSError as exc:
            raise self.error(f"cannot list the folder ({exc.strerror or exc})", folder) from None

    def _bytes(self, file: Path, what: str) -> bytes:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise self.error(f"cannot read {what}: {exc.strerror}", file) from None
        if not raw:
            raise self.error(f"cannot decode {what}: the file is empty", file)
        return raw

    def _header_size(self, file: Path, raw: bytes, what: str) -> tuple[int, int]:
        """(width, height) from the header alone."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                with PIL.Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as header:
                    return header.size
        except Exception as exc:  # Pillow raises many kinds, the bomb error among them
            raise self.error(self._undecodable(what, file, exc), file) from None

    def _decode_mask(self, i: int, raw: bytes, image_size: tuple[int, int]) -> torch.Tensor:
        file = self.masks[i]
        try:
            with PIL.Image.open(io.BytesIO(raw), formats=("PNG",)) as picture:
                mode, size = picture.mode, picture.size
                if mode in MASK_MODES:
                    values = np.asarray(picture)
        except Exception as exc:  # Pillow raises many kinds
            raise self.error(self._undecodable("mask", file, exc), file) from None
        if mode not in MASK_MODES:
            raise self.error(
                f"mask has mode {mode}: an index PNG is expected (one channel: palette, 8- or 16-bit grey), "
                "whose values are class indices, not colours",
                file,
            )
        if size != image_size:
            raise self.error(
                f"mask is {size[0]}x{size[1]} pixels, "
                f"its image {self.files[i].name} is {image_size[0]}x{image_size[1]} (width x height)",
                file,
            )
        return torch.from_numpy(values.astype(np.int64))

    @staticmethod
    def _undecodable(what: str, file: Path, exc: BaseException) -> str:
        kind = "PNG" if what == "mask" else file.suffix.lstrip(".").upper()
        return f"cannot decode {what}: corrupt, truncated or not a {kind} file ({decoder_message(exc)})"
