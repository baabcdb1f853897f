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
        x = _mix(_mix(stream_key[:, None] ^ counter[None, :]) + stream_key[:, None])
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

    def poisson(self, rate: torch.Tensor) -> torch.Tensor:
        """Poisson draws with per-element rates, `rate` of shape [N, ...]; returns float32.

        Small rates (< 10) by inversion with a fixed number of steps; larger ones by Hörmann's
        transformed rejection (PTRS, as in numpy), vectorised over a fixed number of rounds.
        """
        rate = rate.to(torch.float32)
        shape = tuple(rate.shape[1:])
        out = torch.zeros_like(rate)
        small = rate < 10.0
        out = torch.where(small, self._poisson_inversion(rate.clamp(max=10.0), shape), out)
        if bool((~small).any()):
            out = torch.where(small, out, self._poisson_ptrs(rate.clamp(min=10.0), shape))
        return out

    def _poisson_inversion(self, rate: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        # P(X > 40 | rate <= 10) < 1e-11: 40 steps are exact in practice.
        u = self.uniform(*shape)
        p = torch.exp(-rate)
        cdf = p.clone()
        k = torch.zeros_like(rate)
        for i in range(1, 41):
            below = u > cdf
            k = k + below.to(k.dtype)
            p = p * rate / i
            cdf = cdf + p
        return k

    def _poisson_ptrs(self, rate: torch.Tensor, shape: tuple[int, ...], rounds: int = 12) -> torch.Tensor:
        slam = torch.sqrt(rate)
        loglam = torch.log(rate)
        b = 0.931 + 2.53 * slam
        a = -0.059 + 0.02483 * b
        inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
        vr = 0.9277 - 3.6224 / (b - 2.0)
        result = torch.full_like(rate, float("nan"))
        for _ in range(rounds):
            u = self.uniform(*shape) - 0.5
            v = self.uniform(*shape).clamp(min=1e-12)
            us = 0.5 - u.abs()
            k = torch.floor((2.0 * a / us + b) * u + rate + 0.43)
            quick = (us >= 0.07) & (v <= vr)
            rejected = (k < 0) | ((us < 0.013) & (v > us))
            log_accept = torch.log(v) + torch.log(inv_alpha) - torch.log(a / (us * us) + b)
            slow = ~rejected & (log_accept <= -rate + k * loglam - torch.lgamma(k + 1.0))
            accept = (quick | slow) & torch.isnan(result)
            result = torch.where(accept, k, result)
        # Left after all rounds (probability < 1e-12 per element): the normal approximation.
        fallback = torch.clamp(torch.round(rate + slam * self.normal(*shape)), min=0.0)
        return torch.where(torch.isnan(result), fallback, result)

    def subset(self, index: slice) -> SampleRNG:
        """The streams of some of the samples, at the same point of their sequences."""
        child = object.__new__(SampleRNG)
        child._sample_keys = self._sample_keys[index]
        child.device = self.device
        child._stream = self._stream
        return child
