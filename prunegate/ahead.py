"""Run a generator ahead of its consumer, in a background thread, through a bounded queue.

The streaming pass uses it to make the next inputs (decoding, shifts) while the models work on
the current ones: torch and ONNX Runtime release the GIL in their kernels, and sandboxed models
run in processes of their own, so the two sides overlap on the cores. The queue's depth bounds
the memory held ahead (a few batches' inputs).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"
_POLL_S = 0.1  # how often a blocked producer looks whether the consumer has gone


class Ahead(Generic[T]):
    """Iterate `items` in a background thread, at most `depth` items ahead of the consumer.

    An exception raised by `items` is raised again, as is, by the consumer's next `next()`, after
    the items made before it. Leaving the `with` block (or `close()`) stops the producer at its
    next item and closes `items` in the producer's thread. `waited_s`: the consumer's time spent
    waiting for items, what the producer did not hide."""

    def __init__(self, items: Iterable[T], depth: int = 2, name: str = "prunegate-ahead") -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.waited_s = 0.0
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, items: Iterable[T]) -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not self._put(_ITEM, item):
                    return
            self._put(_END, None)
        except BaseException as exc:  # handed to the consumer, whatever it is
            self._put(_ERROR, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator's own cleanup (its data workers) runs here, in its thread

    def _put(self, kind: str, value: object) -> bool:
        """Queue one entry; False once the consumer has stopped listening."""
        while not self._stopped.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    @property
    def running(self) -> bool:
        """Whether the producer thread is still alive."""
        return self._thread.is_alive()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._stopped.is_set():
            raise StopIteration
        tick = time.perf_counter()
        kind, value = self._queue.get()
        self.waited_s += time.perf_counter() - tick
        if kind == _END:
            self._stopped.set()
            raise StopIteration
        if kind == _ERROR:
            self._stopped.set()
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    def close(self, timeout: float = 30.0) -> None:
        """Stop the producer and wait (up to `timeout` s) for it to finish its current item."""
        self._stopped.set()
        while True:  # free a producer blocked on a full queue at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self) -> Ahead[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
