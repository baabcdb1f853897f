"""Format `segmentation-folder`: `<path>/images/<stem>.<ext>` with `<path>/masks/<stem>.png`.

A mask is a single-channel index PNG of its image's size: each pixel holds a class index, or the
ignore index (255 by default, as PASCAL VOC marks object borders). Palette PNGs, as VOC ships
them, give their palette indices: a mask is never converted to RGB, whose colours are not classes.
Images decode as the image folders' do (`imagefolder.ImageFiles`), masks with Pillow's PNG reader alone; each
image's digest covers both its bytes and its mask's, so a changed mask changes the manifest.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision.transforms import InterpolationMode

from prunegate.errors import DataError
from prunegate.imageio import decoder_message
from prunegate.policy import DEFAULT_MAX_PIXELS

from .base import IGNORED, Size, as_shape, fit_to_size, require_path
from .imagefolder import ImageFiles, image_files

# Modes whose pixels are indices: palette, 8-bit grey, 16-bit grey (any byte order), 32-bit integers.
MASK_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I;16N", "I")
# NEAREST_EXACT samples each output pixel at its centre, (i + 0.5) * scale, as the image's bilinear
# resize does (half-pixel centres), so a mask label stays over the image pixel it describes. Plain
# NEAREST samples at i * scale, a shift of up to half a source pixel towards the top-left.
MASK_INTERPOLATION = InterpolationMode.NEAREST_EXACT


def fit_pair(image_chw: torch.Tensor, mask_hw: torch.Tensor, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (CHW uint8) and its mask (HW) fitted to the size together: resized so that they
    cover it (the image antialiased, the mask by nearest neighbour, which only copies values, so
    no class is invented) and centre-cropped alike. No border is cropped beyond what the aspect
    ratio needs (a segmentation is scored on the whole image), and nothing is padded."""
    if image_chw.shape[-2:] != mask_hw.shape[-2:]:
        raise ValueError(f"mask size {list(mask_hw.shape[-2:])} differs from image size {list(image_chw.shape[-2:])}")
    if tuple(image_chw.shape[-2:]) == as_shape(size):
        return image_chw, mask_hw
    image = fit_to_size(image_chw, size, crop_fraction=1.0)
    mask = fit_to_size(mask_hw[None], size, crop_fraction=1.0, interpolation=MASK_INTERPOLATION)[0]
    return image, mask


class SegmentationFolder(ImageFiles):
    """Images with index masks. `labels` are all zero (one per image), so `select` takes the first
    images in file order (sorted by stem); `classes` are the given class names. Images decode as
    the image folders' do (ImageFiles: the same decoders, pixel limit and errors)."""

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
        for entry in image_files(images_dir, self.error):
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

    def tracked_files(self) -> list[Path]:
        """The images and their masks."""
        return [*self.files, *self.masks]

    def read_pairs(
        self, indices: list[int], max_pixels: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
        """Images (uint8 HWC), their masks (HW int64, each checked against its image's size) and,
        per image, sha256 of its bytes' and its mask's sha256 joined: every file read once."""
        images, masks, digests = [], [], []
        for i in indices:
            image, image_digest = self._decode(self.files[i], max_pixels)
            mask_raw = self._mask_bytes(self.masks[i])
            masks.append(self._decode_mask(i, mask_raw, (image.shape[1], image.shape[0])))
            images.append(image)
            digests.append(hashlib.sha256((image_digest + hashlib.sha256(mask_raw).hexdigest()).encode()).hexdigest())
        return images, masks, digests

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        """Images (uint8 HWC) and their digests, which cover the masks (the masks are checked too)."""
        images, _, digests = self.read_pairs(indices, max_pixels)
        return images, digests

    def read_batch(
        self, indices: list[int], size: Size, max_pixels: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """uint8 NHWC images and int32 NHW masks, fitted to `size` together (fit_pair); mask pixels
        of the ignore index become IGNORED (-1), so a class index is never mistaken for it."""
        images, masks, digests = self.read_pairs(indices, max_pixels)
        pairs = [fit_pair(image.permute(2, 0, 1), mask, size) for image, mask in zip(images, masks)]
        batch = torch.stack([image for image, _ in pairs]).permute(0, 2, 3, 1).contiguous()
        fitted = torch.stack([mask for _, mask in pairs])
        fitted = torch.where(fitted == self.ignore_index, torch.full_like(fitted, IGNORED), fitted)
        return batch, fitted.to(torch.int32), digests

    def mask_values(self, indices: list[int]) -> list[tuple[Path, torch.Tensor]]:
        """Each mask's distinct values (decoded without its image), for the label check before the pass."""
        found = []
        for i in indices:
            try:
                with PIL.Image.open(io.BytesIO(self._mask_bytes(self.masks[i])), formats=("PNG",)) as picture:
                    values = np.unique(np.asarray(picture)) if picture.mode in MASK_MODES else None
            except DataError:
                raise
            except Exception:
                values = None  # a mask that does not decode is reported, with its reason, when read
            if values is not None:
                found.append((self.masks[i], torch.from_numpy(values.astype(np.int64))))
        return found

    def read_masks(self, indices: list[int], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[torch.Tensor]:
        """The masks (HW int64 class indices) for these indices, each checked against its image."""
        return self.read_pairs(indices, max_pixels)[1]

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

    def _mask_bytes(self, file: Path) -> bytes:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise self.error(f"cannot read mask: {exc.strerror}", file) from None
        if not raw:
            raise self.error("cannot decode mask: the file is empty", file)
        return raw

    def _decode_mask(self, i: int, raw: bytes, image_size: tuple[int, int]) -> torch.Tensor:
        file = self.masks[i]
        try:
            with PIL.Image.open(io.BytesIO(raw), formats=("PNG",)) as picture:
                mode, size = picture.mode, picture.size
                if mode in MASK_MODES:
                    values = np.asarray(picture)
        except Exception as exc:  # Pillow raises many kinds
            raise self.error(
                f"cannot decode mask: corrupt, truncated or not a PNG file ({decoder_message(exc)})", file
            ) from None
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
