"""prunegate.allocator: freed heap given back at most once an interval."""

from __future__ import annotations

import sys

import pytest

from prunegate.allocator import HeapTrimmer


def test_trims_at_most_once_per_interval(monkeypatch) -> None:
    calls = []
    trimmer = HeapTrimmer(interval_s=0.0)
    monkeypatch.setattr(trimmer, "_trim", lambda pad: calls.append(pad) or 1)
    trimmer.maybe_trim()
    trimmer.maybe_trim()
    assert calls == [0, 0]
    slow = HeapTrimmer(interval_s=3600.0)
    monkeypatch.setattr(slow, "_trim", lambda pad: calls.append(pad) or 1)
    slow.maybe_trim()
    assert calls == [0, 0]  # not yet an hour


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_the_real_malloc_trim_runs() -> None:
    trimmer = HeapTrimmer(interval_s=0.0)
    assert trimmer._trim is not None  # glibc here
    trimmer.maybe_trim()
