"""Folders of image files: `imagefolder` (one sub-folder per class, labels = sorted folder
names) and `imagefolder-flat` (labels parsed from `<anything>_<label>.<ext>` file names).

Decoding is chosen by the file's content, not its name: JPEG data goes to torchvision's
decoder, everything else to Pillow, which reads the first frame only (an animated GIF, WebP, APNG
or multi-page TIFF is never decoded whole: 300 frames of 1000 x 1000 px are 900 MB). Pillow opens
only the formats the suffixes name, and nothing is decoded whose size the header check could not
read: `data.max_pixels` bounds every decode. A symbolic link that leads nowhere, where an image
or a class folder could be, is an error: skipping it would shrink the data set without a word.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import PIL.Image
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from prunegate.data_layout import IMAGE_SUFFIXES
from prunegate.errors import DataError, link_problem
from prunegate.imageio import PIL_FORMATS, decoder_message, pil_decode

from .base import ImageSet, files_key, require_path

_FLAT_LABEL = re.compile(r"_(\d+)$")
_JPEG_MAGIC = b"\xff\xd8\xff"
ErrorFactory = Callable[[str, Path], DataError]  # an ImageSet's `error`: (message, file) -> DataError


def _as_rgb8(image: torch.Tensor) -> torch.Tensor:
    """torchvision's decoders may return [frames, C, H, W] and more than 8 bits: the first
    frame, scaled to 8 bits (kept as uint16, the values would be read as if they were 8-bit ones)."""
    if image.ndim == 4:
        image = image[0]
    if image.dtype != torch.uint8:
        if image.dtype.is_floating_point:
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        else:
            top = {torch.uint16: 65535, torch.int16: 32767, torch.int32: 2**31 - 1}.get(image.dtype, 255)
            image = (image.to(torch.float64) * (255 / top)).round().clamp(0, 255).to(torch.uint8)
    return image


def _entries(folder: Path, error: ErrorFactory) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise error(f"cannot list the folder ({exc.strerror or exc})", folder) from None


def _refuse_dead_link(entry: Path, error: ErrorFactory) -> None:
    """A broken or looping link is neither a file nor a folder, so it would be skipped silently."""
    problem = link_problem(entry)
    if problem:
        raise error(f"{problem}: fix or remove the link (skipping it would leave its images out)", entry)


def image_files(folder: Path, error: ErrorFactory) -> list[Path]:
    """The image files in `folder` (by suffix), sorted; a broken link among them is an error."""
    files = []
    for entry in _entries(folder, error):
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if entry.is_file():
            files.append(entry)
        else:
            _refuse_dead_link(entry, error)
    return files


class ImageFiles(ImageSet):
    """An image set of one file per image (`files`): decoding, digests and the contents key."""

    files: list[Path]

    def tracked_files(self) -> list[Path]:
        """The files whose change changes the set: its images."""
        return self.files

    def sample_name(self, index: int) -> str:
        """The image's file relative to the set's folder ('n01440764/ILSVRC2012_val_00000293.JPEG')."""
        file = self.files[index]
        return file.relative_to(self.path).as_posix() if file.is_relative_to(self.path) else file.name

    def contents_key(self) -> str:
        return files_key(self.tracked_files())

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
        try:
            image = decode_image(raw, file.suffix, max_pixels)
        except UndecodableImage as exc:
            raise self.error(str(exc), file) from None
        return image, hashlib.sha256(raw).hexdigest()


class UndecodableImage(Exception):
    """Why an image's bytes were refused; the reader that read them says from where."""


def decode_image(raw: bytes, suffix: str, max_pixels: int) -> torch.Tensor:
    """HWC uint8 RGB of one image file's bytes, whichever reader found them (a folder's file, a
    shard's member, a Parquet cell), so that the same bytes give the same pixels everywhere.
    `suffix` ('.png') names the format a message says it is not."""
    if not raw:
        raise UndecodableImage("cannot decode image: the file is empty")
    _check_pixels(raw, suffix, max_pixels)
    try:
        if raw.startswith(_JPEG_MAGIC):  # by content: a GIF or PNG named .jpg goes to Pillow too
            image = _as_rgb8(decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB))
        else:
            image = pil_decode(raw)
    except PIL.Image.DecompressionBombError:
        raise UndecodableImage(_too_large(None, max_pixels)) from None
    except Exception as exc:  # decoders raise RuntimeError, ValueError, OSError, SyntaxError, struct.error...
        raise UndecodableImage(_undecodable(suffix, exc)) from None
    if image.ndim != 3 or image.shape[0] != 3 or 0 in image.shape[1:]:
        raise UndecodableImage(f"cannot decode image: decoded to shape {list(image.shape)}, not a 3-channel image")
    height, width = image.shape[1:]
    if height * width > max_pixels:  # the header check may not have known the format
        raise UndecodableImage(_too_large(height * width, max_pixels))
    return image.permute(1, 2, 0)


