"""Digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression,
saturate (ImageNet-C / CIFAR-10-C)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import _pillow
from ._color import as_float64, hsv_to_rgb, rgb_to_hsv, to_levels, truncate_uint8
from ._filters import gaussian_filter
from ._jpeg import jpeg_roundtrip
from ._registry import register_shift
from .rng import SampleRNG


@register_shift("brightness")
def brightness(x: torch.Tensor, shift: float, rng: SampleRNG) -> torch.Tensor:
    """HSV round trip (skimage's), V + shift clipped to [0, 1]."""
    hsv = rgb_to_hsv(as_float64(x))
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + shift).clamp(0.0, 1.0)], dim=1)
    return truncate_uint8(hsv_to_rgb(hsv))


@register_shift("saturate")
def saturate(x: torch.Tensor, param: tuple[float, float], rng: SampleRNG) -> torch.Tensor:
    """HSV round trip (skimage's), S * scale + shift clipped to [0, 1]. Grey pixels have hue 0
    in skimage, so a positive shift tints them red, as in the reference."""
    scale, shift = param
    hsv = rgb_to_hsv(as_float64(x))
    s = (hsv[:, 1:2] * scale + shift).clamp(0.0, 1.0)
    return truncate_uint8(hsv_to_rgb(torch.cat([hsv[:, :1], s, hsv[:, 2:]], dim=1)))


@register_shift("contrast")
def contrast(x: torch.Tensor, factor: float, rng: SampleRNG) -> torch.Tensor:
    """(x - mean) * factor + mean, with each channel's own spatial mean."""
    x = as_float64(x)
    means = x.mean(dim=(2, 3), keepdim=True)
    return truncate_uint8((x - means) * factor + means)


@register_shift("jpeg_compression")
def jpeg_compression(x: torch.Tensor, quality: int, rng: SampleRNG) -> torch.Tensor:
    """PIL JPEG save at `quality` and decode: Pillow itself for large images on the CPU,
    otherwise _jpeg.py's tensor version (the same pixels)."""
    if _pillow.use_pillow(x):
        return _pillow.map_images(to_levels(x), _pillow.jpeg(quality)) / 255.0
    return jpeg_roundtrip(to_levels(x), quality) / 255.0


_PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


