"""Pixel-level helpers: uint8 quantisation as the reference does it, HSV, grey."""

from __future__ import annotations

import torch


def as_levels64(x: torch.Tensor) -> torch.Tensor:
    """The reference's np.array(img): uint8 levels in float64, exact integers for values within
    float32 error of a level (float32 k/255 times 255 is not exactly k)."""
    if x.device.type == "mps":  # no float64 on Apple GPUs
        return x.to(torch.float32) * 255.0
    levels = x.to(torch.float64) * 255.0
    nearest = torch.round(levels)
    return torch.where((levels - nearest).abs() < 1e-3, nearest, levels)


def as_float64(x: torch.Tensor) -> torch.Tensor:
    """Work in float64 where the reference does (numpy's default), starting from the values the
    reference computes (np.array(img) / 255.), so that the final uint8 truncation lands on the
    same side as the reference's. The cost is small next to a model's forward pass."""
    return as_levels64(x) / 255.0


# A value that is mathematically an integer k must not truncate to k - 1 because of our own
# rounding error (float64: ~1e-12 levels; float32: ~1e-5), so truncation looks slightly up.
_SLACK = {torch.float64: 0.0, torch.float32: 1e-4}


def truncate_uint8(x: torch.Tensor) -> torch.Tensor:
    """`np.uint8(np.clip(x, 0, 1) * 255) / 255` as float32: the reference saves every corrupted
    image with np.uint8(...), which truncates (it does not round)."""
    slack = _SLACK.get(x.dtype, 1e-3)
    return (torch.floor(x.clamp(0.0, 1.0) * 255.0 + slack) / 255.0).to(torch.float32)


def truncate_levels(levels: torch.Tensor) -> torch.Tensor:
    """`np.uint8(np.clip(v, 0, 255)) / 255` as float32, for results computed in 0..255 units."""
    slack = _SLACK.get(levels.dtype, 1e-3)
    return (torch.floor(levels.clamp(0.0, 255.0) + slack) / 255.0).to(torch.float32)


def round_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest uint8 level, as float32."""
    return (torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0).to(torch.float32)


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] image -> its uint8 levels 0..255 as float (the reference's PIL input)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """cv2.cvtColor(RGB2GRAY) on float images: 0.299 R + 0.587 G + 0.114 B, shape [N, 1, H, W]."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """skimage.color.rgb2hsv on NCHW: H, S, V in [0, 1].

    Where several channels share the maximum, skimage's later assignments win, so blue beats
    green beats red; grey pixels (max == min) get hue 0 and saturation 0.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(dim=1).values
    delta = v - x.min(dim=1).values
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    s = torch.where(flat, torch.zeros_like(delta), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb on NCHW (sector i = floor(6h) picks the channel order)."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    hi = torch.floor(h * 6.0)
    f = h * 6.0 - hi
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    sector = torch.remainder(hi, 6).to(torch.int64)
    # rows: sector 0..5; columns: which of (v, t, p, q) goes to R, G, B
    choices = torch.stack([v, t, p, q], dim=1)  # [N, 4, H, W]
    order = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]], device=hsv.device)
    idx = order[sector].permute(0, 3, 1, 2)  # [N, 3, H, W]
    return choices.gather(1, idx)
