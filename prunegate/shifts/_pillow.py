"""Pillow for the corruptions whose reference is a Pillow call (JPEG, BOX resizing).

On the CPU, Pillow's C code on each uint8 image is several times faster than the tensor
version of the same arithmetic (_jpeg.py, digital.pil_box_resize) on ImageNet-sized images, and
is the reference itself; on small images (CIFAR) its per-image overhead makes it slower. On a
GPU the tensor version always runs. Tests hold the two equal.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

# Measured on 2 CPU cores (bench/RESULTS.md, session 3): at 224 px Pillow is 2.3x (pixelate) and
# 5.7x (JPEG) faster than the tensor version; at 32 px 2-2.7x slower.
MIN_PIXELS = 64 * 64


def use_pillow(x: torch.Tensor) -> bool:
    """Whether a batch like x is faster through Pillow: on the CPU, images of MIN_PIXELS or more."""
    return x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= MIN_PIXELS


def map_images(levels: torch.Tensor, op: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    """Apply `op` to each image of CPU uint8 levels [N, 3, H, W] (float 0..255); same format back."""
    arrays = levels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    out = np.stack([np.asarray(op(Image.fromarray(a))) for a in arrays])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(levels.dtype)


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    """img.save(buf, "JPEG", quality=quality), decoded again: the reference's JPEG round trip."""

    def roundtrip(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        decoded = Image.open(buf)
        decoded.load()
        return decoded

    return roundtrip


def box_resize_and_back(height: int, width: int) -> Callable[[Image.Image], Image.Image]:
    """img.resize((width, height), BOX).resize(original size, BOX): the reference's pixelate."""

    def pixelate(img: Image.Image) -> Image.Image:
        return img.resize((width, height), Image.Resampling.BOX).resize(img.size, Image.Resampling.BOX)

    return pixelate
