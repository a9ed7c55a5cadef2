"""Writing an activation store: model + sites + token windows → fixed-size shards, resumable.

One forward pass per batch of windows captures every requested site at once, stopped right after
the last of them (``assay.hooks.capture(..., stop_at=...)``), so a run costs only the layers it
needs. Row ``r`` of the store is token ``r % T`` of window ``r // T`` (``T`` the context length);
shard ``k`` holds rows ``[k * shard_rows, (k + 1) * shard_rows)``.

**Resume.** Only complete shards are listed in the manifest (see :mod:`assay.store.manifest`), so a
run killed at any instant leaves a prefix of complete shards. Resuming recomputes from the start of
the forward batch holding the first missing row — the same windows in the same batch as the
uninterrupted run, so the activations are bit-identical — and drops the rows already stored: no
duplicates, no gaps. The run's identity (model fingerprint, sites, dtype, batch size, corpus, ...)
must match the manifest's, otherwise :class:`StoreError` lists what differs. A lock file stops two
writers sharing a folder.

**Repair.** A re-run (``resume=True``, the default ``verify=True``) first checks every listed shard
file against its manifest record (present, size, header, SHA-256 — one full read of the store; see
:func:`assay.store.shardfile.file_damage`) and recomputes each damaged shard from the same forward
batches that produced it, rewriting only its damaged files (atomically). A deterministic model gives
the recorded bytes back; if the recomputed bytes differ (nondeterministic kernels), the record is
updated and :attr:`StoreSummary.rerecorded_files` says so. The normal path and the repair share
:func:`_shards`, which turns the captured activations of a range of forward batches into shards.

**Overlap.** Shard files are written, hashed and fsynced on a background thread while the model runs
the next batches; at most ``max_pending`` shards wait, so memory stays bounded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from assay import hooks
from assay.precision import autocast, check_autocast_dtype
from assay.store.manifest import (
    FORMAT,
    MANIFEST_FILE,
    META,
    ROWS,
    FileRecord,
    Manifest,
    ShardRecord,
    StoreError,
    check_world_size,
    config_diff,
    read_manifest,
    shard_file,
    shard_shapes,
    write_manifest,
)
from assay.store.shardfile import DTYPES, dtype_name, file_damage, write_shard

__all__ = ["write_store", "StoreSummary", "model_fingerprint"]

ForwardFn = Callable[[nn.Module, torch.Tensor], Any]
ProgressFn = Callable[[int, int], None]


class StoreSummary(NamedTuple):
    """What :func:`write_store` did."""

    path: Path
    """The store folder."""
    n_rows: int
    """Rows in the finished store (one per token)."""
    n_shards: int
    """Shards in the finished store."""
    bytes: int
    """Bytes of all shard files."""
    resumed_rows: int
    """Rows that were already on disk when this call started (0 for a fresh run)."""
    seconds: float
    """Wall-clock seconds of this call's caching loop."""
    rows_per_second: float
    """Rows (tokens) cached per second by this call."""
    repaired_shards: tuple[int, ...]
    """Shards found damaged (missing, resized, unparsable or with another SHA-256 than the manifest's
    record) and recomputed by this call."""
    repaired_files: tuple[str, ...]
    """The shard files this call rewrote (paths relative to the store); a shard's intact files are kept."""
    rerecorded_files: tuple[str, ...]
    """Repaired files whose recomputed bytes differ from the manifest's record (the model or hardware is
    not bit-reproducible); their records were updated to the new bytes."""


