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

import functools
import math
from collections.abc import Sequence

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


def _smooth_size(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (a fast FFT length)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def crop_zero_border(kernel: torch.Tensor) -> torch.Tensor:
    """Drop the all-zero outer rows and columns of an odd kernel symmetrically, keeping it odd
    and centred: zero taps add exact zeros, so the correlation is the same."""
    kh, kw = kernel.shape
    nz = kernel.ne(0)
    rows, cols = nz.any(dim=1).nonzero().flatten(), nz.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return kernel[kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1]
    rh = max(kh // 2 - int(rows[0]), int(rows[-1]) - kh // 2)
    rw = max(kw // 2 - int(cols[0]), int(cols[-1]) - kw // 2)
    return kernel[kh // 2 - rh : kh // 2 + rh + 1, kw // 2 - rw : kw // 2 + rw + 1]


@functools.lru_cache(maxsize=32)
def _kernel_spectrum(
    taps: tuple[float, ...], kh: int, kw: int, nh: int, nw: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """rfft2 of the [kh, kw] kernel laid out for a circular *correlation* on an nh x nw grid:
    tap (a, b) (offsets from the centre) at ((-a) mod nh, (-b) mod nw). Made in float64."""
    k = torch.tensor(taps, dtype=torch.float64).view(kh, kw)
    grid = torch.zeros(nh, nw, dtype=torch.float64)
    rows = (-(torch.arange(kh) - kh // 2)).remainder(nh)
    cols = (-(torch.arange(kw) - kw // 2)).remainder(nw)
    grid[rows[:, None], cols[None, :]] = k
    spec = torch.fft.rfft2(grid)
    return spec.to(torch.complex64 if dtype == torch.float32 else spec.dtype).to(device)


def correlate2d_fft(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """correlate2d for large kernels through the FFT, in x's precision (float64 but on Apple
    GPUs): pad by at least the kernel radius under `mode` (up to a fast FFT length), correlate
    circularly, keep the valid part (no wrap-around reaches it). Equal to the direct sum up to
    rounding (float64: ~1e-15)."""
    planes, shape = _as_planes(x)
    h, w = planes.shape[-2:]
    kh, kw = kernel.shape
    nh, nw = _smooth_size(h + 2 * (kh // 2)), _smooth_size(w + 2 * (kw // 2))
    top, left = kh // 2, kw // 2
    padded = _pad_asym(planes, top, nh - h - top, left, nw - w - left, mode)
    taps = tuple(kernel.to(torch.float64).flatten().tolist())
    spec = _kernel_spectrum(taps, kh, kw, nh, nw, x.device, x.dtype)
    full = torch.fft.irfft2(torch.fft.rfft2(padded) * spec, s=(nh, nw))
    return full[:, :, top : top + h, left : left + w].reshape(shape)


def _pad_asym(planes: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad [P, 1, H, W] planes under a scipy border mode; F.pad's C++ kernels where they apply
    ("mirror" is torch's "reflect", "nearest" its "replicate"), index arithmetic otherwise."""
    h, w = planes.shape[-2:]
    torch_mode = {"mirror": "reflect", "nearest": "replicate"}.get(mode)
    if torch_mode is not None and (torch_mode == "replicate" or max(top, bottom) < h and max(left, right) < w):
        return F.pad(planes, (left, right, top, bottom), mode=torch_mode)
    rows = border_index(h, top, bottom, mode, planes.device)
    cols = border_index(w, left, right, mode, planes.device)
    return planes[:, :, rows[:, None], cols[None, :]]


def correlate2d_taps(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """correlate2d as a sum of shifted planes, one multiply-add per non-zero tap (row-major):
    for small kernels on many small planes, where conv2d's float64 path is slow."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    padded = pad2d(x, kh // 2, kw // 2, mode)
    out = None
    for (i, j), weight in zip(kernel.nonzero().tolist(), kernel[kernel.ne(0)].tolist()):
        term = padded[..., i : i + h, j : j + w] * weight
        out = term if out is None else out + term
    return out if out is not None else torch.zeros_like(x)


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
    padded = pad_axis(x, dim, r, r, mode)
    out = padded.narrow(dim, r, n) * weights[r]
    for j in range(r, 0, -1):  # a fixed number of taps
        pair = padded.narrow(dim, r - j, n) + padded.narrow(dim, r + j, n)
        out += pair.mul_(weights[r + j])  # out + (x[-j] + x[+j]) * w[j], rounded as written
    return out


def pad_axis(x: torch.Tensor, dim: int, before: int, after: int, mode: str) -> torch.Tensor:
    """x padded along `dim` under a scipy border mode: edge slices (flipped or repeated) where
    the pad is shorter than the axis, index arithmetic otherwise. Same values either way."""
    n = x.shape[dim]
    dim = dim % x.ndim
    if mode in ("nearest", "reflect", "mirror") and max(before, after) <= n - 1 and before + after > 0:
        size = list(x.shape)
        if mode == "nearest":
            size[dim] = before
            head = x.narrow(dim, 0, 1).expand(size)
            size[dim] = after
            tail = x.narrow(dim, n - 1, 1).expand(size)
        elif mode == "reflect":
            head, tail = x.narrow(dim, 0, before).flip(dim), x.narrow(dim, n - after, after).flip(dim)
        else:
            head, tail = x.narrow(dim, 1, before).flip(dim), x.narrow(dim, n - 1 - after, after).flip(dim)
        return torch.cat([head, x, tail], dim)
    return x.index_select(dim, border_index(n, before, after, mode, x.device))


@functools.lru_cache(maxsize=8)  # the presets need 1 (elastic_transform's sigma at 224 px)
def _gaussian_axis_matrix(n: int, sigma: float, truncate: float, mode: str, device: torch.device) -> torch.Tensor:
    """_axis_matrix of gaussian_kernel1d(sigma, truncate), float64 on `device`, made once."""
    return _axis_matrix(n, gaussian_kernel1d(sigma, truncate), mode).to(device)


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
    mh = _gaussian_axis_matrix(h, float(sigma), float(truncate), mode, x.device).to(x.dtype)
    mw = _gaussian_axis_matrix(w, float(sigma), float(truncate), mode, x.device).to(x.dtype)
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


class ShiftedRuns:
    """shift_gather for many shifts of one batch, each by at most `reach` pixels: the batch is
    edge-padded once, and a shift is one index_select of whole W-long runs out of an
    overlapping strided view of the padding (one index per image row, not per pixel)."""

    def __init__(self, x: torch.Tensor, reach: int):
        self.shape = x.shape
        self.reach = reach
        padded = F.pad(x, (reach, reach, reach, reach), mode="replicate") if reach else x.contiguous()
        self.flat = padded.flatten()
        n, c, h, w = x.shape
        self.wp, self.hp = w + 2 * reach, h + 2 * reach
        self.runs = torch.as_strided(self.flat, (self.flat.numel() - w + 1, w), (1, 1))
        planes = torch.arange(n * c, device=x.device).view(n, c, 1) * (self.hp * self.wp)
        self.row_starts = planes + (torch.arange(h, device=x.device) + reach).view(1, 1, h) * self.wp + reach

    def __call__(self, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """out[n, c, y, x] = x[n, c, clamp(y + dy[n]), clamp(x + dx[n])], |dy|, |dx| <= reach."""
        dy, dx = dy.clamp(-self.reach, self.reach), dx.clamp(-self.reach, self.reach)
        starts = self.row_starts + (dy * self.wp + dx).view(-1, 1, 1)
        return self.runs.index_select(0, starts.flatten()).view(self.shape)


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
    gaussian = torch.exp(-(taps**2) / (2.0 * sigma * sigma))
    weights = (gaussian / gaussian.sum()).tolist()
    a = torch.deg2rad(angle_deg.to(torch.float64).reshape(-1))
    cos, sin = torch.cos(a), torch.sin(a)
    x = as_float64(levels)
    shifts = ShiftedRuns(x, width - 1)
    out = torch.zeros_like(x)
    for i, weight in enumerate(weights):  # a fixed number of taps, never a loop over images
        ox = torch.ceil(i * cos - 0.5).to(torch.int64)
        oy = torch.ceil(i * sin - 0.5).to(torch.int64)
        out += shifts(oy, ox).mul_(weight)  # out + weight * shifted, rounded as written
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
    """sum of clipped_zoom(x, z) over the zooms, in order, with the same arithmetic; the column
    pass runs on the transposed rows pass (selecting whole rows is far cheaper than gathering
    single values), and the sum is transposed back once."""
    h, w = x.shape[-2:]
    out_t = torch.zeros_like(x.transpose(-1, -2)).contiguous()
    for z in zooms:  # a fixed list from the severity table
        rows = _lerp_axis(x, _zoom_axis_taps(h, z, x.device), x.ndim - 2)
        out_t = out_t + _lerp_axis(rows.transpose(-1, -2).contiguous(), _zoom_axis_taps(w, z, x.device), x.ndim - 2)
    return out_t.transpose(-1, -2)