def _too_large(pixels: int | None, max_pixels: int) -> str:
    if pixels is None:
        # Pillow's bomb check raised, so its limit is set (typed int | None: None turns the check off).
        bomb = 2 * cast(int, PIL.Image.MAX_IMAGE_PIXELS)
        return (
            f"image is too large: over Pillow's decompression-bomb limit of {bomb} "
            f"pixels (data.max_pixels is {max_pixels})"
        )
    return f"image has {pixels} pixels, over the limit of {max_pixels} (data.max_pixels)"


def _undecodable(suffix: str, exc: BaseException) -> str:
    kind = f"a {suffix.lstrip('.').upper()}" if suffix else "an image"  # a Parquet cell has no name
    return f"cannot decode image: corrupt, truncated or not {kind} file ({decoder_message(exc)})"


def _check_pixels(raw: bytes, suffix: str, max_pixels: int) -> None:
    """Only the header is read here (for a GIF, up to its first frame's descriptor, which may
    widen the canvas); decoding a bomb is what this prevents. An image whose size the header
    does not give is not decoded: no decoder would then be bounded by max_pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as header:
                width, height = header.size
    except PIL.Image.DecompressionBombError:
        raise UndecodableImage(_too_large(None, max_pixels)) from None
    except Exception as exc:  # Pillow raises many kinds
        raise UndecodableImage(_undecodable(suffix, exc)) from None
    if width * height > max_pixels:
        raise UndecodableImage(_too_large(width * height, max_pixels))


def read_class_names(path: Path, field: str) -> list[str]:
    """One class name per line, in the model's output order; blank lines and repeats refused."""
    require_path(path, field, directory=False)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the class names as UTF-8 text ({exc})", file=path, field=field) from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DataError(
            "no class names in the file (one per line, in the model's output order)", file=path, field=field
        )
    for number, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"line {number} is blank: every line names a class", file=path, field=field)
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise DataError(f"class {repeated!r} is listed twice", file=path, field=field)
    return names


def _label_of(name: str, class_names: list[str], index: dict[str, int], error: ErrorFactory, where: Path) -> int:
    if name not in index:
        raise error(f"class {name!r} is not in the class_names file ({len(class_names)} names)", where)
    return index[name]


class ImageFolder(ImageFiles):
    format = "imagefolder"

    def __init__(self, path: Path, field: str, class_names: list[str] | None = None):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=True)
        class_dirs = []
        for entry in _entries(path, self.error):
            if entry.is_dir():
                class_dirs.append(entry)
            else:  # any name may be a class folder's
                _refuse_dead_link(entry, self.error)
        if not class_dirs:
            raise self.error("no class sub-folders found (expected <class>/<image> files)")
        self.classes = class_names or [d.name for d in class_dirs]
        index = {name: i for i, name in enumerate(self.classes)}
        self.files, labels = [], []
        for folder in class_dirs:
            if class_names:
                label = _label_of(folder.name, self.classes, index, self.error, folder)
            else:
                label = index[folder.name]
            files = image_files(folder, self.error)
            self.files += files
            labels += [label] * len(files)
        if not self.files:
            raise self.error("no image files in the class sub-folders")
        self.labels = np.asarray(labels, dtype=np.int64)


class FlatImageFolder(ImageFiles):
    """Labels from file names: `<anything>_<label index>.<ext>`, or, with class names, the
    name's prefix before the first '_' (`n01440764_tench.JPEG` -> the index of n01440764)."""

    format = "imagefolder-flat"

    def __init__(self, path: Path, field: str, class_names: list[str] | None = None):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=True)
        self.files = image_files(path, self.error)
        if not self.files:
            raise self.error("no image files found")
        labels = []
        if class_names:
            self.classes = class_names
            index = {name: i for i, name in enumerate(class_names)}
            self.labels = np.asarray(
                [_label_of(f.stem.split("_")[0], class_names, index, self.error, f) for f in self.files], dtype=np.int64
            )
            return
        for file in self.files:
            match = _FLAT_LABEL.search(file.stem)
            if not match:
                raise self.error("file name has no '_<label>' before the extension", file)
            labels.append(int(match.group(1)))
        self.labels = np.asarray(labels, dtype=np.int64)
