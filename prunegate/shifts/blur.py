"""Blur corruptions: defocus, glass, motion, zoom, gaussian (ImageNet-C / CIFAR-10-C)."""

from __future__ import annotations

import functools
import math

import torch

from ._color import as_float64, to_levels, truncate_uint8
from ._filters import (
    correlate2d_fft,
    correlate2d_taps,
    correlate_separable,
    crop_zero_border,
    cv2_gaussian_kernel1d,
    gaussian_filter,
    magick_motion_blur,
    sum_clipped_zooms,
)
from ._registry import register_shift
from .rng import SampleRNG


@register_shift("gaussian_blur")
def gaussian_blur(x: torch.Tensor, sigma: float, rng: SampleRNG) -> torch.Tensor:
    """skimage.filters.gaussian(x, sigma, multichannel=True): scipy taps, "nearest" borders."""
    return truncate_uint8(gaussian_filter(as_float64(x), sigma))


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's `disk`: a normalised filled disc on a grid of at least 17 x 17, smoothed
    by cv2.GaussianBlur (3 x 3, or 5 x 5 for radius > 8; cv2's default BORDER_REFLECT_101)."""
    if radius <= 8:
        grid, ksize = torch.arange(-8, 9, dtype=torch.float64), 3
    else:
        grid, ksize = torch.arange(-radius, radius + 1, dtype=torch.float64), 5
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(torch.float64)
    disk = (disk / disk.sum()).to(torch.float32)  # the reference's disc is float32, so is its blur
    g = cv2_gaussian_kernel1d(ksize, alias_blur).to(torch.float32)
    return correlate_separable(disk, g, g, "mirror").to(torch.float64)


@functools.lru_cache(maxsize=16)
def _cropped_disk(radius: float, alias_blur: float) -> torch.Tensor:
    return crop_zero_border(disk_kernel(radius, alias_blur))


_DIRECT_TAPS = 25  # discs with at most this many non-zero taps are summed directly, others by FFT


@register_shift("defocus_blur")
def defocus_blur(x: torch.Tensor, param: tuple[float, float], rng: SampleRNG) -> torch.Tensor:
    """cv2.filter2D(x, -1, disk(radius, alias_blur)) per channel (BORDER_REFLECT_101), in float64.

    The disc's zero border is dropped (CIFAR's discs fill 3 x 3 or 5 x 5 of their 17 x 17 grid);
    small discs are summed tap by tap (the same sums, in the same order, as a direct
    convolution), large ones through the FFT (equal to the direct sum within ~1e-15, far below
    what moves a uint8 truncation: no value differed on 500 CIFAR and 50 ImageNet images)."""
    kernel = _cropped_disk(*param)
    x = as_float64(x)
    if int(kernel.ne(0).sum()) <= _DIRECT_TAPS:
        return truncate_uint8(correlate2d_taps(x, kernel, "mirror"))
    return truncate_uint8(correlate2d_fft(x, kernel, "mirror"))


def glass_source_index(rng: SampleRNG, height: int, width: int, delta: int, device: torch.device) -> torch.Tensor:
    """One pass of the reference's pixel "shuffle", as a gather index [N, H*W] into the image.

    The reference visits h = H-delta .. delta+1 and, inside, w = W-delta .. delta+1 (both
    descending), draws dx, dy uniform in [-delta, delta) and runs
    `x[h, w], x[h', w'] = x[h', w'], x[h, w]`. On numpy rows (x[h, w] is a view of 3 values)
    that statement is not a swap: x[h, w] receives x[h', w'] and x[h', w'] keeps its value.
    So a visited pixel p takes the *current* value of q = p + (dy, dx): q's own final value if
    q was visited before p (lower, or same row and to the right), else q's value before the
    pass. That pointer structure is resolved here exactly, in parallel, by pointer jumping:
    the result equals the sequential loop for the same offsets.
    """
    d = int(delta)
    hr, wr = max(height - 2 * d, 0), max(width - 2 * d, 0)
    n_sites = height * width
    ptr = torch.arange(n_sites, device=device).expand(rng.n, n_sites).clone()
    done = torch.ones(rng.n, n_sites, dtype=torch.bool, device=device)
    if hr == 0 or wr == 0:
        return ptr
    offsets = rng.randint(-d, d, 2, hr, wr).to(device)  # the reference draws (dx, dy)
    ph = torch.arange(d + 1, height - d + 1, device=device).view(1, hr, 1)
    pw = torch.arange(d + 1, width - d + 1, device=device).view(1, 1, wr)
    qh, qw = ph + offsets[:, 1], pw + offsets[:, 0]
    visited = (qh >= d + 1) & (qh <= height - d) & (qw >= d + 1) & (qw <= width - d)
    visited_before = visited & ((qh > ph) | ((qh == ph) & (qw > pw)))
    sites = (ph * width + pw).expand(rng.n, hr, wr).reshape(rng.n, -1)
    ptr.scatter_(1, sites, (qh * width + qw).reshape(rng.n, -1))
    done.scatter_(1, sites, ~visited_before.reshape(rng.n, -1))
    # final[s] = cur[ptr[s]] if done[s] else final[ptr[s]]; chains strictly go back in visiting
    # order, so log2(#sites) + 1 doublings resolve every chain; once every site is done, further
    # doublings change nothing, so the loop stops there (chains are short: a few doublings).
    for _ in range(math.ceil(math.log2(n_sites)) + 1):
        if bool(done.all()):
            break
        ptr_next, done_next = ptr.gather(1, ptr), done.gather(1, ptr)
        ptr = torch.where(done, ptr, ptr_next)
        done = done | done_next
    return ptr


@register_shift("glass_blur")
def glass_blur(x: torch.Tensor, param: tuple[float, int, int], rng: SampleRNG) -> torch.Tensor:
    """Blur (sigma), quantise to uint8 (np.uint8: truncation), locally move pixels `iterations`
    times within +-max_delta, blur again."""
    sigma, max_delta, iterations = param
    n, c, h, w = x.shape
    y = as_float64(truncate_uint8(gaussian_filter(as_float64(x), sigma)))
    index = torch.arange(h * w, device=x.device).expand(n, h * w)
    for _ in range(int(iterations)):
        step = glass_source_index(rng, h, w, max_delta, x.device)
        index = index.gather(1, step)  # pass k reads pass k-1's output
    y = y.reshape(n, c, h * w).gather(2, index[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)
    return truncate_uint8(gaussian_filter(y, sigma))


@register_shift("motion_blur")
def motion_blur(x: torch.Tensor, param: tuple[float, float], rng: SampleRNG) -> torch.Tensor:
    """ImageMagick MotionBlurImage(radius, sigma, angle ~ U(-45, 45)) on the uint8 image, read
    back as uint8 (see magick_motion_blur for ImageMagick's quantisation)."""
    radius, sigma = param
    angle = (rng.uniform(1, dtype=torch.float64) * 90.0 - 45.0).to(x.device)
    return (magick_motion_blur(to_levels(x), radius, sigma, angle) / 255.0).to(torch.float32)


@register_shift("zoom_blur")
def zoom_blur(x: torch.Tensor, zooms: tuple[float, ...], rng: SampleRNG) -> torch.Tensor:
    """Average of x and its centre zooms by each factor (bilinear, scipy.ndimage.zoom order=1),
    in float32 as the reference."""
    x = x.to(torch.float32)
    out = sum_clipped_zooms(x, zooms)
    return truncate_uint8((x + out) / (len(zooms) + 1))
