"""Jobs on a thread per core with single-threaded torch ops."""

from __future__ import annotations

import threading

import pytest
import torch

from prunegate.cpu_pool import op_threads, run_jobs


def test_every_job_runs_once_on_worker_threads_with_one_op_thread():
    seen: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        with lock:
            seen.append((i, torch.get_num_threads(), threading.current_thread().name))

    with op_threads(2):
        run_jobs([lambda i=i: job(i) for i in range(20)], workers=2)
        assert torch.get_num_threads() == 2  # restored
    assert sorted(i for i, _, _ in seen) == list(range(20))
    assert {n for _, n, _ in seen} == {1}
    assert threading.main_thread().name not in {name for _, _, name in seen}


def test_one_worker_runs_inline_in_order():
    seen: list[tuple[int, str]] = []
    run_jobs([lambda i=i: seen.append((i, threading.current_thread().name)) for i in range(5)], workers=1)
    assert seen == [(i, threading.main_thread().name) for i in range(5)]


def test_a_failing_job_raises_and_the_thread_count_is_restored():
    def boom() -> None:
        raise ValueError("boom")

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="boom"):
        run_jobs([lambda: None, boom, lambda: None], workers=2)
    assert torch.get_num_threads() == before
