"""Reading an activation store: memory-mapped rows, seeded random batches, bounded memory.

``ActivationStore.open(path)`` reads the manifest and checks that every listed shard file exists
with its recorded size (a missing or truncated shard fails at once, naming the file). The SHA-256 of
each file is verified **on first read of that file** (``verify="first_read"``, the default), or of
every file at open (``"open"``), or never (``"none"``); a mismatch raises :class:`StoreError`
naming the shard file and the repair (:data:`~assay.store.manifest.REPAIR_HINT`: re-running the
writer rewrites exactly the damaged shards).

``batches(site, batch_size=B, seed=s)`` yields ``[B, d]`` tensors of rows in a seeded global random
order (:mod:`assay.store.order`): batch ``b`` is computed directly, so ``start_batch=b`` resumes
exactly.

**Bounded memory.** Rows are gathered from the memory-mapped shards in chunks small enough that one
chunk can map at most ``memory_budget / 2`` bytes (counting :data:`~assay.store.shardfile.MAX_FOLIO`
per scattered row). After each chunk the process's resident file-mapped bytes are measured
(``/proc/self/statm``); once they have grown by ``memory_budget / 2`` since the last release, every
mapping is released (``madvise(MADV_DONTNEED)``). So the mappings never hold more than about
``memory_budget``, and RSS stays within that plus the batches being built, whatever the store size.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assay.store.manifest import (
    REPAIR_HINT,
    ROWS,
    FileRecord,
    Manifest,
    StoreError,
    read_manifest,
    shard_shapes,
)
from assay.store.order import batch_rows
from assay.store.prefetch import prefetch as _prefetch
from assay.store.shardfile import (
    DTYPES,
    MAX_FOLIO,
    MappedFile,
    file_damage,
    mapped_file_bytes,
    shape_problem,
    to_torch,
)

__all__ = ["ActivationStore", "Column"]


class ActivationStore:
    """A read-only view of an activation store folder. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: Manifest, *, verify: str, memory_budget: int | None, max_open: int):
        self.path = path
        self.manifest = manifest
        self.verify = verify
        self.memory_budget = memory_budget
        self.max_open = max_open
        self._maps: dict[tuple[str, int], MappedFile] = {}
        self._verified: set[str] = set()
        self._base: int | None = None
        self._lock = threading.RLock()

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        sites: Iterable[str] | None = None,
        d: int | Mapping[str, int] | None = None,
        verify: str = "first_read",
        memory_budget: int | None = 256 << 20,
        allow_partial: bool = False,
        max_open: int = 256,
    ) -> ActivationStore:
        """Open the store at ``path``.

        ``sites`` / ``d`` state what the caller expects (an int ``d`` applies to every site); a
        mismatch raises :class:`StoreError`. ``memory_budget`` (bytes, ``None`` for no limit) caps
        what the memory maps may keep resident. ``allow_partial`` opens a store whose writer has not
        finished (only its complete shards are visible). At most ``max_open`` shard files stay mapped.
        """
        if verify not in ("first_read", "open", "none"):
            raise StoreError(f"verify must be 'first_read', 'open' or 'none'; got {verify!r}")
        path = Path(path)
        m = read_manifest(path)
        if not m.complete:
            if not allow_partial:
                raise StoreError(
                    f"{path} is incomplete ({m.rows_done} of {m.n_rows} rows written); resume the writer "
                    "(`assay cache` with the same options, or write_store(..., resume=True)), or open it with "
                    "allow_partial=True to read the complete shards"
                )
            m = m._replace(n_rows=m.rows_done)
        if m.n_rows == 0:
            raise StoreError(f"{path} holds no complete shard yet")
        store = cls(path, m, verify=verify, memory_budget=memory_budget, max_open=max_open)
        for shard in m.shards:
            for rec in shard.files.values():
                store._check_present(rec)
        if sites is not None:
            for s in sites:
                store._site(s)
        if d is not None:
            want = {s: d for s in store.sites} if isinstance(d, int) else dict(d)
            for s, w in want.items():
                if store.d(s) != w:
                    raise StoreError(f"{path}: site {s!r} has d = {store.d(s)}, but d = {w} was expected")
        if verify == "open":
            store.verify_all()
        return store

    def _check_present(self, rec: FileRecord) -> None:
        self._raise_if_damaged(rec, file_damage(self.path, rec, digest=False))

    def _raise_if_damaged(self, rec: FileRecord, problem: str | None) -> None:
        if problem is not None:
            raise StoreError(f"{self.path}: shard file {rec.path} {problem}. To repair it, {REPAIR_HINT}.")

    def verify_all(self) -> None:
        """Check the SHA-256 of every shard file now."""
        for shard in self.manifest.shards:
            for rec in shard.files.values():
                self._verify(rec)

    def _verify(self, rec: FileRecord) -> None:
        if rec.path in self._verified:
            return
        self._raise_if_damaged(rec, file_damage(self.path, rec))
        self._verified.add(rec.path)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        """Site names, in the order they were given to the writer."""
        return tuple(self.manifest.config["sites"])

    @property
    def n_rows(self) -> int:
        """Number of rows (tokens)."""
        return self.manifest.n_rows

    @property
    def n_shards(self) -> int:
        return len(self.manifest.shards)

    @property
    def shard_rows(self) -> int:
        return int(self.manifest.config["shard_rows"])

    @property
    def dtype(self) -> torch.dtype:
        """On-disk activation dtype."""
        return DTYPES[self.manifest.config["dtype"]]

    @property
    def config(self) -> dict[str, Any]:
        """The writer's run config (model, sites, d, dtype, context length, ...)."""
        return dict(self.manifest.config)

    def d(self, site: str) -> int:
        """Width of the rows of ``site``."""
        return int(self.manifest.config["d"][self._site(site)])

    def n_batches(self, batch_size: int, *, epochs: int = 1) -> int:
        """Number of batches :meth:`batches` yields."""
        return (self.n_rows // batch_size) * epochs

    def _site(self, site: str) -> str:
        if site not in self.manifest.config["sites"]:
            import difflib

            close = difflib.get_close_matches(site, self.sites, n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise StoreError(f"{self.path} has no site {site!r}; it holds {', '.join(map(repr, self.sites))}.{hint}")
        return site

    # -- mapped access ---------------------------------------------------------------------------
    def _mapped(self, group: str, k: int) -> MappedFile:
        with self._lock:
            key = (group, k)
            mf = self._maps.get(key)
            if mf is not None:
                self._maps[key] = self._maps.pop(key)  # most recently used last
                return mf
            rec = self.manifest.shards[k].files[group]
            if self.verify != "none":
                self._verify(rec)
            mf = MappedFile(self.path / rec.path)
            problem = shape_problem(mf.info, shard_shapes(self.manifest.config, group, self.manifest.shards[k].rows))
            if problem is not None:
                mf.close()
                self._raise_if_damaged(rec, f"is corrupted ({problem})")
            while len(self._maps) >= self.max_open:
                old_key = next(iter(self._maps))
                self._maps.pop(old_key).close()
            self._maps[key] = mf
            return mf

    def _release_if_needed(self) -> None:
        """Release every mapping once resident mapped bytes grew by half the budget (see module doc)."""
        if self.memory_budget is None:
            return
        now = mapped_file_bytes()
        if self._base is None and now is not None:
            self._base = now
        elif now is None or now - self._base >= self.memory_budget // 2:
            for mf in self._maps.values():
                mf.release()
            self._base = mapped_file_bytes()

    def _chunk_rows(self, local: np.ndarray, row_bytes: int) -> int:
        """Rows per chunk so that one chunk maps at most half the budget."""
        if self.memory_budget is None:
            return max(1, len(local))
        half = self.memory_budget // 2
        if len(local) and int(local[-1] - local[0]) + 1 == len(local):  # contiguous rows
            return max(1, (half - 2 * MAX_FOLIO) // row_bytes)
        return max(1, half // (MAX_FOLIO + row_bytes))

    def _gather(self, group: str, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (global, any order) of tensor ``name`` of a file group, as a NumPy array."""
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        shard = srt // self.shard_rows
        cuts = np.flatnonzero(np.diff(shard)) + 1
        out = None
        with self._lock:
            for part, where in zip(np.split(srt, cuts), np.split(order, cuts)):
                k = int(part[0] // self.shard_rows)
                mf = self._mapped(group, k)
                arr = mf.array(name)
                if out is None:
                    out = np.empty((rows.shape[0], *arr.shape[1:]), dtype=arr.dtype)
                local = part - k * self.shard_rows
                row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
                step = self._chunk_rows(local, row_bytes)
                for i in range(0, len(local), step):
                    mf.touched = True
                    out[where[i : i + step]] = arr[local[i : i + step]]
                    self._release_if_needed()
        return out

    def _torch(self, a: np.ndarray, stored: torch.dtype, dtype: torch.dtype | None) -> torch.Tensor:
        t = to_torch(a, stored)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    # -- public reads ----------------------------------------------------------------------------
    def read(self, site: str, start: int, stop: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``[start, stop)`` of ``site`` as a ``[stop - start, d]`` tensor of ``dtype``."""
        site = self._site(site)
        rows = self._range(start, stop)
        if rows.size == 0:
            return torch.empty(0, self.d(site), dtype=dtype)
        return self._torch(self._gather(site, "acts", rows), self.dtype, dtype)

    def read_rows(self, site: str, rows: torch.Tensor | np.ndarray, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows at global indices ``rows`` (any order, repeats allowed) of ``site``: ``[len(rows), d]``."""
        site = self._site(site)
        idx = self._indices(rows)
        if idx.size == 0:
            return torch.empty(0, self.d(site), dtype=dtype)
        return self._torch(self._gather(site, "acts", idx), self.dtype, dtype)

    def _range(self, start: int, stop: int) -> np.ndarray:
        if not (0 <= start <= stop <= self.n_rows):
            raise StoreError(f"row range [{start}, {stop}) is outside the store's {self.n_rows} rows")
        return np.arange(start, stop, dtype=np.int64)

    def _indices(self, rows: Any) -> np.ndarray:
        idx = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise StoreError(f"row indices must lie in [0, {self.n_rows})")
        return idx

    def batches(
        self,
        site: str,
        *,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        dtype: torch.dtype = torch.float32,
        epochs: int = 1,
        prefetch: int = 0,
    ) -> Iterator[torch.Tensor]:
        """``[batch_size, d]`` batches of ``site`` in a seeded global random order.

        Each epoch visits ``n_rows // batch_size`` batches (every row at most once; the few left
        over differ between epochs). Batch ``b`` depends only on ``(n_rows, batch_size, seed, b)``:
        ``start_batch=b`` continues exactly where a run that consumed ``b`` batches stopped.
        ``prefetch=k`` gathers up to ``k`` batches ahead on a background thread.
        """
        site = self._site(site)
        if batch_size <= 0 or batch_size > self.n_rows:
            raise StoreError(f"batch_size must lie in [1, {self.n_rows}] (the store's rows); got {batch_size}")
        total = self.n_batches(batch_size, epochs=epochs)
        if not 0 <= start_batch <= total:
            raise StoreError(f"start_batch must lie in [0, {total}]; got {start_batch}")

        def gen() -> Iterator[torch.Tensor]:
            for b in range(start_batch, total):
                rows = batch_rows(b, n=self.n_rows, batch_size=batch_size, seed=seed)
                yield self._torch(self._gather(site, "acts", rows), self.dtype, dtype)

        return _prefetch(gen(), prefetch)

    def batch_rows(self, batch: int, *, batch_size: int, seed: int) -> torch.Tensor:
        """Global row indices of batch ``batch`` of :meth:`batches` (to look up tokens or documents)."""
        return torch.from_numpy(batch_rows(batch, n=self.n_rows, batch_size=batch_size, seed=seed))

    # -- token metadata --------------------------------------------------------------------------
    @property
    def tokens(self) -> Column:
        """Token id of every row (lazy column: index it like a 1-D tensor)."""
        return Column(self, "tokens")

    @property
    def doc_ids(self) -> Column:
        """Document id of every row."""
        return Column(self, "doc_ids")

    @property
    def positions(self) -> Column:
        """Position of every row's token in its document (``-1`` for a BOS or padding)."""
        return Column(self, "positions")

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every shard file."""
        with self._lock:
            for mf in self._maps.values():
                mf.close()
            self._maps.clear()
            self._base = None

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        dims = ", ".join(f"{s}: {self.d(s)}" for s in self.sites)
        return f"ActivationStore({str(self.path)!r}, n_rows={self.n_rows}, shards={self.n_shards}, " \
               f"dtype={self.manifest.config['dtype']}, d={{{dims}}})"


class Column:
    """One int64 per-row column of a store (tokens, doc ids or positions), read on demand.

    ``col[i]`` → int; ``col[a:b]``, ``col[index_tensor]`` → int64 tensor; ``col.all()`` or
    ``torch.as_tensor(col)`` → the whole column (8 bytes a row).
    """

    def __init__(self, store: ActivationStore, name: str):
        self.store, self.name = store, name

    def __len__(self) -> int:
        return self.store.n_rows

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self)])

    @property
    def dtype(self) -> torch.dtype:
        return torch.long

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            return int(self.store._gather(ROWS, self.name, self.store._indices([i]))[0])
        if isinstance(key, slice):
            idx = np.arange(*key.indices(len(self)), dtype=np.int64)
        else:
            idx = self.store._indices(key)
        if idx.size == 0:
            return torch.empty(0, dtype=torch.long)
        return torch.from_numpy(self.store._gather(ROWS, self.name, idx))

    def all(self) -> torch.Tensor:
        """The whole column as an int64 tensor."""
        return self[:]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.all().numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"Column({self.name!r}, rows={len(self)})"
