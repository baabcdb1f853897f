"""Run independent CPU jobs on one thread per core, each job's torch ops single-threaded.

Why not torch's own intra-op threads: a corruption at 224 px is 20-70 small ops (0.1-0.25 ms
each), and splitting every op over the cores pays a barrier per op; when another process holds
a core the barrier waits for it (measured on 2 cores under load: 5.2 s per image for the
imagenet-c suite with 2 intra-op threads, 1.06 s with 1). Whole jobs on separate threads need no
barrier: torch releases the GIL inside its ops, as Pillow and numpy do inside theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


@contextmanager
def op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n for the block (the calling thread's), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _single_threaded() -> None:
    torch.set_num_threads(1)  # OpenMP's count is per thread: set it in each worker too


def run_jobs(jobs: Sequence[Callable[[], None]], workers: int) -> None:
    """Run every job, on `workers` threads with single-threaded torch ops (inline when workers
    is 1 or there is one job). The first job (in order) that raises re-raises here; the jobs
    not yet started are dropped."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with op_threads(1), ThreadPoolExecutor(workers, initializer=_single_threaded) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
