"""prunegate.ahead: a generator run ahead of its consumer in a background thread."""

from __future__ import annotations

import threading
import time

import pytest

from prunegate.ahead import Ahead


def test_items_arrive_in_order_and_all_of_them():
    with Ahead(iter(range(100)), depth=3) as ahead:
        assert list(ahead) == list(range(100))


def test_the_producer_runs_at_most_depth_items_ahead():
    made = []

    def items():
        for i in range(20):
            made.append(i)
            yield i

    with Ahead(items(), depth=2) as ahead:
        for got in ahead:
            time.sleep(0.01)  # let the producer run as far as it may
            # queued (depth) + the one it holds while blocked on the full queue
            assert len(made) - (got + 1) <= 3


def test_an_error_is_raised_after_the_items_made_before_it():
    class Broken(Exception):
        pass

    def items():
        yield 1
        yield 2
        raise Broken("image 3 is damaged")

    got = []
    with pytest.raises(Broken, match="image 3 is damaged"), Ahead(items(), depth=4) as ahead:
        for item in ahead:
            got.append(item)
    assert got == [1, 2]


def test_leaving_early_stops_the_producer_and_closes_the_generator_in_its_thread():
    closed_in = []

    def items():
        try:
            yield from range(10_000)
        finally:
            closed_in.append(threading.current_thread().name)

    ahead = Ahead(items(), depth=2, name="producer-under-test")
    with ahead:
        for item in ahead:
            if item == 5:
                break
    assert not ahead.running
    assert closed_in == ["producer-under-test"]
    assert list(ahead) == []  # a closed Ahead gives nothing more


def test_a_consumer_error_stops_the_producer():
    def items():
        while True:
            yield 0

    ahead = Ahead(items(), depth=2)
    with pytest.raises(KeyboardInterrupt), ahead:
        next(ahead)
        raise KeyboardInterrupt
    assert not ahead.running


def test_both_sides_overlap_and_the_wait_is_measured():
    # Each side takes 0.1 s an item (sleeping releases the GIL, as torch's kernels do): run one
    # after the other, 6 items cost 1.2 s; overlapped, about 0.7 s.
    def items():
        for i in range(6):
            time.sleep(0.1)
            yield i

    tick = time.perf_counter()
    with Ahead(items(), depth=2) as ahead:
        for _ in ahead:
            time.sleep(0.1)
    elapsed = time.perf_counter() - tick
    assert elapsed < 1.0
    assert 0.05 < ahead.waited_s < 0.6  # the first item, at least, was waited for


def test_depth_must_be_positive():
    with pytest.raises(ValueError):
        Ahead(iter([]), depth=0)
