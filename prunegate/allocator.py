"""Give freed heap memory back to the system during a long pass (glibc's malloc_trim).

Why: the pass makes model inputs in a producer thread and frees them in the main thread. With
glibc's allocator that pattern fragments the heap: the freed blocks are reused only in part, and
the process's resident memory grew by about 15 MB/s at 224 px (measured: 0.7 -> 3.2 GB over a
10,000-image run, against a flat 0.8 GB with everything in one thread). malloc_trim(0) returns
every free page of every arena to the system, so resident memory stays that of the live data.
Fixing glibc's mmap threshold instead (MALLOC_MMAP_THRESHOLD_) also stops the growth, but every
large tensor then costs fresh page faults: the same run took 1.8x as long.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    return trim


class HeapTrimmer:
    """Call `maybe_trim()` often (e.g. after every batch): it trims at most every `interval_s`
    seconds, and does nothing where the C library has no malloc_trim."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._trim = _malloc_trim()
        self._last = time.monotonic()

    def maybe_trim(self) -> None:
        """Trim if the interval has passed since the last trim."""
        now = time.monotonic()
        if self._trim is not None and now - self._last >= self.interval_s:
            self._trim(0)
            self._last = now
