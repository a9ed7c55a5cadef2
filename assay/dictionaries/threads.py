"""One intra-op thread for a block of cheap bookkeeping inside a multi-threaded training step.

torch parallelises every op over more than 32,768 elements, and each parallel op ends in a barrier that
waits for all of its threads. On a machine whose cores are shared with other busy processes, a waiting
thread may be descheduled for a whole scheduler slice, so an op that takes 0.1 ms alone can take 5–10 ms
(measured on the shared 2-core machine, one other busy process: ``[4096, 32] != 0`` 7.6 ms at 2 threads
vs 0.15 ms at one; a 131k-key radix sort, which synchronises several times per pass, 190 ms vs 2 ms).
The O(B·k) index bookkeeping of the sparse TopK kernels gains nothing from a second thread even on an
idle machine, so it runs inside :func:`one_thread`; the O(B·d·n) and O(B·k·d) products keep every thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``, restoring the previous count afterwards (also on
    error). Process-wide, like ``torch.set_num_threads`` itself: meant for short blocks of small ops."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
