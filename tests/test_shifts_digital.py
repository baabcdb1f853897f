"""Digital corruptions against independent references: colorsys HSV, PIL's JPEG and BOX
resize, the contrast formula, scipy's map_coordinates for the elastic transform."""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from prunegate.shifts import SampleRNG, corrupt, get_preset

KEY = 11
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples-200"


def images(n: int = 2, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bicubic")
    x = smooth + 0.2 * torch.rand(n, 3, size, size, generator=g)
    x[:, :, :4, :4] = 0.5  # grey pixels: hue 0 in skimage
    x[:, :, -4:, -4:] = 1.0
    return (x.clamp(0, 1) * 255).round() / 255


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return np.round(x.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def ours(x: torch.Tensor, name: str, severity: int, preset: str) -> np.ndarray:
    return as_uint8(corrupt(x, name, severity, SampleRNG(KEY, torch.arange(len(x))), preset))


def assert_close_uint8(a: np.ndarray, b: np.ndarray, exact: float) -> None:
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= exact, (diff.max(), (diff == 0).mean())


def hsv_reference(img: np.ndarray, channel: int, scale: float, shift: float) -> np.ndarray:
    """Per-pixel colorsys round trip; skimage gives grey pixels hue 0 and saturation 0, and so
    does colorsys."""
    out = np.empty(img.shape)
    for idx in np.ndindex(img.shape[:2]):
        hsv = list(colorsys.rgb_to_hsv(*(img[idx] / 255.0)))
        hsv[channel] = min(max(hsv[channel] * scale + shift, 0.0), 1.0)
        out[idx] = colorsys.hsv_to_rgb(*hsv)
    return np.uint8(np.clip(out, 0, 1) * 255)


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 2), ("imagenet-c", 5)])
def test_brightness_is_an_hsv_value_shift(preset: str, severity: int) -> None:
    x = images()
    shift = get_preset(preset).param("brightness", severity)
    ref = np.stack([hsv_reference(img, 2, 1.0, shift) for img in as_uint8(x)])
    # colorsys computes hue in another order: ties of float noise may truncate differently
    assert_close_uint8(ours(x, "brightness", severity, preset), ref, exact=0.99)


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 2), ("imagenet-c", 4), ("imagenet-c", 5)])
def test_saturate_is_an_hsv_saturation_change(preset: str, severity: int) -> None:
    x = images()
    scale, shift = get_preset(preset).param("saturate", severity)
    ref = np.stack([hsv_reference(img, 1, scale, shift) for img in as_uint8(x)])
    assert_close_uint8(ours(x, "saturate", severity, preset), ref, exact=0.99)
    if shift > 0:  # grey pixels (hue 0) turn reddish, as in the reference
        grey = ours(x, "saturate", severity, preset)[:, 1, 1].astype(int)
        assert (grey[:, 0] > grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()


@pytest.mark.parametrize("preset", ["cifar10-c", "imagenet-c"])
def test_contrast_formula(preset: str) -> None:
    x = images()
    for severity in range(1, 6):
        c = get_preset(preset).param("contrast", severity)
        img = as_uint8(x).astype(np.float64) / 255
        means = img.mean(axis=(1, 2), keepdims=True)
        ref = np.uint8(np.clip((img - means) * c + means, 0, 1) * 255)
        np.testing.assert_array_equal(ours(x, "contrast", severity, preset), ref)


def pil_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("preset", ["cifar10-c", "imagenet-c"])
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
def test_jpeg_matches_pil(preset: str, size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 7, generator=g), size=size, mode="bicubic")
    x = ((x + 0.1 * torch.rand(2, 3, *size, generator=g)).clamp(0, 1) * 255).round() / 255
    for severity in range(1, 6):
        quality = get_preset(preset).param("jpeg_compression", severity)
        ref = np.stack([pil_jpeg(img, quality) for img in as_uint8(x)])
        got = ours(x, "jpeg_compression", severity, preset)
        mean_abs = np.abs(got.astype(int) - ref).mean()
        assert mean_abs == 0.0, f"quality {quality}: mean |ours - PIL| = {mean_abs:.4f}"


def test_jpeg_matrix_passes_equal_the_islow_butterflies() -> None:
    """Each 1-D DCT pass runs as one exact integer matrix product; it must equal libjpeg's
    butterfly code (_fdct_1d / _idct_1d) bit for bit, up to the extreme coefficient range."""
    from prunegate.shifts import _jpeg

    g = torch.Generator().manual_seed(0)
    for scale in (128, 255, 2**15 - 1):
        b = torch.randint(-scale, scale + 1, (8, 8, 2000), generator=g, dtype=torch.int64)
        for forward, butterflies in ((True, _jpeg._fdct_1d), (False, _jpeg._idct_1d)):
            for first in (True, False):
                for dim in (0, 1):
                    want = butterflies(b, first, dim)
                    assert torch.equal(_jpeg._linear_pass(b, forward, first, dim), want), (forward, first, dim)


