"""Frost textures for the `frost` corruption, made procedurally.

The reference overlays a random crop of one of five frost photographs (`np.random.randint(5)`
picks frost1..frost5; frost2 and frost3 are the same picture, frost6 is never drawn). Those
photos are not shipped; instead prunegate makes four procedural "photographs", once per
process and always the same (a fixed random stream, on the CPU), at the photographs' own sizes,
and crops them per sample as the reference does. Each photograph is:

1. a style with numbers measured once from the corresponding photograph: its luminance
   quantiles, its colour as a linear function of luminance, and the shape of its texture;
2. a luminance field: 1/f^beta noise (beta ~ 2, matched to the photos' radially averaged
   power spectra) plus ice needles, i.e. sparse seeds drawn as thin tapered lines along a
   smooth random orientation field, with shorter side branches at +-60 degrees (dendrites);
3. the field is histogram-matched, by rank, to the style's luminance quantiles, then coloured.
   For CIFAR-10-C (scale 0.2) the photograph is decimated as cv2.resize(fx=0.2, INTER_LINEAR)
   does, before cropping, as the reference resizes its photographs.

Per sample, `frost` then draws the photograph (frost2's look twice as often, as the reference's
randint(5) does) and the crop's corner: two draws, so a batch costs a gather, not a synthesis.
A user may supply real photographs instead (policy `suite.corruptions.frost_textures`,
`prunegate corrupt --frost-textures`, or `ShiftAssets(frost_textures=load_texture_folder(folder))`
passed to `corrupt`): each is used at its own size, picked uniformly, resized and cropped as the
reference does. Nothing here is process-wide: the photographs travel with each call.
"""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from prunegate.errors import DataError

from .rng import SampleRNG

# Quantile levels at which the styles' luminance distributions are stored (denser in the tails).
_LEVELS = (0.0, 0.01, 0.03, 0.07, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.93, 0.97, 0.99, 1.0)


class FrostStyle(NamedTuple):
    quantiles: tuple[float, ...]  # luminance (0.299 R + 0.587 G + 0.114 B) at _LEVELS
    offset: tuple[float, float, float]  # RGB = offset + slope * luminance (least squares)
    slope: tuple[float, float, float]
    beta: float  # spectral exponent of the smooth part
    needles: float  # weight of the needle layer against the smooth part
    length: float  # needle half-length, photo pixels
    density: float  # needle seeds per pixel


# Measured from hendrycks/robustness' frost photographs (whole images, native resolution).
_STYLES = (
    FrostStyle(  # frost1.png: blue-green glass-like ice, no needles
        (80.8, 95.5, 99.6, 104.7, 110.7, 116.1, 120.9, 125.5, 130.3, 135.3, 141.3, 149.2, 159.2, 168.1, 177.4, 219.7),
        (-98.4, 35.55, 75.03),
        (1.358, 0.876, 0.6996),
        2.2,
        0.15,
        16.0,
        0.004,
    ),
    FrostStyle(  # frost2.png (= frost3.png): bright white ice crystals
        (56.2, 139.8, 156.6, 169.9, 183.1, 193.0, 200.1, 205.8, 210.8, 215.4, 220.4, 226.1, 232.3, 238.0, 244.1, 254.0),
        (1.17, -1.38, 4.02),
        (0.9736, 1.0083, 1.0264),
        2.2,
        0.6,
        24.0,
        0.006,
    ),
    FrostStyle(  # frost4.jpg: grey fine crystals and droplets
        (22.1, 80.7, 95.7, 107.8, 122.0, 132.0, 139.7, 146.7, 153.0, 159.7, 166.7, 176.0, 189.7, 206.0, 230.7, 253.8),
        (-11.17, 3.77, 9.85),
        (0.9942, 0.9956, 1.0379),
        1.8,
        0.7,
        16.0,
        0.010,
    ),
    FrostStyle(  # frost5.jpg: grey feathery dendrites on a dark pane
        (23.4, 43.0, 51.8, 62.8, 76.0, 89.0, 100.8, 111.2, 122.8, 134.8, 148.8, 167.3, 192.2, 214.8, 236.8, 255.0),
        (-11.77, 2.43, 18.38),
        (1.0228, 0.9964, 0.9587),
        2.2,
        0.7,
        32.0,
        0.004,
    ),
)
_STYLE_DRAW = (0, 1, 1, 2, 3)  # the reference's randint(5) over frost1..frost5
_ORIENTATIONS = 8


