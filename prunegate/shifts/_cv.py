"""The OpenCV operations the reference's water spatter chains, rebuilt in batched torch.

Images are [N, 1, H, W] float tensors holding uint8 levels (0..255) unless stated otherwise.
Each function documents which cv2 behaviour it reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._filters import pad2d

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_TG22 = 13573  # OpenCV Canny: round(tan(22.5 deg) * 2**15)


def _neighbour(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """m[y + dy, x + dx] with zeros outside the image (Canny's zeroed magnitude border)."""
    padded = F.pad(m, (1, 1, 1, 1))
    h, w = m.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """cv2.Canny(img, low, high) with aperture 3 and the L1 gradient (both cv2 defaults).

    Sobel with BORDER_REPLICATE; |dx| + |dy|; non-maximum suppression in OpenCV's integer
    sector test (strict > on one side, >= on the other, both strict on diagonals); then
    hysteresis: weak pixels (> low) joined by 8-connectivity to a strong one (> high).
    Returns a bool edge map.
    """
    planes = pad2d(img, 1, 1, "nearest")
    kx = _SOBEL_X.to(img)
    dx = F.conv2d(planes, kx.view(1, 1, 3, 3))
    dy = F.conv2d(planes, kx.T.contiguous().view(1, 1, 3, 3))
    mag = dx.abs() + dy.abs()
    low_i, high_i = float(int(low)), float(int(high))  # OpenCV floors both thresholds

    ax, ay = dx.abs().to(torch.int64), dy.abs().to(torch.int64)
    tg22x = ax * _TG22
    ys = ay << 15
    horizontal = ys < tg22x
    vertical = ~horizontal & (ys > tg22x + (ax << 16))
    diagonal = ~horizontal & ~vertical
    s = torch.where((dx < 0) ^ (dy < 0), -1, 1)  # sign of dx * dy, as (dx ^ dy) < 0
    keep_h = (mag > _neighbour(mag, 0, -1)) & (mag >= _neighbour(mag, 0, 1))
    keep_v = (mag > _neighbour(mag, -1, 0)) & (mag >= _neighbour(mag, 1, 0))
    # diagonal: m > mag[y-1, x-s] and m > mag[y+1, x+s]
    up_left, up_right = _neighbour(mag, -1, -1), _neighbour(mag, -1, 1)
    down_left, down_right = _neighbour(mag, 1, -1), _neighbour(mag, 1, 1)
    keep_d = torch.where(s > 0, (mag > up_left) & (mag > down_right), (mag > up_right) & (mag > down_left))
    nms = (mag > low_i) & ((horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d))
    edges = nms & (mag > high_i)
    # hysteresis: grow the strong set inside the candidate set until it stops changing (the
    # fixed point does not depend on the batch, only the number of rounds does)
    while True:
        grown = nms & (F.max_pool2d(edges.to(img.dtype), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


# cv2.distanceTransform(DIST_L2, maskSize=5): the 5x5 chamfer metric (1, 1.4, 2.1969), which
# OpenCV stores in 16.16 fixed point (CV_FLT_TO_FIX of the float32 constants).
_HV, _DIAG, _KNIGHT = 65536, 91750, 143976
_CHAMFER_MOVES = (
    [((0, 1), _HV), ((0, -1), _HV), ((1, 0), _HV), ((-1, 0), _HV)]
    + [((a, b), _DIAG) for a in (-1, 1) for b in (-1, 1)]
    + [((a, b), _KNIGHT) for a in (-2, -1, 1, 2) for b in (-2, -1, 1, 2) if abs(a) != abs(b)]
)


def chamfer_distance(zero: torch.Tensor, cap: float) -> torch.Tensor:
    """cv2.distanceTransform(src, DIST_L2, 5) followed by THRESH_TRUNC at `cap`.

    `zero` marks src's zero pixels (the sources). OpenCV's two raster passes give the
    shortest-path distance under the chamfer moves; each move costs >= 1, so `cap` rounds of
    parallel relaxation find every distance up to `cap` exactly, and larger ones are capped.
    Pixels outside the image are unreachable, as in OpenCV's INF-filled border.
    """
    inf = (int(cap) + 2) << 16  # int32 holds it (and inf + the longest move) for any cap < 30000
    d = torch.where(zero, 0, inf).to(torch.int32)
    h, w = d.shape[-2:]
    for _ in range(int(cap) + 1):
        padded = F.pad(d, (2, 2, 2, 2), value=inf)
        plus = {cost: padded + cost for cost in (_HV, _DIAG, _KNIGHT)}  # 3 adds, not 16
        best = d.clone()
        for (dy, dx), cost in _CHAMFER_MOVES:
            torch.minimum(best, plus[cost][..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w], out=best)
        if torch.equal(best, d):  # a fixed point: more rounds change nothing
            break
        d = best
    dist = d.to(torch.float32) * (1.0 / 65536.0)
    return dist.clamp(max=cap)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist per image: lut[i] = round(255 * (cdf(i) - h0) / (total - h0)) from the
    first occupied level (h0 its count); a one-level image stays as it is."""
    n = img.shape[0]
    levels = img.reshape(n, -1).to(torch.int64)
    hist = torch.zeros(n, 256, dtype=torch.int64, device=img.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    total = levels.shape[1]
    first = (hist > 0).to(torch.int64).argmax(dim=1, keepdim=True)
    h0 = hist.gather(1, first)
    scale = 255.0 / (total - h0).clamp(min=1).to(torch.float32)
    lut = torch.round((hist.cumsum(1) - h0).to(torch.float32) * scale)
    lut = torch.where(torch.arange(256, device=img.device)[None] <= first, 0.0, lut).clamp(0, 255)
    out = lut.gather(1, levels).reshape(img.shape)
    single = (h0 == total).view(n, 1, 1, 1)
    return torch.where(single, img, out)