@functools.lru_cache(maxsize=64)
def _pil_box_weights(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's BOX resampling coefficients for one axis, as its 8-bit fixed-point integers.

    Pillow (Resample.c precompute_coeffs): scale = in / out, support = 0.5 * max(scale, 1);
    output pixel i is centred at (i + 0.5) * scale and takes input pixels xmin..xmax-1 whose
    box(x) = 1 for -0.5 < x <= 0.5 test passes, normalised, then rounded to 22-bit integers.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = [1.0 if -0.5 < (j - center + 0.5) / filterscale <= 0.5 else 0.0 for j in range(xmin, xmax)]
        total = sum(taps)
        for j, t in zip(range(xmin, xmax), taps):
            k = t / total if total else t
            weights[i, j] = int(0.5 + k * (1 << _PIL_PRECISION_BITS))
    return weights


def _pil_resample_axis(levels: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One Pillow resampling pass along `dim` (-1: horizontal, -2: vertical) on uint8 levels:
    fixed-point sums, + 2**21, >> 22, clipped to 0..255."""
    w = _pil_box_weights(levels.shape[dim], out_size).to(levels.device)
    v = levels.to(torch.float64).movedim(dim, -1)
    acc = v @ w.T + float(1 << (_PIL_PRECISION_BITS - 1))  # exact: integers below 2**53
    out = torch.floor(acc / float(1 << _PIL_PRECISION_BITS)).clamp(0, 255)
    return out.movedim(-1, dim).to(levels.dtype)


def pil_box_resize(levels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image.resize((width, height), Image.BOX) on uint8 levels: horizontal pass, then
    vertical, each rounded to uint8 as Pillow does."""
    if levels.shape[-1] != width:
        levels = _pil_resample_axis(levels, width, -1)
    if levels.shape[-2] != height:
        levels = _pil_resample_axis(levels, height, -2)
    return levels


@register_shift("pixelate")
def pixelate(x: torch.Tensor, factor: float, rng: SampleRNG) -> torch.Tensor:
    """PIL BOX resize to int(size * factor), then BOX resize back: Pillow itself for large
    images on the CPU, otherwise pil_box_resize (the same pixels)."""
    h, w = x.shape[-2:]
    if _pillow.use_pillow(x):
        return _pillow.map_images(to_levels(x), _pillow.box_resize_and_back(int(h * factor), int(w * factor))) / 255.0
    small = pil_box_resize(to_levels(x), int(h * factor), int(w * factor))
    return pil_box_resize(small, h, w) / 255.0


def _affine_source_coords(rng: SampleRNG, h: int, w: int, jitter: float, device: torch.device) -> torch.Tensor:
    """The reference's random affine, as source (x, y) pixel coordinates [N, H, W, 2].

    Three float32 control points around the centre (built from shape (h, w) and read by cv2 as
    (x, y), exactly as the reference does) move by float32 U(-jitter, jitter);
    cv2.getAffineTransform maps old points to new, and cv2.warpAffine inverts that map and
    evaluates it in fixed point: 1/1024 steps rounded, then floored to its 1/32-pixel grid
    (INTER_BITS = 5), with the 1/64 rounding offset it adds for bilinear interpolation.
    """
    cy, cx = float(h // 2), float(w // 2)
    sq = float(min(h, w) // 3)
    src = torch.tensor([[cy + sq, cx + sq], [cy + sq, cx - sq], [cy - sq, cx - sq]], device=device)  # float32
    noise = rng.uniform(3, 2, dtype=torch.float64).to(device)
    dst = (src + ((2.0 * noise - 1.0) * jitter).to(torch.float32)).to(torch.float64)
    ones = torch.ones(rng.n, 3, 1, dtype=torch.float64, device=device)
    fwd = torch.linalg.solve(torch.cat([src.to(torch.float64).expand(rng.n, 3, 2), ones], dim=2), dst)  # [N, 3, 2]
    m0, m1, m2 = fwd[:, 0, 0], fwd[:, 1, 0], fwd[:, 2, 0]  # x' = m0 x + m1 y + m2
    m3, m4, m5 = fwd[:, 0, 1], fwd[:, 1, 1], fwd[:, 2, 1]  # y' = m3 x + m4 y + m5
    det = m0 * m4 - m1 * m3
    inv_det = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    a11, a22, a12, a21 = m4 * inv_det, m0 * inv_det, -m1 * inv_det, -m3 * inv_det  # invertAffineTransform
    b1, b2 = -a11 * m2 - a12 * m5, -a21 * m2 - a22 * m5
    xs = torch.arange(w, dtype=torch.float64, device=device)[None, None, :]
    ys = torch.arange(h, dtype=torch.float64, device=device)[None, :, None]
    view = (-1, 1, 1)
    fx = torch.round(a12.view(view) * ys * 1024 + b1.view(view) * 1024) + 16 + torch.round(a11.view(view) * xs * 1024)
    fy = torch.round(a22.view(view) * ys * 1024 + b2.view(view) * 1024) + 16 + torch.round(a21.view(view) * xs * 1024)
    return torch.stack([torch.floor(fx / 32.0), torch.floor(fy / 32.0)], dim=-1) / 32.0


def _sample(x: torch.Tensor, coords: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear sampling at pixel coordinates (x, y) with reflection: align_corners=True gives
    cv2's BORDER_REFLECT_101, False gives scipy's mode="reflect" (half-sample symmetric)."""
    h, w = x.shape[-2:]
    size = torch.tensor([w, h], dtype=coords.dtype, device=coords.device)
    if align_corners:
        norm = coords * 2.0 / (size - 1).clamp(min=1) - 1.0
    else:
        norm = (2.0 * coords + 1.0) / size - 1.0
    return F.grid_sample(x, norm.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=align_corners)


@register_shift("elastic_transform")
def elastic_transform(x: torch.Tensor, param: tuple[float, float, float], rng: SampleRNG) -> torch.Tensor:
    """Random affine warp (cv2.warpAffine, BORDER_REFLECT_101), then displacement by
    alpha * gaussian(U(-1, 1), sigma, mode="reflect", truncate=3) fields, bilinear
    (scipy map_coordinates order=1, mode="reflect")."""
    alpha, sigma, jitter = param
    n, c, h, w = x.shape
    x = x.to(torch.float32)  # cv2.warpAffine on the reference's float32 image
    affine = _affine_source_coords(rng, h, w, jitter, x.device)
    warped = _sample(x, affine.to(torch.float32), align_corners=True)
    dx, dy = (rng.uniform(h, w, dtype=torch.float64).to(x.device) for _ in range(2))  # dx first
    fields = 2.0 * torch.stack([dx, dy], dim=1) - 1.0
    fields = gaussian_filter(as_float64(fields), sigma, mode="reflect", truncate=3.0) * alpha
    fields = fields.to(torch.float32).to(fields.dtype)  # the reference's .astype(np.float32)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=x.device),
        torch.arange(w, dtype=torch.float64, device=x.device),
        indexing="ij",
    )
    coords = torch.stack([xs + fields[:, 0], ys + fields[:, 1]], dim=-1)
    # map_coordinates interpolates in double and stores float32
    out = _sample(as_float64(warped), as_float64(coords), align_corners=False).to(torch.float32)
    return truncate_uint8(out)
