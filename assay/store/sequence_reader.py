"""Reading an activation store as whole sequences: ``[batch, pos, d]`` windows with padding masks.

Sequence models of activations — the temporal SAE of Lubana, Rager, Hindupur et al. 2025, "Priors in
Time: Missing Inductive Biases for Language Model Interpretability" (arXiv 2511.01836) — need the
tokens of a document in order; the token-level reader (:meth:`ActivationStore.batches`) shuffles rows
across documents. A store written by :func:`assay.store.write_store` lays its rows out as windows:
row ``r`` is token ``r % T`` of window ``r // T`` (``T`` = ``config["context_length"]``), each window
cut from one document (``doc_ids``), its tokens at consecutive document offsets (``positions``; ``-1``
for the BOS and for padding after a short document).

``SequenceReader(store).batches(site, batch_size=B, seed=s)`` yields :class:`SequenceBatch` es of
``B`` whole windows in a seeded random order over windows — the same keyed permutation as the token
reader (:func:`assay.store.order.batch_rows`, applied to window numbers), so batch ``b`` depends only on
``(n_windows, B, s, b)`` and ``start_batch=b`` resumes exactly. Reads go through the store's own gather
(:meth:`ActivationStore.read_rows` and its columns), so the same manifest SHA-256 checks, memory budget
and error messages apply to both readers.

Every window read is checked to be one contiguous piece of one document: a single doc id, and
document positions that increase by exactly 1 (the masked BOS/padding rows aside). A store that does
not record this — no ``context_length``, a row count that is not whole windows, or windows whose doc
ids or positions are not contiguous — raises :class:`StoreError` saying how to re-cache it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from assay.store.manifest import StoreError
from assay.store.order import batch_rows
from assay.store.prefetch import prefetch as _prefetch
from assay.store.reader import ActivationStore

__all__ = ["SequenceBatch", "SequenceReader", "RECACHE_HINT"]

RECACHE_HINT = ("re-cache it with `assay cache` (or write_store(..., windows=assay.corpora.token_windows(...))), "
                "which records each window's document id and token positions")
"""How to get a store with sequence boundaries."""


class SequenceBatch(NamedTuple):
    """Whole windows of one site."""

    acts: Tensor
    """Activations ``[batch, pos, d]``."""
    mask: Tensor
    """``[batch, pos]`` bool: True at document tokens, False at the BOS and at padding."""
    windows: Tensor
    """Global window number of each row of the batch ``[batch]`` (rows ``w·T … w·T + T − 1`` of the store)."""


class SequenceReader:
    """Whole-window view of an :class:`ActivationStore` (module docstring)."""

    def __init__(self, store: ActivationStore) -> None:
        t = int(store.config.get("context_length", 0) or 0)
        if t <= 0:
            raise StoreError(f"{store.path} records no window length (config has no context_length), so its rows "
                             f"cannot be grouped into sequences; {RECACHE_HINT}")
        if store.n_rows < t:
            raise StoreError(f"{store.path} holds {store.n_rows} rows, less than one window of {t}")
        if store.n_rows % t and store.manifest.complete:
            raise StoreError(f"{store.path} holds {store.n_rows} rows, not a whole number of windows of {t}, so its "
                             f"rows have no sequence boundaries; {RECACHE_HINT}")
        self.store = store
        self.window = t
        """Window length T (tokens per sequence, BOS included)."""
        self.n_windows = store.n_rows // t
        """Whole windows in the store (a partial store's last incomplete window is left out)."""

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> SequenceReader:
        """Open the store at ``path`` (keywords as :meth:`ActivationStore.open`) for sequence reading."""
        return cls(ActivationStore.open(path, **kwargs))

    def n_batches(self, batch_size: int, *, epochs: int = 1, windows: int | None = None) -> int:
        """Number of batches :meth:`batches` yields (over the first ``windows`` windows; None: all)."""
        return ((self.n_windows if windows is None else windows) // batch_size) * epochs

    def batch_windows(self, batch: int, *, batch_size: int, seed: int, windows: int | None = None) -> Tensor:
        """Window numbers of batch ``batch`` of :meth:`batches` ``[batch_size]`` (drawn from the first
        ``windows`` windows; None: all)."""
        n = self.n_windows if windows is None else windows
        return torch.from_numpy(batch_rows(batch, n=n, batch_size=batch_size, seed=seed))

    def read_windows(self, site: str, windows: Tensor | np.ndarray | list[int], *,
                     dtype: torch.dtype = torch.float32) -> SequenceBatch:
        """The windows ``windows`` (in that order) of ``site`` as one :class:`SequenceBatch`."""
        w = torch.as_tensor(np.asarray(windows, dtype=np.int64)).reshape(-1)
        if w.numel() and (int(w.min()) < 0 or int(w.max()) >= self.n_windows):
            raise StoreError(f"window numbers must lie in [0, {self.n_windows}) (the store's whole windows)")
        t = self.window
        rows = (w[:, None] * t + torch.arange(t)).reshape(-1)
        acts = self.store.read_rows(site, rows, dtype=dtype).reshape(w.numel(), t, -1)
        positions = self.store.positions[rows].reshape(-1, t)
        doc_ids = self.store.doc_ids[rows].reshape(-1, t)
        mask = positions >= 0
        self._check_boundaries(w, doc_ids, positions, mask)
        return SequenceBatch(acts, mask, w)

    def _check_boundaries(self, w: Tensor, doc_ids: Tensor, positions: Tensor, mask: Tensor) -> None:
        """Each window: one doc id; document positions (masked rows aside) consecutive, increasing by 1."""
        mixed = (doc_ids != doc_ids[:, :1]).any(1)
        # rank of each document token within its window; contiguous ⇔ position − rank is constant
        rank = mask.long().cumsum(1) - 1
        offset = positions - rank
        big = torch.iinfo(torch.long).max
        lo, hi = torch.where(mask, offset, big).amin(1), torch.where(mask, offset, -big).amax(1)
        broken = mask.any(1) & (lo != hi)
        bad = mixed | broken
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            what = ("spans documents " + str(sorted(set(doc_ids[i].tolist())))[:80] if bool(mixed[i]) else
                    f"has document positions {positions[i].tolist()[:12]}… that are not consecutive")
            raise StoreError(f"{self.store.path}: window {int(w[i])} {what}, so the store has no sequence "
                             f"boundaries for sequence batches; {RECACHE_HINT}")

    def batches(self, site: str, *, batch_size: int, seed: int, start_batch: int = 0, epochs: int = 1,
                dtype: torch.dtype = torch.float32, prefetch: int = 0, windows: int | None = None
                ) -> Iterator[SequenceBatch]:
        """:class:`SequenceBatch` es of ``batch_size`` whole windows in a seeded random order.

        Each epoch visits ``n_windows // batch_size`` batches (every window at most once; the few left over
        differ between epochs). Batch ``b`` depends only on ``(n_windows, batch_size, seed, b)``:
        ``start_batch=b`` continues exactly where a run that consumed ``b`` batches stopped.
        ``prefetch=k`` reads up to ``k`` batches ahead on a background thread. ``windows=n`` draws from the
        first ``n`` windows only (the rest held out, e.g. for evaluation).
        """
        self.store.d(site)  # an unknown site fails here, before any work
        n = self.n_windows if windows is None else windows
        if not 0 < n <= self.n_windows:
            raise StoreError(f"windows must lie in [1, {self.n_windows}] (the store's windows); got {windows}")
        if not 0 < batch_size <= n:
            raise StoreError(f"batch_size must lie in [1, {n}] (the windows drawn from); got {batch_size}")
        total = self.n_batches(batch_size, epochs=epochs, windows=n)
        if not 0 <= start_batch <= total:
            raise StoreError(f"start_batch must lie in [0, {total}]; got {start_batch}")

        def gen() -> Iterator[SequenceBatch]:
            for b in range(start_batch, total):
                yield self.read_windows(site, self.batch_windows(b, batch_size=batch_size, seed=seed, windows=n),
                                        dtype=dtype)

        return _prefetch(gen(), prefetch)

    def __repr__(self) -> str:
        return f"SequenceReader({str(self.store.path)!r}, windows={self.n_windows}, window={self.window})"
