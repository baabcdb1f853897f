"""A batched JPEG encode + decode in torch, following libjpeg(-turbo) as PIL drives it.

PIL's `img.save(buf, "JPEG", quality=q)` then `Image.open(buf)`: baseline JPEG, 4:2:0 chroma
subsampling, the IJG quality-scaled Annex K tables (clamped to 1..255 for baseline), the
integer "islow" DCT both ways, libjpeg's fixed-point colour conversions, its 2x2 box
downsampling with alternating rounding bias and its "fancy" (triangle) upsampling. Entropy
coding is lossless, so it is skipped: only what changes pixels is reproduced, in integer
arithmetic, so the output matches PIL's bit for bit in the common case (tests measure it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

# ITU T.81 Annex K, natural (row-major) order.
_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

# libjpeg jfdctint.c / jidctint.c constants: FIX(x) = round(x * 2**13)
_F0298, _F0390, _F0541, _F0765 = 2446, 3196, 4433, 6270
_F0899, _F1175, _F1501, _F1847 = 7373, 9633, 12299, 15137
_F1961, _F2053, _F2562, _F3072 = 16069, 16819, 20995, 25172
_CONST_BITS, _PASS1_BITS = 13, 2


def quant_table(quality: int, chroma: bool) -> list[int]:
    """jpeg_set_quality(quality, force_baseline=TRUE): IJG scaling of the Annex K table."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return [min(max((v * scale + 50) // 100, 1), 255) for v in (_CHROMA if chroma else _LUMA)]


def _reciprocal(divisor: int) -> tuple[int, int, int]:
    """libjpeg-turbo's compute_reciprocal (16-bit DCTELEM, as in its SIMD builds): quantising
    is ((|t| + corr) * recip) >> shift, which is libjpeg's rounded division by `divisor`."""
    b = divisor.bit_length() - 1
    r = 16 + b
    fq, fr = divmod(1 << r, divisor)
    c = divisor // 2
    if fr == 0:
        fq >>= 1
        r -= 1
    elif fr <= divisor // 2:
        c += 1
    else:
        fq += 1
    return fq, c, r


def _quantise(coef: torch.Tensor, qtable: list[int]) -> torch.Tensor:
    """Round |coef| / (8 * q) half up, keeping the sign (islow output is scaled up by 8)."""
    parts = [_reciprocal(q << 3) for q in qtable]
    recip, corr, shift = (
        torch.tensor([p[i] for p in parts], dtype=torch.int64, device=coef.device).view(8, 8, 1) for i in range(3)
    )
    return torch.sign(coef) * (((coef.abs() + corr) * recip) >> shift)


def _descale(v: torch.Tensor, n: int) -> torch.Tensor:
    return (v + (1 << (n - 1))) >> n


