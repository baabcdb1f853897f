"""Blur corruptions against independent numpy/scipy implementations of the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from prunegate.shifts import SampleRNG, corrupt, get_preset
from prunegate.shifts.blur import glass_source_index

KEY = 31


def images(n: int = 2, size: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bicubic")
    x = smooth + 0.15 * torch.rand(n, 3, size, size, generator=g)
    x[:, :, : size // 4, : size // 4] = 1.0
    return (x.clamp(0, 1) * 255).round() / 255


def as_hwc64(x: torch.Tensor) -> np.ndarray:
    """The reference's view of a sample: np.array(img) / 255. (float64, HWC)."""
    return np.round(x.numpy().astype(np.float64) * 255).transpose(0, 2, 3, 1) / 255


def to_uint8(v: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(v, 0, 1) * 255)


def ours(x: torch.Tensor, name: str, severity: int, preset: str) -> np.ndarray:
    y = corrupt(x, name, severity, SampleRNG(KEY, torch.arange(len(x))), preset)
    return np.round(y.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def assert_close_uint8(a: np.ndarray, b: np.ndarray, exact: float = 0.999) -> None:
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= exact, (diff.max(), (diff == 0).mean())


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 1), ("cifar10-c", 5), ("imagenet-c", 2)])
def test_gaussian_blur_is_scipy_gaussian_filter(preset: str, severity: int) -> None:
    x = images()
    sigma = get_preset(preset).param("gaussian_blur", severity)
    ref = to_uint8(ndimage.gaussian_filter(as_hwc64(x), sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0))
    assert_close_uint8(ours(x, "gaussian_blur", severity, preset), ref)


def reference_disk(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's disk(): a float32 disc, blurred by a (3 or 5)-tap cv2 Gaussian with
    BORDER_REFLECT_101 (scipy's "mirror")."""
    grid, ksize = (np.arange(-8, 9), 3) if radius <= 8 else (np.arange(-radius, radius + 1), 5)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= disk.sum()
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g = (g / g.sum()).astype(np.float32)
    disk = ndimage.correlate1d(ndimage.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    return disk.astype(np.float64)


@pytest.mark.parametrize(
    ("preset", "severity"), [("cifar10-c", 3), ("cifar10-c", 5), ("imagenet-c", 1), ("imagenet-c", 5)]
)
def test_defocus_blur_is_a_disc_filter(preset: str, severity: int) -> None:
    x = images(size=32)
    radius, alias = get_preset(preset).param("defocus_blur", severity)
    kernel = reference_disk(radius, alias)
    ref = np.stack([ndimage.correlate(img, kernel[..., None], mode="mirror") for img in as_hwc64(x)])
    assert_close_uint8(ours(x, "defocus_blur", severity, preset), to_uint8(ref))


def magick_motion_blur_numpy(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's documented MotionBlurImage on a uint8 HWC image: a one-sided Gaussian line
    kernel of 2*ceil(radius)+1 taps along `angle`, edge pixels repeated, 16-bit quantum, // 257."""
    h, w = img.shape[:2]
    width = int(2 * math.ceil(radius) + 1)
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma * sigma))
    k /= k.sum()
    out = np.zeros(img.shape)
    a = math.radians(angle)
    for i in range(width):
        ox, oy = math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5)
        rows = np.clip(np.arange(h) + oy, 0, h - 1)
        cols = np.clip(np.arange(w) + ox, 0, w - 1)
        out += k[i] * img[rows][:, cols]
    return np.floor(np.floor(out * 257 + 0.5) / 257)


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 1), ("imagenet-c", 5)])
def test_motion_blur_is_imagemagick_line_kernel(preset: str, severity: int) -> None:
    x = images(size=32)
    radius, sigma = get_preset(preset).param("motion_blur", severity)
    angles = SampleRNG(KEY, torch.arange(2)).uniform(1, dtype=torch.float64)[:, 0].numpy() * 90 - 45
    ref = np.stack([magick_motion_blur_numpy(img * 255, radius, sigma, a) for img, a in zip(as_hwc64(x), angles)])
    np.testing.assert_array_equal(ours(x, "motion_blur", severity, preset), ref.astype(np.uint8))


def clipped_zoom_scipy(img: np.ndarray, z: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = ndimage.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim : trim + h, trim : trim + h]


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 1), ("imagenet-c", 5)])
def test_zoom_blur_is_scipy_zoom_average(preset: str, severity: int) -> None:
    x = images(size=30)
    zooms = get_preset(preset).param("zoom_blur", severity)
    refs = []
    for img in as_hwc64(x).astype(np.float32):
        acc = np.zeros_like(img)
        for z in zooms:
            acc += clipped_zoom_scipy(img, z)
        refs.append(to_uint8((img + acc) / (len(zooms) + 1)))
    assert_close_uint8(ours(x, "zoom_blur", severity, preset), np.stack(refs))


def test_reference_swap_statement_is_a_copy() -> None:
    """Why glass_source_index models a copy: the reference's `a[p], a[q] = a[q], a[p]` on rows
    of an H x W x 3 array assigns views, so a[p] receives a[q] and a[q] keeps its value."""
    a = np.arange(12).reshape(2, 2, 3)
    a[0, 0], a[1, 1] = a[1, 1], a[0, 0]
    assert a[0, 0].tolist() == [9, 10, 11] and a[1, 1].tolist() == [9, 10, 11]


def sequential_glass_pass(img: np.ndarray, delta: int, offsets: np.ndarray) -> np.ndarray:
    """The reference's loop, verbatim in effect; offsets[:, i, j] is (dx, dy) for h = delta+1+i."""
    x = img.copy()
    h_, w_ = x.shape[:2]
    for h in range(h_ - delta, delta, -1):
        for w in range(w_ - delta, delta, -1):
            dx, dy = offsets[:, h - delta - 1, w - delta - 1]
            x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return x


@pytest.mark.parametrize("delta", [1, 2, 3, 4])
def test_vectorised_glass_shuffle_equals_the_sequential_loop(delta: int) -> None:
    h, w = 21, 17
    img = np.random.default_rng(delta).integers(0, 256, (h, w, 3), dtype=np.uint8)
    index = glass_source_index(SampleRNG(3, torch.tensor([5])), h, w, delta, torch.device("cpu"))
    offsets = SampleRNG(3, torch.tensor([5])).randint(-delta, delta, 2, h - 2 * delta, w - 2 * delta)[0].numpy()
    ours_img = img.reshape(-1, 3)[index[0].numpy()].reshape(h, w, 3)
    np.testing.assert_array_equal(ours_img, sequential_glass_pass(img, delta, offsets))


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 4), ("imagenet-c", 3)])
def test_glass_blur_end_to_end(preset: str, severity: int) -> None:
    x = images(size=24)
    sigma, delta, iterations = get_preset(preset).param("glass_blur", severity)
    rng = SampleRNG(KEY, torch.arange(2))
    draws = [rng.randint(-delta, delta, 2, 24 - 2 * delta, 24 - 2 * delta).numpy() for _ in range(iterations)]
    refs = []
    for n, img in enumerate(as_hwc64(x)):
        y = to_uint8(ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="nearest"))
        for it in range(iterations):
            y = sequential_glass_pass(y, delta, draws[it][n])
        refs.append(to_uint8(ndimage.gaussian_filter(y / 255.0, (sigma, sigma, 0), mode="nearest")))
    assert_close_uint8(ours(x, "glass_blur", severity, preset), np.stack(refs))
