"""Decoding one image file's bytes: shared by the data readers and the shifts' texture folders.

Neither side owns it, so neither imports the other to decode.
"""

from __future__ import annotations

import io
import re

import numpy as np
import PIL.Image
import torch

# Everything but JPEG is decoded with Pillow: BMP and TIFF, which torchvision's decoder refuses;
# PNG, because torchvision's libpng glue crashes the process (a segmentation fault, not an
# exception) on some damaged PNG files (pytorch/vision#3613, #4485; still so in 0.29: see
# tests/test_fuzz.py); GIF and WebP, because torchvision decodes every frame of an animated one
# (a 0.86 MB GIF took 3.5 GB) where Pillow decodes the first. Pillow opens only these formats
# (whatever a file's suffix, it would otherwise try any of its ~40 readers on the content).
PIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO (multi-picture)


def pil_decode(raw: bytes) -> torch.Tensor:
    """CHW uint8 RGB of the first frame. Pillow's own conversion clips 16-bit grey to 255 (a
    white image): those are scaled to 8 bits here; float images, whose range no header states,
    are refused."""
    with PIL.Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as picture:
        if picture.mode.startswith("I"):  # I;16, I;16B, ... (16-bit) or I (32-bit integers)
            grey = np.asarray(picture, dtype=np.float64)
            if grey.size and (grey.min() < 0 or grey.max() > 65535):
                raise ValueError(f"{picture.mode} pixels outside 0-65535; convert the image to 8 or 16 bits")
            grey = np.clip(np.round(grey * (255 / 65535)), 0, 255).astype(np.uint8)
            rgb = np.repeat(grey[..., None], 3, axis=-1)
        elif picture.mode == "F":
            raise ValueError("floating-point pixels (mode F) have no defined range; convert the image to 8 or 16 bits")
        else:
            rgb = np.array(picture.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


_CPP_LOCATION = re.compile(r"^[\w:()<>~ ]+, \S+\.(?:cpp|h|c):\d+, ")  # "decode_png, /…/decode_png.cpp:62, "


def decoder_message(exc: BaseException) -> str:
    """A decoder's error as one short line, without C++ source locations or object addresses."""
    if isinstance(exc, PIL.UnidentifiedImageError):  # its text names a BytesIO object's address
        return "not a PNG, JPEG, GIF, WebP, BMP or TIFF image"
    text = str(exc).strip()
    line = _CPP_LOCATION.sub("", text.splitlines()[0]) if text else type(exc).__name__
    return line[:200]
