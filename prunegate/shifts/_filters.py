"""Spatial filtering shared by the corruption families: batched torch, any device, any size.

Border modes are named as scipy.ndimage names them, because the reference generators mostly
call scipy/skimage; the OpenCV equivalents are noted where the reference uses cv2:
- "nearest": aaa|abcd|ddd  (scipy/skimage default for `gaussian`; cv2 BORDER_REPLICATE)
- "reflect": cba|abcd|dcb  (scipy "reflect", half-sample symmetric; cv2 BORDER_REFLECT)
- "mirror":  dcb|abcd|cba  (scipy "mirror"; cv2 BORDER_REFLECT_101, cv2's default; torch "reflect")
Padding is done by index arithmetic, so a kernel may be wider than the image (the ImageNet-C
elastic transform blurs a 224-px field with a 1025-tap kernel) and still match scipy.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ._color import as_float64


def border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source indices for positions -before .. n-1+after of a length-n axis under `mode`."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        j = i.remainder(2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    if mode == "mirror":
        if n == 1:
            return torch.zeros_like(i)
        j = i.remainder(2 * n - 2)
        return torch.where(j >= n, 2 * n - 2 - j, j)
    raise ValueError(f"unknown border mode {mode!r}")


def pad2d(x: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """Pad the last two dims symmetrically by (pad_h, pad_w) under a scipy border mode."""
    rows = border_index(x.shape[-2], pad_h, pad_h, mode, x.device)
    cols = border_index(x.shape[-1], pad_w, pad_w, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _as_planes(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    shape = x.shape
    return x.reshape(-1, 1, shape[-2], shape[-1]), shape


def correlate_separable(
    x: torch.Tensor, k_rows: torch.Tensor | None, k_cols: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """Correlate every plane of x (..., H, W) with a 1-D kernel along H then along W."""
    planes, shape = _as_planes(x)
    if k_rows is not None and k_rows.numel() > 1:
        r = k_rows.numel() // 2
        planes = F.conv2d(pad2d(planes, r, 0, mode), k_rows.to(planes).view(1, 1, -1, 1))
    if k_cols is not None and k_cols.numel() > 1:
        r = k_cols.numel() // 2
        planes = F.conv2d(pad2d(planes, 0, r, mode), k_cols.to(planes).view(1, 1, 1, -1))
    return planes.reshape(shape)


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """cv2.filter2D: correlation with an odd-sized kernel anchored at its centre, every plane."""
    planes, shape = _as_planes(x)
    kh, kw = kernel.shape
    padded = pad2d(planes, kh // 2, kw // 2, mode)
    return F.conv2d(padded, kernel.to(planes).view(1, 1, kh, kw)).reshape(shape)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps, computed as scipy does: radius int(truncate*sigma + 0.5),
    exp(-0.5 / sigma**2 * x**2) normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 0 or radius == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / (float(sigma) * float(sigma)) * t**2)
    return k / k.sum()


def scipy_correlate1d(x: torch.Tensor, kernel: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """scipy.ndimage.correlate1d with a symmetric kernel, summed in scipy's order
    (x0 * w0, then + (x[-j] + x[+j]) * w[j] for j = r .. 1), so that results which truncate to
    uint8 afterwards fall on the same side as scipy's."""
    r = kernel.numel() // 2
    weights = kernel.tolist()
    n = x.shape[dim]
    padded = x.index_select(dim, border_index(n, r, r, mode, x.device))
    out = padded.narrow(dim, r, n) * weights[r]
    for j in range(r, 0, -1):  # a fixed number of taps
        out = out + (padded.narrow(dim, r - j, n) + padded.narrow(dim, r + j, n)) * weights[r + j]
    return out


def _axis_matrix(n: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """The [n, n] matrix of a 1-D correlation with `kernel` under a border mode."""
    r = kernel.numel() // 2
    src = border_index(n, r, r, mode, torch.device("cpu")).unfold(0, kernel.numel(), 1)  # [n, k]
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)[:, None].expand_as(src)
    m.index_put_((rows, src), kernel.to(torch.float64).expand_as(src), accumulate=True)
    return m


