"""Weather corruptions: snow, frost, fog, spatter (ImageNet-C / CIFAR-10-C)."""

from __future__ import annotations

import torch

from ._color import as_float64, as_levels64, rgb_to_gray, truncate_levels, truncate_uint8
from ._cv import canny, chamfer_distance, equalize_hist
from ._filters import box_blur, clipped_zoom, correlate2d, gaussian_filter, magick_motion_blur
from ._registry import register_shift
from .assets import NO_ASSETS, ShiftAssets
from .rng import SampleRNG
from .textures import frost_overlay


def plasma_fractal(rng: SampleRNG, mapsize: int, decay: float, like: torch.Tensor) -> torch.Tensor:
    """The reference's diamond-square height map, [N, mapsize, mapsize] in [0, 1].

    Same recurrence as `plasma_fractal` in the reference: start from 0 at the corner, wibble
    100 divided by `decay` per level, new points = mean of 4 neighbours (wrapping around) plus
    wibble * U(-wibble, wibble); then min-max normalised per image. The uniforms of every level
    and point set come from one draw for the whole batch (a draw per set costs ~35 tensor ops
    whatever its size, and the first levels are tiny).
    """
    m = torch.zeros(rng.n, mapsize, mapsize, device=like.device, dtype=like.dtype)
    step, wibble = mapsize, 100.0
    points = sum(4**level for level in range(mapsize.bit_length() - 1))  # per point set, all levels
    uniforms = rng.uniform(3 * points, dtype=m.dtype).to(m.device)
    used = 0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        nonlocal used
        count = total.shape[1] * total.shape[2]
        u = uniforms[:, used : used + count].view_as(total)
        used += count
        return total / 4 + wibble * (wibble * (2.0 * u - 1.0))

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = wibbled_mean(square)
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    assert used == uniforms.shape[1], "plasma_fractal: every uniform is used exactly once"
    lo = m.amin(dim=(1, 2), keepdim=True)
    m = m - lo
    return m / m.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@register_shift("fog")
def fog(x: torch.Tensor, param: tuple[float, float], rng: SampleRNG) -> torch.Tensor:
    """x + strength * plasma, rescaled by max / (max + strength). The reference's map is 32
    (CIFAR) or 256 (ImageNet) wide: the next power of two of the image size, cropped."""
    strength, decay = param
    h, w = x.shape[-2:]
    x = as_float64(x)
    plasma = plasma_fractal(rng, _next_pow2(max(h, w)), decay, x)[:, None, :h, :w]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return truncate_uint8((x + strength * plasma) * max_val / (max_val + strength))


@register_shift("frost", assets=True)
def frost(
    x: torch.Tensor, param: tuple[float, float, float], rng: SampleRNG, assets: ShiftAssets = NO_ASSETS
) -> torch.Tensor:
    """clip(image_weight * x + frost_weight * frost) in uint8 units. The reference overlays a
    random crop of one of its frost photographs; we overlay a random crop of one of our
    procedural frost photographs (made once per process, at the scale the reference used), or
    of the user's photographs in `assets` (see textures.py)."""
    image_weight, frost_weight, texture_scale = param
    h, w = x.shape[-2:]
    texture = frost_overlay(rng, h, w, texture_scale, x.device, assets.frost_photos)
    levels = image_weight * as_levels64(x) + frost_weight * as_float64(texture)  # uint8 units
    return truncate_levels(levels)


@register_shift("snow")
def snow(x: torch.Tensor, param: tuple[float, ...], rng: SampleRNG) -> torch.Tensor:
    """Flakes: N(loc, scale) noise, centre-zoomed, thresholded, stored as uint8, streaked by an
    ImageMagick motion blur at U(-135, -45) degrees and read back as uint8; the image is
    brightened towards 1.5 * grey + 0.5, then the flakes and their 180-degree rotation are added."""
    loc, scale, zoom, threshold, radius, sigma, blend = param
    h, w = x.shape[-2:]
    x = x.to(torch.float32)  # the reference works on np.float32 images here
    flakes = loc + scale * as_float64(rng.normal(1, h, w, dtype=torch.float64).to(x.device))
    flakes = clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = torch.floor(flakes.clamp(0.0, 1.0) * 255.0)  # (... * 255).astype(np.uint8)
    angle = (rng.uniform(1, dtype=torch.float64) * 90.0 - 135.0).to(x.device)
    flakes = magick_motion_blur(flakes, radius, sigma, angle) / 255.0
    lifted = torch.maximum(x, rgb_to_gray(x) * 1.5 + 0.5)
    x = blend * x + (1.0 - blend) * lifted
    return truncate_uint8(x.to(flakes.dtype) + flakes + flakes.flip(-2, -1))


# cv2.filter2D kernel the reference applies to the equalised distance map (an emboss).
_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
_WATER = (175 / 255.0, 238 / 255.0, 238 / 255.0)  # pale turquoise, added to R, G, B
_MUD = (63 / 255.0, 42 / 255.0, 20 / 255.0)  # mud brown


def _water_mask(liquid: torch.Tensor) -> torch.Tensor:
    """The reference's cv2 chain that turns the liquid layer into shaded water drops."""
    levels = torch.floor(liquid.clamp(0.0, 1.0) * 255.0)  # (liquid * 255).astype(np.uint8)
    edges = canny(levels, 50, 150)
    dist = chamfer_distance(edges, 20.0)  # distanceTransform(255 - edges) + THRESH_TRUNC 20
    dist = torch.floor(box_blur(dist) + 1e-4)  # cv2.blur, then .astype(np.uint8)
    dist = equalize_hist(dist)
    dist = correlate2d(dist, _EMBOSS, "mirror").round().clamp(0, 255)  # ddepth CV_8U saturates
    dist = box_blur(dist).round()  # cv2.blur on uint8 rounds
    m = levels * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp(min=1e-12), torch.zeros_like(m))


@register_shift("spatter")
def spatter(x: torch.Tensor, param: tuple[float, ...], rng: SampleRNG) -> torch.Tensor:
    """Liquid layer N(loc, scale) blurred (sigma) and thresholded; `mud` picks the branch as the
    reference's table does: water (0) adds pale turquoise drops shaded by an emboss of their
    distance map; mud (1) paints opaque brown blobs."""
    loc, scale, sigma, threshold, intensity, mud = param
    h, w = x.shape[-2:]
    x = x.to(torch.float32)  # the reference works on np.float32 images here
    liquid = loc + scale * as_float64(rng.normal(1, h, w, dtype=torch.float64).to(x.device))
    liquid = gaussian_filter(liquid, sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if not mud:
        m = _water_mask(liquid).to(torch.float32) * intensity
        color = torch.tensor(_WATER, device=x.device).view(1, 3, 1, 1)
        return truncate_uint8(x + m * color)
    m = gaussian_filter((liquid > threshold).to(liquid.dtype), intensity)
    m = torch.where(m < 0.8, torch.zeros_like(m), m).to(torch.float32)
    color = torch.tensor(_MUD, device=x.device).view(1, 3, 1, 1)
    return truncate_uint8(x * (1.0 - m) + color * m)
