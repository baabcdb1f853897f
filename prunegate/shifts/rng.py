"""Counter-based random numbers, keyed per sample.

Every draw is a pure function of (key, sample id, stream, element index), computed with
integer hashing in torch ops. So a sample gets the same noise whatever batch it lands in,
however the data is sharded across processes, and on CPU and CUDA alike — without a Python
loop over images or a `torch.Generator` per sample.

The hash is Chris Wellons' "lowbias32" (a 32-bit integer finaliser with very low bias), done in
int32 with wrap-around multiplication; right shifts are masked because torch shifts signed
integers arithmetically.
"""

from __future__ import annotations

import hashlib
import math

import torch

from ._alias import AliasTable

_GOLDEN = -0x61C88647  # 0x9E3779B9 as int32
_M1 = 0x7FEB352D
_M2 = -0x7B93597B  # 0x846CA68B as int32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 tensors (bit pattern of uint32)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    x = x ^ ((x >> 16) & 0xFFFF)
    return x


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """_mix in place, on a temporary int32 tensor (fewer allocations on big draws)."""
    x ^= (x >> 16).bitwise_and_(0xFFFF)
    x *= _M1
    x ^= (x >> 15).bitwise_and_(0x1FFFF)
    x *= _M2
    x ^= (x >> 16).bitwise_and_(0xFFFF)
    return x


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def task_key(seed: int, task: str) -> int:
    """A 64-bit key for one task under one policy seed."""
    digest = hashlib.sha256(f"prunegate:{seed}:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SampleRNG:
    """Random draws for a batch of samples, each sample with its own stream.

    `sample_ids` are the samples' global indices in their source (not their position in the
    batch). Each call to a draw method uses the next stream, so the sequence of calls made by a
    shift must not depend on the batch either (it never does: shifts draw per batch, not per image).
    """

    def __init__(self, key: int, sample_ids: torch.Tensor, device: torch.device | str | None = None):
        device = torch.device(device) if device is not None else sample_ids.device
        ids = sample_ids.to(device=device, dtype=torch.int64)
        lo = (ids & 0xFFFFFFFF).to(torch.int32)  # sample ids beyond 2**32 are not expected
        k0, k1 = _to_int32(key), _to_int32(key >> 32)
        self._sample_keys = _mix(_mix(lo ^ k0) + k1)  # [N] int32
        self.device = device
        self._stream = 0

    @property
    def n(self) -> int:
        return int(self._sample_keys.shape[0])

    def bits(self, *shape: int) -> torch.Tensor:
        """Uniform 32-bit patterns as int32, shape [N, *shape]."""
        self._stream += 1
        count = math.prod(shape)
        stream_key = _mix(self._sample_keys + _to_int32(self._stream * 0x9E3779B9))
        counter = torch.arange(count, device=self.device, dtype=torch.int32) * _GOLDEN
        key = stream_key[:, None]
        x = _mix_(_mix_(key ^ counter[None, :]).add_(key))
        return x.view(self.n, *shape)

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U[0, 1) with 24 bits of resolution, shape [N, *shape]."""
        top24 = (self.bits(*shape) >> 8) & 0xFFFFFF
        return top24.to(dtype) * (1.0 / (1 << 24))

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal (Box-Muller), shape [N, *shape]."""
        u1 = 1.0 - self.uniform(*shape, dtype=dtype)  # (0, 1]: log is finite
        u2 = self.uniform(*shape, dtype=dtype)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in [low, high), shape [N, *shape] (int64)."""
        u = self.uniform(*shape, dtype=torch.float64)
        return (low + torch.floor(u * (high - low))).to(torch.int64).clamp_(low, high - 1)

    def alias(self, table: AliasTable, row: torch.Tensor) -> torch.Tensor:
        """One draw per element from row `row[...]` (int64, shape [N, ...]) of an alias table,
        int64; uses one stream (one 32-bit number per element)."""
        return table.draw(row.to(self.device), self.bits(*row.shape[1:]))

    def _uniform_at(self, stream: int, pos: torch.Tensor | None, per_sample: int) -> torch.Tensor:
        """uniform() of stream `stream` (float32), flattened to [N * per_sample], at the flat
        positions `pos` only (all of them if None): the same numbers the whole draw has there."""
        stream_key = _mix(self._sample_keys + _to_int32(stream * 0x9E3779B9))
        if pos is None:
            counter = torch.arange(per_sample, device=self.device, dtype=torch.int32) * _GOLDEN
            key = stream_key[:, None]
            x = _mix_(_mix_(key ^ counter[None, :]).add_(key)).flatten()
        else:
            rows = torch.div(pos, per_sample, rounding_mode="floor")
            counter = (pos - rows * per_sample).to(torch.int32) * _GOLDEN
            key = stream_key.index_select(0, rows)
            x = _mix_(_mix_(key ^ counter).add_(key))
        return x.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF).to(torch.float32).mul_(1.0 / (1 << 24))

    def poisson(self, rate: torch.Tensor) -> torch.Tensor:
        """Poisson draws with per-element rates, `rate` of shape [N, ...]; returns float32.

        Small rates (< 10) by inversion (sequential search, at most 40 steps); larger ones by
        Hörmann's transformed rejection (PTRS, as in numpy), at most 12 rounds, then the normal
        approximation (probability < 1e-12 per element). Uses 1 stream, or 27 when some rate is
        >= 10: stream +1 for the inversion's uniforms, +2k and +3k for PTRS round k's (u, v),
        +26 and +27 for the fallback normals. Every element reads only its own counters in
        those streams, so each step can run on just the elements still undecided, and the
        result does not depend on which other elements are in the batch.
        """
        rate = rate.to(torch.float32)
        per_sample = math.prod(rate.shape[1:])
        flat = rate.reshape(-1)
        first = self._stream + 1
        small = flat < 10.0
        n_small = int(small.sum())
        out = torch.zeros_like(flat)
        if n_small:
            pos = None if n_small == flat.numel() else small.nonzero().flatten()
            counts = self._poisson_inversion(flat if pos is None else flat[pos], pos, per_sample, first)
            out = counts if pos is None else out.index_put_((pos,), counts)
        self._stream = first
        if n_small < flat.numel():
            pos = None if n_small == 0 else (~small).nonzero().flatten()
            counts = self._poisson_ptrs(flat if pos is None else flat[pos], pos, per_sample, first + 1)
            out = counts if pos is None else out.index_put_((pos,), counts)
            self._stream = first + 26
        return out.view_as(rate)

    def _poisson_inversion(
        self, rate: torch.Tensor, pos: torch.Tensor | None, per_sample: int, stream: int
    ) -> torch.Tensor:
        # P(X > 40 | rate < 10) < 1e-11: 40 steps are exact in practice. k = the number of
        # steps with u > cdf; cdf only grows, so an element is final at its first u <= cdf.
        u = self._uniform_at(stream, pos, per_sample)
        p = torch.exp(-rate)
        cdf = p.clone()
        out = torch.zeros_like(rate)
        k = torch.zeros_like(rate)
        live = None  # positions in `out` of the elements still searched (None: all)
        for i in range(1, 41):
            below = u > cdf
            count = int(below.sum())
            if count == 0:
                break
            if count <= below.numel() // 2:  # set the finished elements aside: their k is final
                out = k if live is None else out.index_put_((live,), k)
                keep = below.nonzero().flatten()
                live = keep if live is None else live[keep]
                u, p, cdf, rate, k = (t[keep] for t in (u, p, cdf, rate, k))
                below = torch.ones_like(below[keep])
            k = k + below.to(k.dtype)
            p = p * rate / i
            cdf = cdf + p
        return k if live is None else out.index_put_((live,), k)

    def _poisson_ptrs(
        self, rate: torch.Tensor, pos: torch.Tensor | None, per_sample: int, stream: int, rounds: int = 12
    ) -> torch.Tensor:
        result = torch.zeros_like(rate)
        live = None  # positions in `result` of the elements not yet accepted (None: all)
        for r in range(rounds):
            slam = torch.sqrt(rate)
            b = 0.931 + 2.53 * slam
            a = -0.059 + 0.02483 * b
            vr = 0.9277 - 3.6224 / (b - 2.0)
            u = self._uniform_at(stream + 2 * r, pos, per_sample) - 0.5
            v = self._uniform_at(stream + 2 * r + 1, pos, per_sample).clamp(min=1e-12)
            us = 0.5 - u.abs()
            k = torch.floor((2.0 * a / us + b) * u + rate + 0.43)
            accept = (us >= 0.07) & (v <= vr)  # the quick acceptance
            slow = (~accept).nonzero().flatten()
            if slow.numel():
                rs, ks, us_s, vs, a_s, b_s = (t[slow] for t in (rate, k, us, v, a, b))
                inv_alpha = 1.1239 + 1.1328 / (b_s - 3.4)
                rejected = (ks < 0) | ((us_s < 0.013) & (vs > us_s))
                log_accept = torch.log(vs) + torch.log(inv_alpha) - torch.log(a_s / (us_s * us_s) + b_s)
                loglam = torch.log(rs)
                accept[slow] = ~rejected & (log_accept <= -rs + ks * loglam - torch.lgamma(ks + 1.0))
            if live is None:
                result = torch.where(accept, k, result)
            else:
                result.index_put_((live[accept],), k[accept])
            keep = (~accept).nonzero().flatten()
            if keep.numel() == 0:
                return result
            live = keep if live is None else live[keep]
            pos = keep if pos is None else pos[keep]
            rate = rate[keep]
        # Left after all rounds: the normal approximation.
        u1 = 1.0 - self._uniform_at(stream + 2 * rounds, pos, per_sample)  # (0, 1]: log is finite
        u2 = self._uniform_at(stream + 2 * rounds + 1, pos, per_sample)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        result.index_put_((live,), torch.clamp(torch.round(rate + torch.sqrt(rate) * z), min=0.0))
        return result

    def subset(self, index: slice) -> SampleRNG:
        """The streams of some of the samples, at the same point of their sequences."""
        child = object.__new__(SampleRNG)
        child._sample_keys = self._sample_keys[index]
        child.device = self.device
        child._stream = self._stream
        return child