_MATRIX_TAPS = 49  # longer kernels are applied as an [n, n] matrix product instead of a conv


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian / scipy gaussian_filter over the last two dims only
    (skimage's multichannel=True leaves the channel axis alone). Default mode is skimage's.
    Rows first, then columns, as scipy goes through the axes."""
    k = gaussian_kernel1d(sigma, truncate)
    if k.numel() == 1:
        return x
    if k.numel() <= _MATRIX_TAPS:
        return scipy_correlate1d(scipy_correlate1d(x, k, -2, mode), k, -1, mode)
    h, w = x.shape[-2:]
    mh = _axis_matrix(h, k, mode).to(device=x.device, dtype=x.dtype)
    mw = _axis_matrix(w, k, mode).to(device=x.device, dtype=x.dtype)
    return mh @ x @ mw.T


def box_blur(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """cv2.blur(x, (size, size)): normalised box filter, BORDER_REFLECT_101."""
    k = torch.full((size,), 1.0 / size, dtype=torch.float64)
    return correlate_separable(x, k, k, "mirror")


def cv2_gaussian_kernel1d(ksize: int, sigma: float) -> torch.Tensor:
    """cv2.getGaussianKernel(ksize, sigma) for sigma > 0 (computed, not the fixed small tables)."""
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(t**2) / (2.0 * sigma * sigma))
    return k / k.sum()


def shift_gather(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[n, c, y, x] = x[n, c, clamp(y + dy[n]), clamp(x + dx[n])] (edge pixels repeat)."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None]).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None]).clamp(0, w - 1)
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def magick_motion_blur(levels: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage (what the reference calls through Wand) on uint8 levels
    (float 0..255), per-sample angle; returns the uint8 levels it writes back.

    ImageMagick: width = 2*ceil(radius) + 1 taps; tap i has weight exp(-i^2 / (2 sigma^2))
    (normalised; a one-sided half-Gaussian, tap 0 is the pixel itself) and samples the pixel at
    offset (ceil(i cos a - 0.5), ceil(i sin a - 0.5)) in (x, y), y pointing down; pixels outside
    the image take the nearest edge pixel (the default "edge" virtual-pixel method). The sum is
    stored as a 16-bit quantum (rounded) and written to the 8-bit PNG as quantum // 257: that is
    what ImageMagick 6.9 Q16 returns, measured pixel for pixel through Wand.
    """
    if radius <= 0:
        raise ValueError("motion blur radius must be positive (ImageMagick's auto-radius is not needed)")
    width = int(2 * math.ceil(radius) + 1)
    sigma = max(float(sigma), 1e-12)
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2.0 * sigma * sigma))
    weights = (weights / weights.sum()).tolist()
    a = torch.deg2rad(angle_deg.to(torch.float64).reshape(-1))
    cos, sin = torch.cos(a), torch.sin(a)
    x = as_float64(levels)
    out = torch.zeros_like(x)
    for i, weight in enumerate(weights):  # a fixed number of taps, never a loop over images
        ox = torch.ceil(i * cos - 0.5).to(torch.int64)
        oy = torch.ceil(i * sin - 0.5).to(torch.int64)
        out = out + weight * shift_gather(x, oy, ox)
    quantum = torch.floor(out * 257.0 + 0.5).clamp(0, 65535)
    return torch.div(quantum, 257, rounding_mode="floor").to(levels.dtype)


def _zoom_axis_taps(n: int, zoom: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of the reference's `clipped_zoom` as bilinear taps (lo, hi, frac), each [n].

    Reference: crop the centre ceil(n / zoom) samples, scipy.ndimage.zoom(order=1) them to
    round(ch * zoom) samples (scipy maps output o to input o*(ch-1)/(out-1)), then keep the
    centre n samples starting at (out - n) // 2.
    """
    ch = int(math.ceil(n / zoom))
    top = (n - ch) // 2
    out = int(round(ch * zoom))
    trim = (out - n) // 2
    o = torch.arange(trim, trim + n, dtype=torch.float64)
    src = o * ((ch - 1) / (out - 1)) if out > 1 else torch.zeros_like(o)
    lo = src.floor().clamp(0, max(ch - 1, 0))
    frac = src - lo
    hi = (lo + 1).clamp(max=ch - 1)
    return (lo + top).long().to(device), (hi + top).long().to(device), frac.to(device)


def _lerp_axis(x: torch.Tensor, taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor], dim: int) -> torch.Tensor:
    lo, hi, frac = taps
    shape = [1] * x.ndim
    shape[dim] = -1
    f = frac.to(x.dtype).view(shape)
    return x.index_select(dim, lo) * (1 - f) + x.index_select(dim, hi) * f


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The reference's centre crop + bilinear zoom back to the input size, over the last 2 dims
    (per-pixel taps, so every sample is computed alike whatever the batch)."""
    h, w = x.shape[-2:]
    x = _lerp_axis(x, _zoom_axis_taps(h, zoom, x.device), x.ndim - 2)
    return _lerp_axis(x, _zoom_axis_taps(w, zoom, x.device), x.ndim - 1)


def sum_clipped_zooms(x: torch.Tensor, zooms: Sequence[float]) -> torch.Tensor:
    out = torch.zeros_like(x)
    for z in zooms:  # a fixed list from the severity table
        out = out + clipped_zoom(x, z)
    return out