@pytest.mark.parametrize("preset", ["cifar10-c", "imagenet-c"])
def test_pixelate_matches_pil_box(preset: str) -> None:
    x = images(size=30)
    for severity in range(1, 6):
        c = get_preset(preset).param("pixelate", severity)
        refs = []
        for img in as_uint8(x):
            small = Image.fromarray(img).resize((int(30 * c), int(30 * c)), Image.BOX)
            refs.append(np.asarray(small.resize((30, 30), Image.BOX)))
        np.testing.assert_array_equal(ours(x, "pixelate", severity, preset), np.stack(refs))


@pytest.mark.parametrize("name", ["jpeg_compression", "pixelate"])
def test_pillow_on_large_cpu_images_equals_the_tensor_version(name: str) -> None:
    """Large images on the CPU go through Pillow itself; the tensor version (what a GPU runs)
    must give the same pixels, on real photos when ../shared is there."""
    from prunegate.shifts import _pillow
    from prunegate.shifts._jpeg import jpeg_roundtrip
    from prunegate.shifts.digital import pil_box_resize

    x = images(n=3, size=96, seed=4)
    photos = sorted(SHARED_PHOTOS.glob("*.JPEG"))[:2] if SHARED_PHOTOS.is_dir() else []
    if photos:
        real = np.stack([np.asarray(Image.open(p).convert("RGB").resize((96, 96))) for p in photos])
        x = torch.cat([x, torch.from_numpy(real).permute(0, 3, 1, 2) / 255.0])
    assert _pillow.use_pillow(x)
    levels = torch.round(x * 255)
    h, w = x.shape[-2:]
    for preset in ("imagenet-c", "cifar10-c"):
        for severity in range(1, 6):
            c = get_preset(preset).param(name, severity)
            if name == "jpeg_compression":
                tensor = jpeg_roundtrip(levels, c)
            else:
                tensor = pil_box_resize(pil_box_resize(levels, int(h * c), int(w * c)), h, w)
            np.testing.assert_array_equal(ours(x, name, severity, preset), as_uint8(tensor / 255.0))


def affine_reference(img: np.ndarray, noise: np.ndarray, jitter: float) -> np.ndarray:
    """cv2.getAffineTransform + warpAffine (BORDER_REFLECT_101 = scipy "mirror"), with cv2's
    fixed-point source coordinates (1/1024 rounding, then floor to 1/32 with a 1/64 offset)."""
    h, w = img.shape[:2]
    cy, cx, sq = h // 2, w // 2, min(h, w) // 3
    src = np.float32([[cy + sq, cx + sq], [cy + sq, cx - sq], [cy - sq, cx - sq]])
    dst = src + ((2 * noise - 1) * jitter).astype(np.float32)
    fwd = np.linalg.solve(np.c_[src.astype(np.float64), np.ones(3)], dst.astype(np.float64))  # x' = [x y 1] @ fwd
    m = np.c_[fwd[:2].T, fwd[2]]
    inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    fx = np.round((inv[0, 1] * ys + inv[0, 2]) * 1024) + 16 + np.round(inv[0, 0] * xs * 1024)
    fy = np.round((inv[1, 1] * ys + inv[1, 2]) * 1024) + 16 + np.round(inv[1, 0] * xs * 1024)
    sx, sy = np.floor(fx / 32) / 32, np.floor(fy / 32) / 32
    return np.stack([ndimage.map_coordinates(img[..., c], [sy, sx], order=1, mode="mirror") for c in range(3)], -1)


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 2), ("imagenet-c", 3)])
def test_elastic_transform_matches_scipy(preset: str, severity: int) -> None:
    x = images(size=32)
    alpha, sigma, jitter = get_preset(preset).param("elastic_transform", severity)
    rng = SampleRNG(KEY, torch.arange(2))
    noise = rng.uniform(3, 2, dtype=torch.float64).numpy()
    dxs, dys = (rng.uniform(32, 32, dtype=torch.float64).numpy() for _ in range(2))
    refs = []
    for n, img in enumerate(as_uint8(x).astype(np.float32) / 255):
        warped = affine_reference(img, noise[n], jitter).astype(np.float32)
        dx = (ndimage.gaussian_filter(2 * dxs[n] - 1, sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
        dy = (ndimage.gaussian_filter(2 * dys[n] - 1, sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
        ys, xs = np.mgrid[0:32, 0:32]
        out = [ndimage.map_coordinates(warped[..., c], [ys + dy, xs + dx], order=1, mode="reflect") for c in range(3)]
        refs.append(np.uint8(np.clip(np.stack(out, -1), 0, 1) * 255))
    assert_close_uint8(ours(x, "elastic_transform", severity, preset), np.stack(refs), exact=0.99)