def _odd_part(
    t4: torch.Tensor, t5: torch.Tensor, t6: torch.Tensor, t7: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared odd-part rotation of LL&M (jfdctint/jidctint); returns 4 products."""
    z1, z2, z3, z4 = t4 + t7, t5 + t6, t4 + t6, t5 + t7
    z5 = (z3 + z4) * _F1175
    t4, t5, t6, t7 = t4 * _F0298, t5 * _F2053, t6 * _F3072, t7 * _F1501
    z1, z2, z3, z4 = z1 * -_F0899, z2 * -_F2562, z3 * -_F1961 + z5, z4 * -_F0390 + z5
    return t4 + z1 + z3, t5 + z2 + z4, t6 + z2 + z3, t7 + z1 + z4


def _fdct_1d(
    d: torch.Tensor, first_pass: bool, dim: int, descale: Callable[[torch.Tensor, int], torch.Tensor] = _descale
) -> torch.Tensor:
    """jpeg_fdct_islow along `dim` (0: down the columns, 1: along the rows) of [8, 8, M] blocks."""
    c = [d.select(dim, i) for i in range(8)]
    t0, t7 = c[0] + c[7], c[0] - c[7]
    t1, t6 = c[1] + c[6], c[1] - c[6]
    t2, t5 = c[2] + c[5], c[2] - c[5]
    t3, t4 = c[3] + c[4], c[3] - c[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    shift = _CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS
    if first_pass:
        o0, o4 = (t10 + t11) << _PASS1_BITS, (t10 - t11) << _PASS1_BITS
    else:
        o0, o4 = descale(t10 + t11, _PASS1_BITS), descale(t10 - t11, _PASS1_BITS)
    z1 = (t12 + t13) * _F0541
    o2 = descale(z1 + t13 * _F0765, shift)
    o6 = descale(z1 - t12 * _F1847, shift)
    a7, a5, a3, a1 = _odd_part(t4, t5, t6, t7)
    o7, o5, o3, o1 = (descale(v, shift) for v in (a7, a5, a3, a1))
    return torch.stack([o0, o1, o2, o3, o4, o5, o6, o7], dim=dim)


def _idct_1d(
    d: torch.Tensor, first_pass: bool, dim: int, descale: Callable[[torch.Tensor, int], torch.Tensor] = _descale
) -> torch.Tensor:
    """jpeg_idct_islow along `dim` of [8, 8, M] blocks, without the final range limiting."""
    c = [d.select(dim, i) for i in range(8)]
    z1 = (c[2] + c[6]) * _F0541
    t2, t3 = z1 - c[6] * _F1847, z1 + c[2] * _F0765
    t0, t1 = (c[0] + c[4]) << _CONST_BITS, (c[0] - c[4]) << _CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    # odd inputs y7, y5, y3, y1 play the roles of tmp4..tmp7 in the forward transform
    o0, o1, o2, o3 = _odd_part(c[7], c[5], c[3], c[1])
    shift = _CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS + 3
    rows = (t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3)
    return torch.stack([descale(v, shift) for v in rows], dim=dim)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """[N, H, W] (H, W multiples of 8) -> [8 (row), 8 (column), N * H/8 * W/8]: each of the
    64 positions of a block is one contiguous run over all blocks, so that the transforms'
    element-wise steps read contiguous memory."""
    n, h, w = plane.shape
    return plane.view(n, h // 8, 8, w // 8, 8).permute(2, 4, 0, 1, 3).reshape(8, 8, -1)


def _unblocks(b: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    return b.view(8, 8, n, h // 8, w // 8).permute(2, 3, 0, 4, 1).reshape(n, h, w)


def _pass_shifts(forward: bool, first_pass: bool) -> list[int]:
    """The descale shift of each output of a 1-D pass (0: not descaled), as _fdct_1d and
    _idct_1d apply them."""
    if forward:
        s = _CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS
        even = 0 if first_pass else _PASS1_BITS
        return [even, s, s, s, even, s, s, s]
    return [_CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS + 3] * 8


@functools.cache
def _pass_matrix(forward: bool, first_pass: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1-D pass before its descales is an integer-linear map of its 8 inputs: its 8 x 8
    integer matrix (the pass itself run on unit vectors, in float64), and the per-output
    rounding bias and shift of the descale."""
    fn = _fdct_1d if forward else _idct_1d
    eye = torch.eye(8, dtype=torch.int64).view(8, 8, 1)
    matrix = fn(eye, first_pass, 0, descale=lambda v, n: v)[:, :, 0].to(torch.float64)
    shifts = torch.tensor(_pass_shifts(forward, first_pass), dtype=torch.int64)
    bias = torch.where(shifts > 0, 1 << (shifts - 1).clamp(min=0), torch.zeros_like(shifts))
    return matrix, bias.view(8, 1), shifts.view(8, 1)


def _linear_pass(b: torch.Tensor, forward: bool, first_pass: bool, dim: int) -> torch.Tensor:
    """_fdct_1d / _idct_1d along `dim` of [8, 8, M] int64 blocks, as one float64 matrix product
    then the descales. Exact: every product and partial sum is an integer below 2**53 (inputs
    below 2**21 in magnitude for 8-bit samples and 16-bit coefficients, matrix rows summing
    below 2**16 in absolute value)."""
    matrix, bias, shifts = (t.to(b.device) for t in _pass_matrix(forward, first_pass))
    x = b.movedim(dim, 0)
    y = (matrix @ x.reshape(8, -1).to(torch.float64)).to(torch.int64)
    y = (y + bias) >> shifts
    return y.view(x.shape).movedim(0, dim)


def _code_plane(plane: torch.Tensor, qtable: list[int]) -> torch.Tensor:
    """Level shift, islow FDCT, quantise (round half away from zero), dequantise, islow IDCT.
    Each 1-D pass of the transforms is one exact integer matrix product (see _linear_pass)."""
    n, h, w = plane.shape
    b = _blocks((plane - 128).to(torch.int64))
    b = _linear_pass(b, True, True, 1)  # rows
    b = _linear_pass(b, True, False, 0)  # columns
    b = _quantise(b, qtable) * torch.tensor(qtable, dtype=torch.int64, device=b.device).view(8, 8, 1)
    b = _linear_pass(b, False, True, 0)  # columns first, as libjpeg
    b = _linear_pass(b, False, False, 1)
    return (_unblocks(b, n, h, w) + 128).clamp(0, 255).to(plane.dtype)


def _rgb_to_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """jccolor.c rgb_ycc_convert (16-bit fixed point)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    half, off = 1 << 15, 128 << 16
    y = (19595 * r + 38470 * g + 7471 * b + half) >> 16
    cb = (-11059 * r - 21709 * g + 32768 * b + off + half - 1) >> 16
    cr = (32768 * r - 27439 * g - 5329 * b + off + half - 1) >> 16
    return torch.stack([y, cb, cr], dim=1)


def _ycc_to_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """jdcolor.c ycc_rgb_convert (16-bit fixed point), clamped to 0..255."""
    half = 1 << 15
    cb, cr = cb - 128, cr - 128
    r = y + ((91881 * cr + half) >> 16)
    g = y + ((-22554 * cb - 46802 * cr + half) >> 16)
    b = y + ((116130 * cb + half) >> 16)
    return torch.stack([r, g, b], dim=1).clamp(0, 255)


def _downsample_h2v2(plane: torch.Tensor) -> torch.Tensor:
    """jcsample.c h2v2_downsample: 2x2 sums + bias 1, 2, 1, 2, ... along each row, >> 2."""
    n, h, w = plane.shape
    s = plane.view(n, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
    bias = 1 + (torch.arange(w // 2, device=plane.device) % 2)
    return (s + bias) >> 2


def _upsample_h2v2_fancy(plane: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """jdsample.c h2v2_fancy_upsample (triangle filter, edges replicated), cropped to out size."""
    above = torch.cat([plane[:, :1], plane[:, :-1]], dim=1)
    below = torch.cat([plane[:, 1:], plane[:, -1:]], dim=1)
    rows = torch.stack([3 * plane + above, 3 * plane + below], dim=2)  # [N, h, 2, w]
    rows = rows.flatten(1, 2)  # colsums, [N, 2h, w]
    left = torch.cat([rows[..., :1], rows[..., :-1]], dim=-1)
    right = torch.cat([rows[..., 1:], rows[..., -1:]], dim=-1)
    even = (3 * rows + left + 8) >> 4
    odd = (3 * rows + right + 7) >> 4
    out = torch.stack([even, odd], dim=-1).flatten(-2)
    return out[:, :out_h, :out_w]


def jpeg_roundtrip(levels: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode uint8-level RGB images [N, 3, H, W] (float 0..255); same shape out."""
    n, _, h, w = levels.shape
    ph, pw = -h % 16, -w % 16  # libjpeg replicates the last row/column up to whole MCUs
    # int32 throughout (the fixed-point colour sums stay below 2**25), int64 in the transforms
    rgb = F.pad(levels.round(), (0, pw, 0, ph), mode="replicate").to(torch.int32)
    ycc = _rgb_to_ycc(rgb)
    luma_q, chroma_q = quant_table(quality, False), quant_table(quality, True)
    y = _code_plane(ycc[:, 0], luma_q)[:, :h, :w]
    ch, cw = (h + 1) // 2, (w + 1) // 2  # the chroma planes' real size
    chroma = []
    for i in (1, 2):
        sub = _downsample_h2v2(ycc[:, i])
        sub = _code_plane(sub, chroma_q)[:, :ch, :cw]
        chroma.append(_upsample_h2v2_fancy(sub, h, w))
    return _ycc_to_rgb(y, chroma[0], chroma[1]).to(levels.dtype)
