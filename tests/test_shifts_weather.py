"""Weather corruptions against independent numpy/scipy implementations of the reference, and
the procedural frost against the reference's photographs (when ../shared is present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from prunegate.shifts import NO_ASSETS, SampleRNG, ShiftAssets, corrupt, get_preset, textures
from prunegate.shifts._cv import canny, chamfer_distance, equalize_hist

KEY = 5
FROST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "frost-textures"


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 5, 5, generator=g), size=(size, size), mode="bilinear")
    return ((smooth + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1) * 255).round() / 255


def as_hwc64(x: torch.Tensor) -> np.ndarray:
    return np.round(x.numpy().astype(np.float64) * 255).transpose(0, 2, 3, 1) / 255


def ours(x: torch.Tensor, name: str, severity: int, preset: str) -> np.ndarray:
    y = corrupt(x, name, severity, SampleRNG(KEY, torch.arange(len(x))), preset)
    return np.round(y.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def plasma_numpy(uniforms: list[np.ndarray], mapsize: int, decay: float) -> np.ndarray:
    """The reference's diamond-square recurrence, fed the same uniform draws in the same order."""
    m = np.zeros((mapsize, mapsize))
    step, wibble, draws = mapsize, 100.0, iter(uniforms)

    def wibbled(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * (wibble * (2 * next(draws) - 1))

    while step >= 2:
        half = step // 2
        c = m[0::step, 0::step]
        sq = c + np.roll(c, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        m[half::step, half::step] = wibbled(sq)
        dr, ul = m[half::step, half::step], m[0::step, 0::step]
        m[0::step, half::step] = wibbled(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        m[half::step, 0::step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


@pytest.mark.parametrize(("preset", "severity"), [("cifar10-c", 1), ("imagenet-c", 5)])
def test_fog_is_the_reference_plasma_fractal(preset: str, severity: int) -> None:
    x = images(size=32)
    strength, decay = get_preset(preset).param("fog", severity)
    # one draw for the whole map, carved coarse to fine: per level a square and two diamond sets
    points = 1 + 4 + 16 + 64 + 256
    flat = SampleRNG(KEY, torch.arange(2)).uniform(3 * points, dtype=torch.float64).numpy()
    draws, used, k = [], 0, 1
    while k <= 16:
        for _ in range(3):
            draws.append(flat[:, used : used + k * k].reshape(2, k, k))
            used += k * k
        k *= 2
    assert used == flat.shape[1]
    refs = []
    for n, img in enumerate(as_hwc64(x)):
        plasma = plasma_numpy([d[n] for d in draws], 32, decay)
        top = img.max()
        refs.append(np.uint8(np.clip((img + strength * plasma[..., None]) * top / (top + strength), 0, 1) * 255))
    np.testing.assert_array_equal(ours(x, "fog", severity, preset), np.stack(refs))


@pytest.mark.parametrize(("preset", "severity"), [("imagenet-c", 4), ("cifar10-c", 5)])
def test_mud_spatter_matches_scipy(preset: str, severity: int) -> None:
    x = images(size=32)
    loc, scale, sigma, threshold, mud_sigma, mud = get_preset(preset).param("spatter", severity)
    assert mud == 1
    z = SampleRNG(KEY, torch.arange(2)).normal(1, 32, 32, dtype=torch.float64)[:, 0].numpy()
    refs = []
    for n, img in enumerate(as_hwc64(x).astype(np.float32)):
        liquid = ndimage.gaussian_filter(loc + scale * z[n], sigma, mode="nearest")
        liquid[liquid < threshold] = 0
        m = ndimage.gaussian_filter((liquid > threshold).astype(np.float64), mud_sigma, mode="nearest")
        m[m < 0.8] = 0
        m = m.astype(np.float32)[..., None]
        color = np.array([63, 42, 20], np.float32) / 255 * m
        refs.append(np.uint8(np.clip(img * (1 - m) + color, 0, 1) * 255))
    diff = np.abs(ours(x, "spatter", severity, preset).astype(int) - np.stack(refs))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_water_spatter_adds_pale_turquoise_only() -> None:
    x = images(size=48)
    y = corrupt(x, "spatter", 3, SampleRNG(KEY, torch.arange(2)), "cifar10-c")
    added = y - x
    assert float(added.min()) >= -1 / 255  # water only adds light (up to the uint8 truncation)
    wet = added.sum(dim=1) > 6 / 255
    assert bool(wet.any())
    ratio = added[:, 0][wet].sum() / added[:, 1][wet].sum()  # red vs green of (175, 238, 238)
    assert float(ratio) == pytest.approx(175 / 238, rel=0.15)


def canny_numpy(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV's documented Canny, pixel by pixel: 3x3 Sobel (replicated border), L1 magnitude,
    sector-wise non-maximum suppression, 8-connected hysteresis."""
    p = np.pad(img.astype(np.int64), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.abs(gx) + np.abs(gy)
    h, w = img.shape
    m = np.pad(mag, 1)
    cand = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            v = mag[y, x]
            if v <= low:
                continue
            ax, ay = abs(gx[y, x]), abs(gy[y, x])
            tg22 = ax * 13573
            if (ay << 15) < tg22:
                keep = v > m[y + 1, x] and v >= m[y + 1, x + 2]
            elif (ay << 15) > tg22 + (ax << 16):
                keep = v > m[y, x + 1] and v >= m[y + 2, x + 1]
            else:
                s = -1 if (gx[y, x] < 0) != (gy[y, x] < 0) else 1
                keep = v > m[y, x + 1 - s] and v > m[y + 2, x + 1 + s]
            cand[y, x] = keep
    edges = cand & (mag > high)
    while True:
        grown = cand & ndimage.binary_dilation(edges, structure=np.ones((3, 3), bool))
        if (grown == edges).all():
            return edges
        edges = grown


def test_canny_matches_a_pixelwise_reference() -> None:
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.normal(0.65, 0.3, (40, 40)), 1.5, mode="nearest")
    img = np.floor(np.where(blobs < 0.68, 0, blobs) * 255).clip(0, 255)
    img[5:15, 20:30] = np.floor(np.linspace(0, 200, 10))[None]  # a ramp: weak edges
    ours_edges = canny(torch.from_numpy(img)[None, None].float(), 50, 150)[0, 0].numpy()
    np.testing.assert_array_equal(ours_edges, canny_numpy(img, 50, 150))


def test_chamfer_distance_is_opencv_5x5_metric() -> None:
    zero = torch.zeros(1, 1, 31, 31, dtype=torch.bool)
    zero[0, 0, 15, 15] = True
    d = chamfer_distance(zero, 20.0)[0, 0]
    assert float(d[15, 18]) == pytest.approx(3.0)  # three unit steps
    assert float(d[17, 17]) == pytest.approx(2 * 91750 / 65536)  # two diagonal steps (1.4)
    assert float(d[16, 17]) == pytest.approx(143976 / 65536)  # a knight's move (2.1969)
    assert float(d[0, 0]) == 20.0  # truncated at 20
    exact = ndimage.distance_transform_edt(~zero[0, 0].numpy())
    near = exact < 15
    assert np.abs(d.numpy()[near] - exact[near]).max() < 0.03 * 15  # chamfer 5x5 is within ~2%


def test_equalize_hist_follows_opencv() -> None:
    img = torch.tensor([[3, 3, 7, 9], [9, 9, 12, 200]], dtype=torch.float32).view(1, 1, 2, 4)
    hist = {3: 2, 7: 1, 9: 3, 12: 1, 200: 1}
    scale = 255 / (8 - hist[3])
    expected, total = {3: 0}, 0
    for level in (7, 9, 12, 200):
        total += hist[level]
        expected[level] = round(total * scale)
    out = equalize_hist(img)[0, 0]
    assert out.flatten().tolist() == [expected[int(v)] for v in img.flatten().tolist()]
    flat = torch.full((1, 1, 3, 3), 17.0)
    assert torch.equal(equalize_hist(flat), flat)


@pytest.mark.parametrize("preset", ["cifar10-c", "imagenet-c"])
def test_frost_blends_image_and_texture(preset: str) -> None:
    x = images(size=32)
    ids = torch.arange(2)
    for severity in (1, 5):
        weight, frost_weight, scale = get_preset(preset).param("frost", severity)
        texture = textures.frost_texture(SampleRNG(KEY, ids), 32, 32, scale, torch.device("cpu")).numpy()
        ref = np.uint8(np.clip(weight * np.round(x.numpy().astype(np.float64) * 255) + frost_weight * texture, 0, 255))
        got = np.round(corrupt(x, "frost", severity, SampleRNG(KEY, ids), preset).numpy() * 255)
        np.testing.assert_array_equal(got, ref)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_procedural_frost_resembles_the_reference_photographs() -> None:
    """Intensity statistics of our textures against 224-px crops of frost1..frost5 (what the
    reference draws from): mean, spread, and the share of fine detail (gradient energy)."""
    if not FROST.is_dir():
        pytest.skip("../shared/data/frost-textures is not present")
    from PIL import Image

    rng = np.random.default_rng(0)
    crops = []
    for name in ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]:
        a = np.asarray(Image.open(FROST / name).convert("RGB")).astype(np.float64)
        for _ in range(2):
            y, x = rng.integers(0, a.shape[0] - 224), rng.integers(0, a.shape[1] - 224)
            crops.append(a[y : y + 224, x : x + 224])
    photos = np.stack(crops)
    ours_tex = textures.frost_texture(SampleRNG(9, torch.arange(10)), 224, 224, 1.0, torch.device("cpu"))
    synth = ours_tex.permute(0, 2, 3, 1).numpy().astype(np.float64)
    lp, ls = luminance(photos), luminance(synth)
    assert ls.mean() == pytest.approx(lp.mean(), abs=12)  # photos: ~158
    assert ls.std() == pytest.approx(lp.std(), rel=0.2)  # across and within crops
    within_p, within_s = lp.std(axis=(1, 2)).mean(), ls.std(axis=(1, 2)).mean()
    assert within_s == pytest.approx(within_p, rel=0.25)
    grad_p = np.abs(np.diff(lp, axis=2)).mean()
    grad_s = np.abs(np.diff(ls, axis=2)).mean()
    assert grad_s == pytest.approx(grad_p, rel=0.35)
    # colour: bluish-white on average, blue >= green >= red as in every photo
    mean_rgb = synth.mean(axis=(0, 1, 2))
    assert mean_rgb[2] >= mean_rgb[1] >= mean_rgb[0]


def test_user_texture_folder(tmp_path: Path) -> None:
    from PIL import Image

    for i, colour in enumerate([(200, 210, 220), (90, 120, 140)]):
        Image.new("RGB", (60 + 10 * i, 50), colour).save(tmp_path / f"t{i}.png")
    assets = ShiftAssets(frost_textures=textures.load_texture_folder(tmp_path))
    x = images(n=4, size=32)
    y = corrupt(x, "frost", 1, SampleRNG(KEY, torch.arange(4)), "imagenet-c", assets=assets)
    weight, frost_weight, _ = get_preset("imagenet-c").param("frost", 1)
    overlay = (torch.round(y * 255) - weight * torch.round(x * 255)) / frost_weight
    per_sample = overlay.mean(dim=(2, 3))
    assert all(
        min(float((p - torch.tensor(c)).abs().max()) for c in [(200, 210, 220), (90, 120, 140)]) < 3 / frost_weight
        for p in per_sample
        if float(y.max()) < 1.0
    )


def test_frost_assets_reach_only_the_call_that_passes_them(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (240, 240), (10, 20, 30)).save(tmp_path / "dark.png")
    assets = ShiftAssets(frost_textures=textures.load_texture_folder(tmp_path))
    x = images(n=2, size=32)
    ids = torch.arange(2)
    procedural = corrupt(x, "frost", 2, SampleRNG(KEY, ids), "imagenet-c")
    dark = corrupt(x, "frost", 2, SampleRNG(KEY, ids), "imagenet-c", assets=assets)
    # interleaved: nothing of one call's assets lingers for the next
    assert torch.equal(corrupt(x, "frost", 2, SampleRNG(KEY, ids), "imagenet-c", assets=NO_ASSETS), procedural)
    assert torch.equal(corrupt(x, "frost", 2, SampleRNG(KEY, ids), "imagenet-c", assets=assets), dark)
    assert torch.equal(corrupt(x, "frost", 2, SampleRNG(KEY, ids), "imagenet-c"), procedural)
    assert float(dark.mean()) < float(procedural.mean())  # a dark photograph darkens the overlay
    # a shift that takes no assets is called without them
    assert torch.equal(
        corrupt(x, "fog", 2, SampleRNG(KEY, ids), "imagenet-c", assets=assets),
        corrupt(x, "fog", 2, SampleRNG(KEY, ids), "imagenet-c"),
    )


def test_texture_folder_errors_name_the_file_and_field(tmp_path: Path) -> None:
    from prunegate.errors import DataError

    with pytest.raises(DataError, match="no PNG or JPEG"):
        textures.load_texture_folder(tmp_path, "--frost-textures")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: --frost-textures: cannot decode"):
        textures.load_texture_folder(tmp_path, "--frost-textures")


def test_tiny_photographs_are_stretched_not_fatal(tmp_path: Path) -> None:
    """A photograph that vanishes at CIFAR's 0.2 scale is stretched to the crop, as a small one is."""
    from PIL import Image

    Image.new("RGB", (2, 2), (250, 250, 250)).save(tmp_path / "speck.png")
    x = images(n=2, size=32)
    assets = ShiftAssets(frost_textures=textures.load_texture_folder(tmp_path))
    y = corrupt(x, "frost", 1, SampleRNG(KEY, torch.arange(2)), "cifar10-c", assets=assets)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_texture_record_digests_the_bytes_read(tmp_path: Path) -> None:
    import hashlib

    from PIL import Image

    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "b.png")
    Image.new("RGB", (30, 40), (4, 5, 6)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = textures.load_texture_folder(tmp_path)
    digests = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("a.jpg", "b.png")}
    lines = "".join(f"{name} {digest}\n" for name, digest in digests.items())
    assert folder.record == {
        "format": "frost-textures",
        "path": str(tmp_path),
        "size": 2,
        "used": 2,
        "sha256": hashlib.sha256(lines.encode()).hexdigest(),
    }
    assert [tuple(p.shape) for p in folder.photos] == [(3, 40, 30), (3, 30, 40)]  # each at its own size
