"""Background prefetch: run an iterator on a worker thread, a bounded number of items ahead.

While the consumer works on item ``i`` (an SAE step, say), the worker already produces items
``i + 1 … i + depth`` (gathers rows from disk, or runs the model's forward pass — PyTorch and NumPy
release the GIL in their kernels, so the two overlap). Items arrive in order; an exception in the
worker is re-raised in the consumer at the point it would have occurred; closing the returned
generator (or breaking out of the loop) stops the worker. Memory is bounded by ``depth`` items.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(source: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``source`` on a background thread, up to ``depth`` items ahead (``depth=0``: inline)."""
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        return iter(source)
    return _threaded(iter(source), depth)


def _threaded(it: Iterator[T], depth: int) -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer
            put(_Failure(e))

    worker = threading.Thread(target=work, name="assay-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()
