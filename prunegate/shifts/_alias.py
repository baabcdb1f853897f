"""Walker alias tables: O(1) draws from a few fixed discrete distributions.

Shot noise draws Poisson(level / 255 * photons) for uint8 images, so at one severity there are
only 256 distinct rates. Their distributions go into one table, a row per rate, and a draw costs
one 32-bit random number and one lookup, whatever the rate, instead of an iterative sampler.
Everything a draw touches is an integer, so CPU and CUDA give the same counts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

FRACTION_BITS = 32  # a draw's 32 bits pick the column and the position within it
# Each tail left out of a row has probability below this (the draws' own resolution is ~1e-7).
TAIL = 1e-13
# Values are packed in 15 bits, so rates are limited to about 30,000.
VALUE_BITS = 15
MAX_RATE = 25_000.0


@dataclass(frozen=True)
class AliasTable:
    """`packed[row, col]`: own value | alias value << 15 | threshold << 30, flattened.

    Column `col` of a row is taken with probability 1 / width; within it, the column's own value
    comes out with probability threshold / 2**32, else its alias.
    """

    packed: torch.Tensor  # int64 [rows * width]
    width: int

    def to(self, device: torch.device) -> AliasTable:
        return self if self.packed.device == device else AliasTable(self.packed.to(device), self.width)

    def draw(self, row: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Values of rows `row` (int64) for the uniform 32-bit patterns `bits` (int32), int64."""
        u = bits.to(torch.int64).bitwise_and_(0xFFFFFFFF).mul_(self.width)
        col = u >> FRACTION_BITS
        entry = self.packed[row.mul(self.width).add_(col)]
        own = u.bitwise_and_(0xFFFFFFFF) < (entry >> 2 * VALUE_BITS)
        shift = torch.where(own, 0, VALUE_BITS)
        return (entry >> shift).bitwise_and_((1 << VALUE_BITS) - 1)


def poisson_pmf_rows(rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson probabilities per rate over a common window of counts: (lo [R], pmf [R, width]),
    pmf[r, j] = P(X = lo[r] + j), each row's tails beyond TAIL cut off and the rest renormalised."""
    top = int(math.ceil(float(rates.max()) + 12.0 * math.sqrt(float(rates.max())) + 40.0))
    k = torch.arange(top + 1, dtype=torch.float64)
    lam = rates.to(torch.float64)[:, None]
    logp = k * torch.log(lam.clamp(min=1e-300)) - lam - torch.lgamma(k + 1.0)
    pmf = torch.where(lam > 0, torch.exp(logp), (k == 0).to(torch.float64))
    cdf = pmf.cumsum(dim=1)
    sf = pmf.flip(1).cumsum(dim=1).flip(1)  # P(X >= k)
    keep = (cdf > TAIL) & (sf > TAIL)
    lo = keep.to(torch.int64).argmax(dim=1)
    hi = top - keep.flip(1).to(torch.int64).argmax(dim=1)
    width = int((hi - lo).max()) + 1
    cols = lo[:, None] + torch.arange(width)
    window = torch.where(cols <= hi[:, None], pmf.gather(1, cols.clamp(max=top)), torch.zeros(()))
    return lo, window / window.sum(dim=1, keepdim=True)


def build_alias_table(lo: torch.Tensor, pmf: torch.Tensor) -> AliasTable:
    """Alias tables for the rows of `pmf` (values lo[r] + j), by pairing, in every row at once,
    the least-filled column left with the fullest (each step settles one column per row)."""
    rows, width = pmf.shape
    if int(lo.max()) + width > (1 << VALUE_BITS):
        raise ValueError(f"alias table values must stay below {1 << VALUE_BITS}")
    # Each column holds 1 when settled. Two copies of the fills: settled columns read +inf in
    # one (for argmin) and -inf in the other (for argmax).
    fill_lo = pmf * width
    fill_hi = fill_lo.clone()
    threshold = torch.ones(rows, width, dtype=torch.float64)
    alias = torch.arange(width).expand(rows, width).clone()
    row_ids = torch.arange(rows)
    for _ in range(width - 1):
        small = fill_lo.argmin(dim=1)
        large = fill_hi.argmax(dim=1)
        take = fill_lo[row_ids, small]
        threshold[row_ids, small] = take.clamp(0.0, 1.0)
        alias[row_ids, small] = large
        fill_lo[row_ids, small] = float("inf")
        fill_hi[row_ids, small] = float("-inf")
        lent = 1.0 - take  # the large column lends what the small one lacks
        fill_lo[row_ids, large] -= lent
        fill_hi[row_ids, large] -= lent
    # The column left last holds ~1 (up to rounding) and keeps threshold 1.
    scaled = torch.round(threshold * float(1 << FRACTION_BITS)).to(torch.int64)
    own = lo[:, None] + torch.arange(width)
    other = lo[:, None] + alias
    packed = own | (other << VALUE_BITS) | (scaled << 2 * VALUE_BITS)
    return AliasTable(packed.flatten(), width)


@functools.lru_cache(maxsize=64)
def poisson_levels_table(photons: float, device: torch.device) -> AliasTable:
    """Poisson(k / 255 * photons) for the uint8 levels k = 0..255 (the rate as the reference
    computes it: np.array(img) / 255. * photons), on `device`."""
    if not 0.0 <= photons <= MAX_RATE:
        raise ValueError(f"photons must be in [0, {MAX_RATE:g}] for the level table; got {photons}")
    rates = torch.arange(256, dtype=torch.float64) / 255.0 * photons
    return build_alias_table(*poisson_pmf_rows(rates)).to(device)