def _freq_radius(h: int, w: int, device: torch.device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def _power_law_noise(white: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance noise with power spectrum ~ f^-beta (beta per sample)."""
    h, w = white.shape[-2:]
    f = _freq_radius(h, w, white.device).clamp(min=1.0 / max(h, w))
    spec = torch.fft.rfft2(white) * f[None] ** (-beta.view(-1, 1, 1) / 2)
    spec[:, 0, 0] = 0
    field = torch.fft.irfft2(spec, s=(h, w))
    return field / field.std(dim=(1, 2), keepdim=True).clamp(min=1e-12)


def _dendrite_spectra(h: int, w: int, length: float, device: torch.device) -> torch.Tensor:
    """rFFTs [K, h, w//2+1] of one ice dendrite per orientation: a thin needle of half-length
    L tapering from its seed, with two shorter side branches at +-60 degrees."""
    ys = torch.fft.fftfreq(h, 1.0 / h, device=device)[:, None]  # periodic canvas coordinates
    xs = torch.fft.fftfreq(w, 1.0 / w, device=device)[None, :]
    per_angle = []
    for k in range(_ORIENTATIONS):
        kernel = torch.zeros(h, w, device=device)
        for turn, scale in ((0.0, 1.0), (math.pi / 3, 0.45), (-math.pi / 3, 0.45)):
            theta = math.pi * k / _ORIENTATIONS + turn
            along = xs * math.cos(theta) + ys * math.sin(theta)
            across = -xs * math.sin(theta) + ys * math.cos(theta)
            taper = (1.0 - along.abs() / (length * scale)).clamp(min=0)
            kernel = kernel + scale * torch.exp(-0.5 * (across / 0.6) ** 2) * taper
        per_angle.append(torch.fft.rfft2(kernel))
    return torch.stack(per_angle)


def _needles(rng: SampleRNG, theta: torch.Tensor, style: FrostStyle) -> torch.Tensor:
    """Dendrites grown from sparse seeds along the local orientation (soft-binned into
    _ORIENTATIONS directions, one FFT convolution per direction)."""
    n, h, w = theta.shape
    spectra = _dendrite_spectra(h, w, style.length, theta.device)
    bits = rng.bits(h, w).to(theta.device)  # one draw: 16 bits for "is a seed", 16 for its weight
    place = (bits & 0xFFFF).to(torch.float32) / 65536.0
    weight = ((bits >> 16) & 0xFFFF).to(torch.float32) / 65536.0
    seeds = (place < style.density).to(torch.float32) * (0.5 + 0.5 * weight)
    total = torch.zeros(n, h, w // 2 + 1, dtype=torch.complex64, device=theta.device)
    for k in range(_ORIENTATIONS):
        gate = torch.cos(2.0 * (theta - math.pi * k / _ORIENTATIONS)).clamp(min=0)
        gate = gate * gate
        gate = gate * gate * gate  # cos^6: soft assignment to the nearest direction
        total = total + torch.fft.rfft2(seeds * gate) * spectra[k]
    lines = torch.fft.irfft2(total, s=(h, w))
    return 1.0 - torch.exp(-1.5 * lines.clamp(min=0))  # overlapping needles saturate like ice


def _match_quantiles(field: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Map each sample's values by rank onto the piecewise-linear quantile function."""
    n = field.shape[0]
    flat = field.reshape(n, -1)
    ranks = torch.empty_like(flat)
    order = flat.argsort(dim=1)
    positions = (torch.arange(flat.shape[1], device=field.device, dtype=flat.dtype) + 0.5) / flat.shape[1]
    ranks.scatter_(1, order, positions.expand(n, -1).contiguous())
    levels = torch.tensor(_LEVELS, device=field.device, dtype=flat.dtype).expand(n, -1).contiguous()
    idx = torch.searchsorted(levels, ranks).clamp(1, len(_LEVELS) - 1)
    lo, hi = levels.gather(1, idx - 1), levels.gather(1, idx)
    qlo, qhi = quantiles.gather(1, idx - 1), quantiles.gather(1, idx)
    out = qlo + (ranks - lo) / (hi - lo) * (qhi - qlo)
    return out.view_as(field)


# The photographs' sizes (height, width): frost1.png, frost2.png (= frost3.png), frost4.jpg,
# frost5.jpg. A procedural photograph is made at least this large (larger for larger images).
_PHOTO_SIZES = ((600, 900), (315, 560), (350, 527), (495, 660))
_PHOTO_KEY = 0x66726F7374  # the fixed stream the procedural photographs are drawn from
_ORIENTATION_CELL = 224 / 12  # photo pixels per node of the coarse orientation grid


@functools.lru_cache(maxsize=16)
def _procedural_photo(style_index: int, height: int, width: int) -> torch.Tensor:
    """One procedural frost photograph [3, height, width] in (unrounded) uint8 units, on the
    CPU, from a fixed stream: the same in every process."""
    style = _STYLES[style_index]
    rng = SampleRNG(_PHOTO_KEY, torch.tensor([style_index]), device="cpu")
    base = _power_law_noise(rng.normal(height, width), torch.tensor([style.beta]))
    # orientation: a smooth random direction field (drawn coarse, interpolated)
    coarse = rng.normal(2, math.ceil(height / _ORIENTATION_CELL), math.ceil(width / _ORIENTATION_CELL))
    orient = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    theta = 0.5 * torch.atan2(orient[:, 1], orient[:, 0])
    lines = _needles(rng, theta, style)
    lines = (lines - lines.mean(dim=(1, 2), keepdim=True)) / lines.std(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    field = base + style.needles * lines
    lum = _match_quantiles(field, torch.tensor([style.quantiles]))[0]
    offset = torch.tensor(style.offset).view(3, 1, 1)
    slope = torch.tensor(style.slope).view(3, 1, 1)
    return offset + slope * lum[None]


_BANK_LOCK = threading.Lock()  # the bank takes ~1.5 s to make: threads wait for it, not make it twice


def _photo_bank(
    scale: float, min_height: int, min_width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """_made_photo_bank, made once however many threads ask for it at once."""
    with _BANK_LOCK:
        return _made_photo_bank(scale, min_height, min_width, device)


@functools.lru_cache(maxsize=8)
def _made_photo_bank(
    scale: float, min_height: int, min_width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The procedural photographs at `scale`, each at least min_height x min_width there, as
    rounded uint8 levels in one zero-padded [styles, 3, H, W] tensor, and their sizes [styles, 2]."""
    photos = []
    for i, (ph, pw) in enumerate(_PHOTO_SIZES):
        ph = max(ph, math.ceil(min_height / scale - 1e-9) + 1)
        pw = max(pw, math.ceil(min_width / scale - 1e-9) + 1)
        photo = _procedural_photo(i, ph, pw)[None]
        if scale != 1.0:
            photo = _decimate(photo, max(round(ph * scale), min_height), max(round(pw * scale), min_width), scale)
        photos.append(photo[0].round().clamp(0, 255))
    return _stack_padded(photos, device)


def _stack_padded(photos: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Photographs [3, h, w] of several sizes as one zero-padded [T, 3, H, W] bank and their
    sizes [T, 2]."""
    sizes = torch.tensor([p.shape[-2:] for p in photos])
    bank = torch.zeros(len(photos), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()))
    for i, p in enumerate(photos):
        bank[i, :, : p.shape[-2], : p.shape[-1]] = p
    return bank.to(device), sizes.to(device)


def _crops(
    rng: SampleRNG, bank: torch.Tensor, sizes: torch.Tensor, picks: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """A height x width crop of photograph picks[n] per sample, its corner uniform as the
    reference's randint(0, H - height), randint(0, W - width)."""
    corner = rng.uniform(2, dtype=torch.float64).to(bank.device)
    room = (sizes[picks] - torch.tensor([height, width], device=bank.device)).clamp(min=1)
    top = torch.floor(corner[:, 0] * room[:, 0]).long()
    left = torch.floor(corner[:, 1] * room[:, 1]).long()
    return _gather_crops(bank, picks, top, left, height, width)


def frost_texture(rng: SampleRNG, height: int, width: int, scale: float, device: torch.device) -> torch.Tensor:
    """Frost overlays [N, 3, height, width] in uint8 levels (float 0..255), one per sample:
    a crop of a procedural photograph (drawn with the reference's odds) at `scale` times the
    photographs' resolution, its corner uniform as the reference's randint(0, H - height)."""
    bank, sizes = _photo_bank(float(scale), height, width, torch.device(device))
    styles = torch.tensor(_STYLE_DRAW, device=bank.device)[rng.randint(0, len(_STYLE_DRAW), 1).to(bank.device)[:, 0]]
    return _crops(rng, bank, sizes, styles, height, width)


def _gather_crops(
    bank: torch.Tensor, pick: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """bank[pick[n], :, top[n] : top[n] + height, left[n] : left[n] + width] for every n, as one
    index_select of `width`-long runs out of an overlapping strided view of the (contiguous)
    bank: one row copy per (sample, channel, row). [N, 3, height, width]."""
    t, c, bh, bw = bank.shape
    flat = bank.contiguous().flatten()
    planes = pick[:, None] * c + torch.arange(c, device=bank.device)  # [N, c]
    rows = planes[:, :, None] * bh + top[:, None, None] + torch.arange(height, device=bank.device)
    starts = (rows * bw + left[:, None, None]).flatten()
    runs = torch.as_strided(flat, (flat.numel() - width + 1, width), (1, 1))
    return runs.index_select(0, starts).view(-1, c, height, width)


def _decimate(img: torch.Tensor, height: int, width: int, scale: float | None = None) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) down to (height, width): bilinear at (i + 0.5) / scale - 0.5
    (scale: cv2's fx = fy when given, else out / in per axis), no antialiasing (at fx = 0.2
    it picks every 5th pixel)."""
    h, w = img.shape[-2:]
    sy = 1.0 / scale if scale else h / height
    sx = 1.0 / scale if scale else w / width
    ys = ((torch.arange(height, device=img.device) + 0.5) * sy - 0.5) / (h - 1) * 2 - 1
    xs = ((torch.arange(width, device=img.device) + 0.5) * sx - 0.5) / (w - 1) * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(img.shape[0], height, width, 2)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


TEXTURE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class TextureFolder(NamedTuple):
    """Photographs loaded from a folder, and what a report records of them."""

    photos: tuple[torch.Tensor, ...]  # each uint8 levels [3, h, w] (float) at its own size
    record: dict  # format, path, size, used, sha256 over "name sha256" lines of the files read


def load_texture_folder(folder: str | Path, field: str = "frost textures") -> TextureFolder:
    """Load a folder of texture images (PNG/JPEG, RGB; alpha is dropped as cv2.imread does) in
    file-name order, each at its own size, with a digest of exactly the bytes decoded. Done once,
    outside the hot path; Pillow decodes (a damaged file is a one-line error)."""
    import hashlib

    from prunegate.imageio import decoder_message, pil_decode

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("expected a folder of PNG/JPEG frost textures", file=folder, field=field)
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in TEXTURE_SUFFIXES)
    except OSError as exc:
        raise DataError(f"cannot list the folder ({exc.strerror})", file=folder, field=field) from None
    if not paths:
        raise DataError("no PNG or JPEG files in the folder", file=folder, field=field)
    images, lines = [], []
    for path in paths:
        try:
            data = path.read_bytes()
            images.append(pil_decode(data).to(torch.float32))  # as the data readers decode (16-bit scaled)
        except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, DecompressionBombError...
            raise DataError(f"cannot decode the image ({decoder_message(exc)})", file=path, field=field) from None
        lines.append(f"{path.name} {hashlib.sha256(data).hexdigest()}\n")
    record = {
        "format": "frost-textures",
        "path": str(folder),
        "size": len(paths),
        "used": len(paths),
        "sha256": hashlib.sha256("".join(lines).encode()).hexdigest(),
    }
    return TextureFolder(tuple(images), record)


@functools.lru_cache(maxsize=2)
def _user_bank(
    photos: tuple[torch.Tensor, ...], scale: float, height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's photographs resized by `scale` (cv2.resize INTER_LINEAR, each at its own size),
    stretched where smaller than the crop, padded into one bank. Made once per setting."""
    resized = []
    for photo in photos:
        h, w = photo.shape[-2:]
        if scale != 1.0:
            photo = _decimate(photo[None], max(1, round(h * scale)), max(1, round(w * scale)), scale)[0]
        if photo.shape[-2] < height or photo.shape[-1] < width:  # too small to crop: stretch to fit
            size = (max(height, photo.shape[-2]), max(width, photo.shape[-1]))
            photo = F.interpolate(photo[None], size=size, mode="bilinear")[0]
        resized.append(photo.round().clamp(0, 255))
    return _stack_padded(resized, device)


def texture_crops(
    rng: SampleRNG, photos: tuple[torch.Tensor, ...], height: int, width: int, scale: float, device: torch.device
) -> torch.Tensor:
    """The reference's overlay from real photographs: pick one uniformly, resize it by `scale`,
    take a uniformly placed height x width crop. [N, 3, height, width] uint8 levels."""
    bank, sizes = _user_bank(photos, float(scale), height, width, torch.device(device))
    picks = rng.randint(0, len(photos), 1)[:, 0].to(bank.device)
    return _crops(rng, bank, sizes, picks, height, width)


def frost_overlay(
    rng: SampleRNG,
    height: int,
    width: int,
    scale: float,
    device: torch.device,
    photos: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:
    """The overlay `frost` uses: crops of `photos` (the user's photographs) when given, else of
    procedural ones. uint8 levels, [N, 3, height, width]."""
    if photos is not None:
        return texture_crops(rng, photos, height, width, scale, device)
    return frost_texture(rng, height, width, scale, device)
