"""Rank coordination for jobs started by ``torchrun``: joining the group, splitting work, and a status exchange
that names a rank that died or hangs.

Built on PyTorch's own engine, ``torch.distributed`` (Li et al., 2020, *PyTorch Distributed: Experiences on
Accelerating Data Parallel Training*), started by ``torchrun``; nothing here is a home-made transport. Used by
distributed caching (:mod:`assay.store.distributed`) and sharded TRAK featurisation
(:mod:`assay.data_attribution.sharded`).

**Status exchange.** :func:`exchange_status`: every rank sends rank 0 its status (``""``: fine) as a fixed
4 KiB message and rank 0 receives from each rank in turn, so a rank that died (closed connection) or hangs
(the group's timeout) is named; rank 0 sends the joined verdict back to every rank that answered, and every
live rank gets the same verdict. Only statuses travel: the work's data goes to disk or through the caller's
own collectives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch

__all__ = ["rank_and_world", "launched_by_torchrun", "rank_device", "torchrun_group", "rank_block", "exchange_status", "run_status"]

STATUS_BYTES = 4096
T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when none is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` with more than one rank (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str) -> str:
    """``cuda`` becomes ``cuda:<LOCAL_RANK>`` under torchrun (one GPU per rank); anything else is kept."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if device == "cuda" and launched_by_torchrun() else device


@contextmanager
def torchrun_group(timeout_s: float) -> Iterator[Any]:
    """Join torchrun's process group (gloo, ``timeout_s``) for the block, unless one is initialised already;
    yields the gloo group to coordinate over (``None``: the default group; a gloo side group when the
    default one is NCCL)."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=timeout)
    try:
        yield None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    finally:
        if created:
            dist.destroy_process_group()


def rank_block(n_items: int, rank: int, world: int) -> range:
    """The items rank ``rank`` of ``world`` takes: a contiguous block, sizes differing by at most one."""
    return range(n_items * rank // world, n_items * (rank + 1) // world)


def _send_text(text: str, dst: int, group: Any) -> None:
    import torch.distributed as dist

    data = text.encode()[:STATUS_BYTES]
    buf = torch.zeros(STATUS_BYTES, dtype=torch.uint8)
    buf[: len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    dist.send(buf, dst, group=group)


def _recv_text(src: int, group: Any) -> str:
    import torch.distributed as dist

    buf = torch.zeros(STATUS_BYTES, dtype=torch.uint8)
    dist.recv(buf, src, group=group)
    return bytes(buf.tolist()).rstrip(b"\0").decode(errors="replace")


def _why(e: BaseException) -> str:
    return f"no answer: the process died or hangs past the group's timeout ({str(e).splitlines()[0][:200]})"


def exchange_status(status: str, group: Any) -> str:
    """Every rank tells rank 0 its status (``""``: fine), rank 0 tells everyone the verdict; returns the verdict
    (``""``: every rank is fine; else ``"rank 1: …; rank 3: …"``, naming each failed rank and why)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank != 0:
        try:
            _send_text(status, 0, group)
            return _recv_text(0, group)
        except RuntimeError as e:
            return f"rank 0: {_why(e)}"
    failed, answered = ({0: status} if status else {}), []
    for r in range(1, world):
        try:
            msg = _recv_text(r, group)
        except RuntimeError as e:
            failed[r] = _why(e)
            continue
        answered.append(r)
        if msg:
            failed[r] = msg
    verdict = "; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items()))
    for r in answered:
        try:
            _send_text(verdict, r, group)
        except RuntimeError:
            pass
    return verdict


def run_status(fn: Callable[..., T], *args: Any) -> tuple[T | None, str]:
    """``(fn(*args), "")``, or ``(None, what went wrong)``: a rank reports its errors instead of leaving."""
    try:
        return fn(*args), ""
    except Exception as e:  # noqa: BLE001 - every failure is reported to the other ranks, then raised
        return None, f"{type(e).__name__}: {e}"
