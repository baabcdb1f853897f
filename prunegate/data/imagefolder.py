"""Folders of image files: `imagefolder` (one sub-folder per class, labels = sorted folder
names) and `imagefolder-flat` (labels parsed from `<anything>_<label>.<ext>` file names)."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision.io import ImageReadMode, decode_image

from .base import ImageSet, require_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_FLAT_LABEL = re.compile(r"_(\d+)$")
_PIL_ONLY = {".bmp", ".tif", ".tiff"}  # listed above, but torchvision's decoder refuses them


def _pil_decode(raw: bytes) -> torch.Tensor:
    with PIL.Image.open(io.BytesIO(raw)) as picture:
        rgb = np.array(picture.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class _Files(ImageSet):
    files: list[Path]

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        images, digests = [], []
        for i in indices:
            image, digest = self._decode(self.files[i], max_pixels)
            images.append(image)
            digests.append(digest)
        return images, digests

    def _decode(self, file: Path, max_pixels: int) -> tuple[torch.Tensor, str]:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise self.error(f"cannot read image: {exc.strerror}", file) from None
        self._check_pixels(file, max_pixels)
        try:
            if file.suffix.lower() in _PIL_ONLY:
                image = _pil_decode(raw)
            else:
                image = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError, OSError, SyntaxError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.error(f"cannot decode image ({first_line})", file) from None
        return image.permute(1, 2, 0), hashlib.sha256(raw).hexdigest()

    def _check_pixels(self, file: Path, max_pixels: int) -> None:
        # Only the header is read here; decoding a bomb is what this prevents.
        try:
            with PIL.Image.open(file) as header:
                width, height = header.size
        except PIL.Image.DecompressionBombError:
            raise self.error(f"image too large (over {max_pixels} pixels)", file) from None
        except (OSError, ValueError, SyntaxError):
            return  # not PIL-readable: the decoder will say what is wrong
        if width * height > max_pixels:
            raise self.error(f"image has {width * height} pixels, over the limit of {max_pixels}", file)


class ImageFolder(_Files):
    format = "imagefolder"

    def __init__(self, path: Path, field: str):
        super().__init__(path, field)
        require_path(path, field, directory=True)
        class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
        if not class_dirs:
            raise self.error("no class sub-folders found (expected <class>/<image> files)")
        self.classes = [d.name for d in class_dirs]
        self.files, labels = [], []
        for label, folder in enumerate(class_dirs):
            files = _image_files(folder)
            self.files += files
            labels += [label] * len(files)
        if not self.files:
            raise self.error("no image files in the class sub-folders")
        self.labels = np.asarray(labels, dtype=np.int64)

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes}


class FlatImageFolder(_Files):
    format = "imagefolder-flat"

    def __init__(self, path: Path, field: str):
        super().__init__(path, field)
        require_path(path, field, directory=True)
        self.files = _image_files(path)
        if not self.files:
            raise self.error("no image files found")
        labels = []
        for file in self.files:
            match = _FLAT_LABEL.search(file.stem)
            if not match:
                raise self.error("file name has no '_<label>' before the extension", file)
            labels.append(int(match.group(1)))
        self.labels = np.asarray(labels, dtype=np.int64)
