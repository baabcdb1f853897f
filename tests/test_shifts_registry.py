"""Contract tests for every registered corruption, in both presets, at every severity.

Parametrised over the registry: a corruption registered later gets these tests for free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import prunegate.shifts as shifts
from prunegate.errors import PrunegateError
from prunegate.shifts import CORRUPTION_NAMES, SampleRNG, corrupt, get_preset, list_presets, list_shifts
from prunegate.shifts.presets import np_arange

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
# Small images keep the suite fast; sizes stay above what the pixel constants need
# (glass blur's +-4 shuffle, the 17 x 17 defocus disc, pixelate's 0.25 factor).
SIZES = {"cifar10-c": 24, "imagenet-c": 40}
CASES = [(preset, name) for preset in ("cifar10-c", "imagenet-c") for name in CORRUPTION_NAMES]


def realish_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Photo-like test images on the uint8 grid: smooth shading, a few flat shapes with hard
    edges, a little texture, saturated highlights and some grey areas."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        c0, c1 = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
        img = c0 * (1 - ys) + c1 * xs
        for _ in range(3):
            cy, cx, r = torch.rand(3, generator=g)
            disc = ((ys - cy) ** 2 + (xs - cx) ** 2) < (0.1 + 0.25 * r) ** 2
            img = torch.where(disc, torch.rand(3, 1, 1, generator=g), img)
        img = img + 0.04 * torch.randn(3, size, size, generator=g)
        img[:, : size // 6, : size // 6] = 1.0  # a blown-out highlight
        img[:, -size // 6 :, : size // 5] = 0.5  # a flat grey patch
        out.append(img)
    return (torch.stack(out).clamp(0, 1) * 255).round() / 255


def run(x: torch.Tensor, name: str, severity: int, preset: str, ids: torch.Tensor, key: int = 2024) -> torch.Tensor:
    return corrupt(x, name, severity, SampleRNG(key, ids), preset)


def test_registry_holds_the_benchmark() -> None:
    assert len(CORRUPTION_NAMES) == 19 and len(set(CORRUPTION_NAMES)) == 19
    assert set(list_shifts()) == set(CORRUPTION_NAMES)
    assert list_shifts("*blur") == ["defocus_blur", "gaussian_blur", "glass_blur", "motion_blur", "zoom_blur"]
    assert CORRUPTION_NAMES[:3] == ("gaussian_noise", "shot_noise", "impulse_noise")
    assert CORRUPTION_NAMES[15:] == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    for name in ("list_noises", "get_noise", "register_noise", "register_shift", "get_shift"):
        assert callable(getattr(shifts, name))


def test_presets_cover_every_corruption_with_five_severities() -> None:
    assert list_presets() == ["cifar10-c", "imagenet-c"]
    assert get_preset("cifar10-c").image_size == 32 and get_preset("imagenet-c").image_size == 224
    for preset in list_presets():
        table = get_preset(preset).table
        assert set(table) == set(CORRUPTION_NAMES)
        assert all(len(params) == 5 for params in table.values())


@pytest.mark.parametrize(
    ("preset", "name", "expected"),
    [  # spot checks against make_cifar_c.py / make_imagenet_c.py
        ("cifar10-c", "gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10)),
        ("imagenet-c", "gaussian_noise", (0.08, 0.12, 0.18, 0.26, 0.38)),
        ("cifar10-c", "shot_noise", (500, 250, 100, 75, 50)),
        ("imagenet-c", "shot_noise", (60, 25, 12, 5, 3)),
        ("cifar10-c", "jpeg_compression", (80, 65, 58, 50, 40)),
        ("imagenet-c", "jpeg_compression", (25, 18, 15, 10, 7)),
        ("imagenet-c", "glass_blur", ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
        ("cifar10-c", "contrast", (0.75, 0.5, 0.4, 0.3, 0.15)),
        ("imagenet-c", "saturate", ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))),
        ("imagenet-c", "pixelate", (0.6, 0.5, 0.4, 0.3, 0.25)),
    ],
)
def test_preset_constants(preset: str, name: str, expected: tuple) -> None:
    assert tuple(get_preset(preset).table[name]) == expected


def test_elastic_and_spatter_constants() -> None:
    assert get_preset("imagenet-c").table["elastic_transform"][0] == pytest.approx((488, 170.8, 24.4))
    assert get_preset("cifar10-c").table["elastic_transform"][4] == pytest.approx((3.2, 0.96, 0.96))
    assert [p.mud for p in get_preset("imagenet-c").table["spatter"]] == [0, 0, 0, 1, 1]
    assert [p.mud for p in get_preset("cifar10-c").table["spatter"]] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    ("start", "stop", "step"), [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.26, 0.02), (1, 1.31, 0.03)]
)
def test_zoom_factors_are_numpy_arange(start: float, stop: float, step: float) -> None:
    assert np_arange(start, stop, step) == tuple(np.arange(start, stop, step).tolist())


def test_corrupt_rejects_bad_input() -> None:
    x = torch.rand(2, 3, 16, 16)
    rng = SampleRNG(1, torch.arange(2))
    with pytest.raises(PrunegateError, match="unknown corruption"):
        corrupt(x, "rain", 1, rng)
    with pytest.raises(PrunegateError, match="unknown corruption preset"):
        corrupt(x, "fog", 1, rng, preset="mnist-c")
    for severity in (0, 6, True, 2.0):
        with pytest.raises(PrunegateError, match="severity"):
            corrupt(x, "fog", severity, rng)  # type: ignore[arg-type]
    with pytest.raises(PrunegateError, match="RGB"):
        corrupt(x[:, :1], "fog", 1, rng)
    with pytest.raises(PrunegateError, match="samples"):
        corrupt(x, "fog", 1, SampleRNG(1, torch.arange(3)))


@pytest.mark.parametrize(("preset", "name"), CASES)
def test_contract(preset: str, name: str) -> None:
    """Shape, dtype, device, range, uint8 grid, determinism, batch and neighbour independence."""
    size = SIZES[preset]
    x = realish_images(6, size)
    ids = torch.arange(100, 106)
    other = x.clone()
    other[0] = 1.0 - other[0]  # change sample 0 only
    for severity in range(1, 6):
        y = run(x, name, severity, preset, ids)
        assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        # the reference stores every result as uint8
        assert torch.equal(torch.round(y * 255) / 255, y), "not on the uint8 grid"
        assert torch.equal(run(x, name, severity, preset, ids), y), "not deterministic"
        parts = torch.cat([run(x[:2], name, severity, preset, ids[:2]), run(x[2:], name, severity, preset, ids[2:])])
        assert torch.equal(parts, y), "depends on how the batch is split"
        assert torch.equal(run(other, name, severity, preset, ids)[1:], y[1:]), "depends on a neighbour"
        if name not in (
            "brightness",
            "contrast",
            "pixelate",
            "jpeg_compression",
            "saturate",
            "defocus_blur",
            "gaussian_blur",
            "zoom_blur",
        ):  # the deterministic ones
            assert not torch.equal(run(x, name, severity, preset, ids + 50), y), "ignores the sample ids"


# Where the reference itself is not monotone in effect. Measured by running the reference
# generators (numpy randomness, the real frost photographs) on the 20 CIFAR-10 test PNGs and
# on 8 ImageNet photos at 224 px: mean |corrupted - clean| per severity, in [0, 1] units.
NOT_MONOTONE = {
    # sev 2 desaturates (x0.1) more than sev 3 saturates (x1.5 / x2); deterministic
    ("cifar10-c", "saturate"),
    ("imagenet-c", "saturate"),
    # the affine jitter shrinks with severity faster than the elastic part grows:
    # reference .087 .089 .074 .068 .059
    ("cifar10-c", "elastic_transform"),
    # sev 1-2 are large smooth warps (sigma 170 / 20 px), 3-5 small ones: .133 .177 .070 .071 .072
    ("imagenet-c", "elastic_transform"),
    # sev 3 blurs harder (0.4) once, sev 4 softer (0.25) twice: .048 .049 .048 .079 .075
    ("cifar10-c", "glass_blur"),
    # sev 3 shuffles 3 times by +-2, sev 4 twice by +-3: .037 .037 .057 .055 .061
    ("imagenet-c", "glass_blur"),
    # the image weight drops while the frost weight stays (cifar sev 3 -> 4: 0.9 -> 0.85 at
    # 0.4; imagenet 0.7 -> 0.65 at 0.7): cifar .123 .178 .200 .159 .157, imagenet .240 .295 .356 .321 .331
    ("cifar10-c", "frost"),
    ("imagenet-c", "frost"),
    # sev 3 -> 4 keeps the strength (2.5) and only lowers the decay: .136 .156 .177 .171 .191
    ("imagenet-c", "fog"),
    # sev 3 has fewer, larger flakes (threshold 0.9): .167 .270 .264 .321 .380
    ("imagenet-c", "snow"),
    # sev 1-3 add translucent water, sev 4-5 opaque mud: .004 .011 .028 .012 .021
    ("cifar10-c", "spatter"),
}


def mean_change(x: torch.Tensor, name: str, preset: str) -> list[float]:
    ids = torch.arange(len(x))
    return [float((run(x, name, s, preset, ids) - x).abs().mean()) for s in range(1, 6)]


@pytest.mark.parametrize(("preset", "name"), CASES)
def test_monotone_in_severity(preset: str, name: str) -> None:
    """Near the preset's own image size (pixelate, for one, is only monotone at the reference's
    ratios), over enough images that random flakes and drops average out."""
    if (preset, name) in NOT_MONOTONE:
        pytest.skip(f"the reference's {preset} {name} is not monotone either")
    size = get_preset(preset).image_size
    x = realish_images(16, size, seed=1) if size <= 32 else realish_images(2, size // 2, seed=1)
    changes = mean_change(x, name, preset)
    assert all(b - a >= -1e-4 for a, b in zip(changes, changes[1:])), changes
    assert changes[-1] > 0


def load_cifar_photos() -> torch.Tensor:
    folder = SHARED / "cifar10-test-png20"
    if not folder.is_dir():
        pytest.skip("../shared/data/cifar10-test-png20 is not present")
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("name", [n for n in CORRUPTION_NAMES if ("cifar10-c", n) not in NOT_MONOTONE])
def test_monotone_on_real_cifar_photos(name: str) -> None:
    changes = mean_change(load_cifar_photos(), name, "cifar10-c")
    assert all(b - a >= -1e-4 for a, b in zip(changes, changes[1:])), changes


def test_corrupt_in_chunks_equals_one_call():
    """corrupt() splits large batches; the result must equal one call of the shift itself."""
    from prunegate import shifts
    from prunegate.shifts.rng import SampleRNG

    x = torch.rand(shifts.MAX_CHUNK + 7, 3, 16, 16)
    for name in ("frost", "shot_noise", "glass_blur"):
        param = shifts.get_preset("cifar10-c").param(name, 3)
        whole = shifts.get_shift(name).fn(x, param, SampleRNG(11, torch.arange(len(x))))
        chunked = shifts.corrupt(x, name, 3, SampleRNG(11, torch.arange(len(x))), preset="cifar10-c")
        assert torch.equal(whole, chunked), name


def test_large_images_are_corrupted_in_small_chunks_with_the_same_result():
    """On the CPU corrupt() also bounds the values per call (one 224-px image); same result."""
    from prunegate import shifts
    from prunegate.shifts.rng import SampleRNG

    x = realish_images(3, 224)
    assert shifts.chunk_size(x) == 1
    # small images: up to MAX_CHUNK per call, the batch split evenly (200 = 4 x 50, not 3 x 64 + 8)
    assert shifts.chunk_size(torch.zeros(200, 3, 32, 32)) == 50
    assert shifts.chunk_size(torch.zeros(64, 3, 32, 32)) == 64
    for name in ("gaussian_blur", "shot_noise"):
        param = shifts.get_preset("imagenet-c").param(name, 2)
        whole = shifts.get_shift(name).fn(x, param, SampleRNG(11, torch.arange(3)))
        assert torch.equal(whole, shifts.corrupt(x, name, 2, SampleRNG(11, torch.arange(3)))), name


def test_the_torch_free_names_match_the_registry():
    """`prunegate.shift_names` (what the policy validates against without importing torch)
    names exactly what the registry implements."""
    from prunegate import shift_names
    from prunegate.shifts import list_noises
    from prunegate.shifts.assets import ShiftAssets

    assert sorted(shift_names.CORRUPTION_NAMES) == list_shifts()
    assert sorted(shift_names.NOISE_KINDS) == list_noises()
    assert sorted(shift_names.PRESET_NAMES) == list_presets()
    assert set(shift_names.ASSET_NAMES) == {f for f in ShiftAssets.__dataclass_fields__}
    assert set(shift_names.ASSET_SHIFTS.values()) <= set(list_shifts())