def model_fingerprint(model: nn.Module, samples: int = 256) -> str:
    """SHA-256 over every parameter/buffer's name, shape, dtype and ``samples`` evenly spaced values
    (cheap, and different for different weights in practice)."""
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        h.update(flat[::step][:samples].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def _windows(windows: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens [n, T], doc_ids [n], positions [n, T])`` from TokenWindows or a token tensor."""
    if isinstance(windows, torch.Tensor):
        tokens = windows
        doc_ids = torch.arange(tokens.shape[0]) if tokens.ndim == 2 else None
        positions = torch.arange(tokens.shape[-1]).expand(tokens.shape).clone() if tokens.ndim == 2 else None
    else:
        try:
            tokens, doc_ids, positions = windows.tokens, windows.doc_ids, windows.positions
        except AttributeError:
            raise StoreError(
                f"windows must be a token tensor [n, T] or assay.corpora.TokenWindows; got {type(windows).__name__}"
            ) from None
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0 or tokens.is_floating_point():
        raise StoreError(f"token windows must be a non-empty integer tensor [n, T]; got {tuple(tokens.shape)} {tokens.dtype}")
    n, t = tokens.shape
    if tuple(doc_ids.shape) != (n,) or tuple(positions.shape) != (n, t):
        raise StoreError(f"doc_ids must be [{n}] and positions [{n}, {t}]; got {tuple(doc_ids.shape)}, {tuple(positions.shape)}")
    return tokens.long().cpu(), doc_ids.long().cpu(), positions.long().cpu()


def _fingerprint_corpus(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _probe(model: nn.Module, sites: list[str], x: torch.Tensor, forward: ForwardFn) -> tuple[str, dict[str, int]]:
    """Run one window through the model, stopping once every site has run: the site that runs last,
    and each site's width ``d``."""
    for s in sites:
        hooks.resolve(model, s)
    order: list[str] = []

    class _AllSeen(Exception):
        pass

    def seen(site: str):
        def hook(module, args, output):
            if site not in order:
                order.append(site)
            if len(order) == len(sites):
                raise _AllSeen

        return hook

    with torch.no_grad(), hooks.capture(model, sites) as cap:  # its hooks run before the ones below
        handles = [model.get_submodule(s).register_forward_hook(seen(s)) for s in sites]
        try:
            forward(model, x)
        except _AllSeen:
            pass
        finally:
            for h in handles:
                h.remove()
    missing = [s for s in sites if s not in cap]
    if missing:
        raise StoreError(f"site(s) {', '.join(missing)} did not run during the model's forward pass")
    dims = {}
    for s in sites:
        h = cap[s]
        if h.ndim != 3 or tuple(h.shape[:2]) != tuple(x.shape):
            raise StoreError(
                f"site {s!r} outputs shape {tuple(h.shape)}; the store needs [batch, tokens, d] = "
                f"[{x.shape[0]}, {x.shape[1]}, d]. Pick a site that returns the residual stream or a "
                "per-token vector."
            )
        dims[s] = int(h.shape[2])
    return order[-1], dims


@contextmanager
def _lock(folder: Path, name: str = ".lock") -> Iterator[None]:
    with open(folder / name, "w") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another writer is running on {folder} (it holds {folder / name})") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _clean_partial(folder: Path, shards_done: int) -> None:
    """Remove temporary files and shard files not listed in the manifest (from an interrupted run)."""
    for p in [*folder.glob("rows/*"), *folder.glob("acts/*/*")]:
        if p.name.endswith(".tmp"):
            p.unlink()
        elif p.name.startswith("shard_") and p.suffix == ".safetensors":
            if int(p.stem.removeprefix("shard_")) >= shards_done:
                p.unlink()


class _ShardBuffer:
    """Preallocated buffers for one shard; yields full shards as rows arrive."""

    def __init__(self, dims: dict[str, int], rows: int, dtype: torch.dtype):
        self.dims, self.rows, self.dtype = dims, rows, dtype
        self._new()

    def _new(self) -> None:
        self.acts = {s: torch.empty(self.rows, d, dtype=self.dtype) for s, d in self.dims.items()}
        self.meta = {k: torch.empty(self.rows, dtype=torch.long) for k in META}
        self.fill = 0

    def add(self, acts: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        n, i = next(iter(meta.values())).shape[0], 0
        while i < n:
            take = min(self.rows - self.fill, n - i)
            a, b = self.fill, self.fill + take
            for s, h in acts.items():
                self.acts[s][a:b].copy_(h[i : i + take])
            for k, v in meta.items():
                self.meta[k][a:b].copy_(v[i : i + take])
            self.fill, i = b, i + take
            if self.fill == self.rows:
                yield self.take()

    def take(self) -> dict[str, dict[str, torch.Tensor]]:
        f = self.fill
        out = {ROWS: {k: v[:f] for k, v in self.meta.items()}, **{s: {"acts": a[:f]} for s, a in self.acts.items()}}
        self._new()
        return out


def _check_finite(site: str, src: torch.Tensor, stored: torch.Tensor, dtype: str, where: str) -> None:
    if torch.isfinite(stored).all():
        return
    if torch.isfinite(src).all():
        raise StoreError(
            f"site {site!r}: activations in {where} overflow {dtype} (max |h| = {src.abs().max().item():.4g}); "
            "store as bfloat16 or float32 instead"
        )
    raise StoreError(f"site {site!r}: the model produced non-finite activations in {where}")


class _Source(NamedTuple):
    """Everything that turns forward batches into shard tensors."""

    model: nn.Module
    sites: list[str]
    last: str
    """The site that runs last (the forward pass stops after it)."""
    dims: dict[str, int]
    tokens: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor
    batch_size: int
    shard_rows: int
    disk_dtype: torch.dtype
    dtype: str
    forward: ForwardFn
    device: torch.device


def _batch_span(src: _Source, first_row: int, stop_row: int) -> range:
    """The forward batches (batch ``b`` = windows ``[b * batch_size, (b + 1) * batch_size)``) holding
    rows ``[first_row, stop_row)``."""
    per_batch = src.batch_size * src.tokens.shape[1]
    return range(first_row // per_batch, -(-stop_row // per_batch))


def _shards(
    src: _Source, first_shard: int, stop_row: int, after_batch: Callable[[int], None] | None = None
) -> Iterator[tuple[int, dict[str, dict[str, torch.Tensor]]]]:
    """``(k, {group: tensors})`` for shards ``first_shard, first_shard + 1, ...`` covering rows
    ``[first_shard * shard_rows, stop_row)``.

    The model runs on the forward batches of the original run (:func:`_batch_span`), whatever range
    is asked for, so every shard is bit-identical to the one an uninterrupted run wrote (on the same
    machine); rows outside the range are dropped. ``after_batch(rows_end)`` is called after each batch
    with the end of the rows it covered.
    """
    n_windows, t = src.tokens.shape
    first_row = first_shard * src.shard_rows
    batches = _batch_span(src, first_row, stop_row)
    skip = first_row - batches.start * src.batch_size * t
    buffer = _ShardBuffer(src.dims, src.shard_rows, src.disk_dtype)
    k = first_shard
    for b in batches:
        lo, hi = b * src.batch_size, min((b + 1) * src.batch_size, n_windows)
        with torch.no_grad(), hooks.capture(src.model, src.sites, stop_at=src.last) as cap:
            src.forward(src.model, src.tokens[lo:hi].to(src.device))
        end = min(hi * t, stop_row) - lo * t
        where = f"windows {lo}..{hi - 1}"
        acts = {}
        for s in src.sites:
            h = cap[s].reshape(-1, src.dims[s])[skip:end]
            stored = h.to("cpu", src.disk_dtype)
            _check_finite(s, h, stored, src.dtype, where)
            acts[s] = stored
        meta = {
            "tokens": src.tokens[lo:hi].reshape(-1)[skip:end],
            "doc_ids": src.doc_ids[lo:hi, None].expand(-1, t).reshape(-1)[skip:end],
            "positions": src.positions[lo:hi].reshape(-1)[skip:end],
        }
        skip = 0
        for shard in buffer.add(acts, meta):
            yield k, shard
            k += 1
        if after_batch is not None:
            after_batch(lo * t + end)
    if buffer.fill:
        yield k, buffer.take()


def _write_file(out: Path, index: int, group: str, tensors: dict[str, torch.Tensor]) -> FileRecord:
    """Write one file of shard ``index`` atomically; its manifest record."""
    rel = shard_file(group, index)
    digest, nbytes = write_shard(out / rel, tensors, metadata={"format": FORMAT})
    return FileRecord(rel, digest, nbytes)


def write_store(
    out_dir: str | Path,
    model: nn.Module,
    sites: str | Sequence[str],
    windows: Any,
    *,
    batch_size: int,
    shard_rows: int,
    dtype: str | torch.dtype = "float32",
    model_name: str | None = None,
    resume: bool = True,
    verify: bool = True,
    forward: ForwardFn | None = None,
    progress: ProgressFn | None = None,
    max_pending: int = 1,
    autocast_dtype: str | None = None,
) -> StoreSummary:
    """Cache the activations of ``sites`` over ``windows`` into a store at ``out_dir``.

    ``windows`` is :class:`assay.corpora.TokenWindows` or a token tensor ``[n, T]`` (then doc ids are
    the window numbers and positions ``0..T-1``). ``model`` must be in eval mode; ``forward(model,
    tokens)`` defaults to ``model(tokens)``. With ``resume=True`` an existing store of the same run
    is continued (or returned at once if complete); a store of a different run is an error, never
    overwritten. On such a re-run, ``verify=True`` first checks every shard file already listed
    (size, header, SHA-256: one full read of the store) and recomputes exactly the damaged shards
    (reported in :attr:`StoreSummary.repaired_shards`); ``verify=False`` skips the check.
    ``progress(rows_done, n_rows)`` is called after every batch of new rows. ``max_pending`` shards
    may wait for the background writer (0 writes on the calling thread). ``autocast_dtype`` (``"bfloat16"``
    or ``"float16"``) runs the forward pass under ``torch.autocast`` (:mod:`assay.precision`; the weights stay
    as they are); the manifest's config records it, and ``dtype`` stays the on-disk dtype.
    """
    config, src = _prepare_run(model, sites, windows, batch_size=batch_size, shard_rows=shard_rows, dtype=dtype,
                               model_name=model_name, forward=forward, autocast_dtype=autocast_dtype)
    n_rows = int(src.tokens.numel())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        manifest = open_manifest(out, config, n_rows, resume=resume)
        _clean_partial(out, len(manifest.shards))
        repair = _Repair((), (), ())
        if verify and manifest.shards:
            manifest, repair = _repair(out, src, manifest, _damaged_files(out, manifest))
        return _run(out, src, manifest, progress, max_pending, repair)


def open_manifest(out: Path, config: dict[str, Any], n_rows: int, *, resume: bool, world_size: int = 1) -> Manifest:
    """The manifest of this run in ``out`` (checked: same config, same number of processes, ``resume``), or a
    new empty one written there (``out`` must then be empty). Call it holding the folder's lock."""
    if (out / MANIFEST_FILE).exists():
        manifest = read_manifest(out)
        diff = config_diff(manifest.config, config)
        if diff:
            raise StoreError(f"{out} holds a store of a different run; cannot resume it:\n  " + "\n  ".join(diff))
        check_world_size(out, manifest, world_size)
        if not resume:
            raise StoreError(f"{out} already holds this store ({manifest.rows_done} of {n_rows} rows); "
                             "pass resume=True to continue it, or choose another folder")
        return manifest
    stray = [p.name for p in out.iterdir() if p.name != ".lock"]
    if stray:
        raise StoreError(f"{out} is not empty and holds no store manifest ({', '.join(sorted(stray)[:5])}); "
                         "choose an empty or new folder")
    manifest = Manifest(config, n_rows, (), False, {"world_size": world_size} if world_size > 1 else {})
    write_manifest(out, manifest)
    return manifest


def _autocast_forward(forward: ForwardFn, device: torch.device, autocast_dtype: str | None) -> ForwardFn:
    """``forward`` run under :func:`assay.precision.autocast` (itself when ``autocast_dtype`` is None)."""
    if autocast_dtype is None:
        return forward

    def run(model: nn.Module, x: torch.Tensor) -> Any:
        with autocast(device, autocast_dtype):
            return forward(model, x)

    return run


def _prepare_run(model: nn.Module, sites: str | Sequence[str], windows: Any, *, batch_size: int, shard_rows: int,
                 dtype: str | torch.dtype, model_name: str | None, forward: ForwardFn | None,
                 autocast_dtype: str | None = None) -> tuple[dict[str, Any], _Source]:
    """Check the arguments, probe the sites once: ``(run config for the manifest, _Source)``. The config has an
    ``autocast_dtype`` key only when autocast is on, so stores written without it keep their config."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    if not sites or len(set(sites)) != len(sites):
        raise StoreError(f"sites must be a non-empty list of distinct site names; got {sites!r}")
    if batch_size <= 0 or shard_rows <= 0:
        raise StoreError(f"batch_size and shard_rows must be positive; got {batch_size}, {shard_rows}")
    if model.training:
        raise StoreError("the model is in training mode (dropout would make the cache irreproducible); call model.eval()")
    dtype = dtype_name(dtype)
    try:
        check_autocast_dtype(autocast_dtype)
    except ValueError as e:
        raise StoreError(str(e)) from None
    tokens, doc_ids, positions = _windows(windows)
    n_windows, t = tokens.shape
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    forward = _autocast_forward(forward or (lambda m, x: m(x)), device, autocast_dtype)
    last, dims = _probe(model, sites, tokens[:1].to(device), forward)
    config = {
        "model": model_name or type(model).__name__,
        "model_fingerprint": model_fingerprint(model),
        "sites": sites,
        "d": dims,
        "dtype": dtype,
        "context_length": t,
        "n_windows": n_windows,
        "batch_size": batch_size,
        "shard_rows": shard_rows,
        "corpus_fingerprint": _fingerprint_corpus(tokens, doc_ids, positions),
    }
    if autocast_dtype is not None:
        config["autocast_dtype"] = autocast_dtype
    config = json.loads(json.dumps(config))
    src = _Source(model, sites, last, dims, tokens, doc_ids, positions, batch_size, shard_rows, DTYPES[dtype], dtype,
                  forward, device)
    return config, src


class _Repair(NamedTuple):
    """What :func:`_repair` did (see the ``repaired_*`` fields of :class:`StoreSummary`)."""

    shards: tuple[int, ...]
    files: tuple[str, ...]
    rerecorded: tuple[str, ...]


def _damaged_files(out: Path, manifest: Manifest) -> dict[int, list[str]]:
    """``{shard index: [damaged file groups]}`` over every listed shard (see :func:`file_damage`)."""
    damaged: dict[int, list[str]] = {}
    for shard in manifest.shards:
        for group, rec in shard.files.items():
            if file_damage(out, rec, shapes=shard_shapes(manifest.config, group, shard.rows)) is not None:
                damaged.setdefault(shard.index, []).append(group)
    return damaged


def _repair(out: Path, src: _Source, manifest: Manifest, damaged: dict[int, list[str]]) -> tuple[Manifest, _Repair]:
    """Recompute the damaged shards and rewrite their damaged files; damaged shards whose forward
    batches overlap are computed in one pass."""
    shards = list(manifest.shards)

    def stop(k: int) -> int:
        return min((k + 1) * src.shard_rows, manifest.n_rows)

    def batches(k: int) -> range:
        return _batch_span(src, k * src.shard_rows, stop(k))

    spans: list[list[int]] = []  # [first shard, last shard] per pass
    for k in sorted(damaged):
        if spans and batches(k).start < batches(spans[-1][1]).stop:
            spans[-1][1] = k
        else:
            spans.append([k, k])
    files, rerecorded = [], []
    for first, last in spans:
        for k, shard in _shards(src, first, stop(last)):
            if k not in damaged:
                continue
            records = dict(shards[k].files)
            for group in damaged[k]:
                rec = _write_file(out, k, group, shard[group])
                files.append(rec.path)
                if rec != records[group]:
                    rerecorded.append(rec.path)
                    records[group] = rec
            shards[k] = shards[k]._replace(files=records)
    manifest = manifest._replace(shards=tuple(shards))
    if rerecorded:
        write_manifest(out, manifest)
    return manifest, _Repair(tuple(sorted(damaged)), tuple(files), tuple(rerecorded))


def _run(out: Path, src: _Source, manifest: Manifest, progress: ProgressFn | None, max_pending: int,
         repair: _Repair) -> StoreSummary:
    """Compute and write the shards after the listed ones, overlapping file writes with the model."""
    n_rows = manifest.n_rows
    done = manifest.rows_done
    state = {"manifest": manifest}
    base_seconds = float(manifest.meta.get("seconds", 0.0))
    t0 = time.perf_counter()

    def summary(m: Manifest, seconds: float, rate: float) -> StoreSummary:
        nbytes = sum(f.bytes for s in m.shards for f in s.files.values())
        return StoreSummary(out, n_rows, len(m.shards), nbytes, done, seconds, rate, repaired_shards=repair.shards,
                            repaired_files=repair.files, rerecorded_files=repair.rerecorded)

    if done == n_rows:
        return summary(manifest, 0.0, float("nan"))

    def commit(index: int, shard: dict[str, dict[str, torch.Tensor]]) -> None:
        files = {group: _write_file(out, index, group, tensors) for group, tensors in shard.items()}
        m = state["manifest"]
        rows = shard[ROWS]["tokens"].shape[0]
        record = ShardRecord(index, index * src.shard_rows, rows, files)
        m = m._replace(shards=(*m.shards, record))
        complete = m.rows_done == n_rows
        meta = {**m.meta, "seconds": base_seconds + time.perf_counter() - t0}
        state["manifest"] = m._replace(complete=complete, meta=meta)
        write_manifest(out, state["manifest"])

    def after_batch(rows_end: int) -> None:
        if progress is not None:
            progress(rows_end, n_rows)

    _drain(_shards(src, len(manifest.shards), n_rows, after_batch), commit, max_pending)
    seconds = time.perf_counter() - t0
    m = state["manifest"]
    rate = (n_rows - done) / seconds if seconds > 0 else float("nan")
    m = m._replace(meta={**m.meta, "rows_per_second_last_call": rate})
    write_manifest(out, m)
    return summary(m, seconds, rate)


def _drain(shards: Iterator[tuple[int, dict[str, dict[str, torch.Tensor]]]],
           commit: Callable[[int, dict[str, dict[str, torch.Tensor]]], None], max_pending: int) -> None:
    """``commit(k, shard)`` for every shard, in order, on a background thread while the next shards are
    computed; at most ``max_pending`` shards wait (0: commit on the calling thread)."""
    pending: list[Future] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="assay-store-writer") if max_pending > 0 else None
    try:
        for index, shard in shards:
            if pool is None:
                commit(index, shard)
                continue
            while len(pending) >= max_pending:
                pending.pop(0).result()
            pending.append(pool.submit(commit, index, shard))
        while pending:
            pending.pop(0).result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
