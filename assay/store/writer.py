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
from assay.store.manifest import (
    MANIFEST_FILE,
    ROWS,
    FileRecord,
    Manifest,
    ShardRecord,
    StoreError,
    config_diff,
    read_manifest,
    shard_file,
    write_manifest,
)
from assay.store.shardfile import DTYPES, dtype_name, write_shard

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
def _lock(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another writer is running on {folder} (it holds {folder / '.lock'})") from None
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
        self.meta = {k: torch.empty(self.rows, dtype=torch.long) for k in ("tokens", "doc_ids", "positions")}
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
    forward: ForwardFn | None = None,
    progress: ProgressFn | None = None,
    max_pending: int = 1,
) -> StoreSummary:
    """Cache the activations of ``sites`` over ``windows`` into a store at ``out_dir``.

    ``windows`` is :class:`assay.corpora.TokenWindows` or a token tensor ``[n, T]`` (then doc ids are
    the window numbers and positions ``0..T-1``). ``model`` must be in eval mode; ``forward(model,
    tokens)`` defaults to ``model(tokens)``. With ``resume=True`` an existing store of the same run
    is continued (or returned at once if complete); a store of a different run is an error, never
    overwritten. ``progress(rows_done, n_rows)`` is called after every batch. ``max_pending`` shards
    may wait for the background writer (0 writes on the calling thread).
    """
    sites = [sites] if isinstance(sites, str) else list(sites)
    if not sites or len(set(sites)) != len(sites):
        raise StoreError(f"sites must be a non-empty list of distinct site names; got {sites!r}")
    if batch_size <= 0 or shard_rows <= 0:
        raise StoreError(f"batch_size and shard_rows must be positive; got {batch_size}, {shard_rows}")
    if model.training:
        raise StoreError("the model is in training mode (dropout would make the cache irreproducible); call model.eval()")
    dtype = dtype_name(dtype)
    disk_dtype = DTYPES[dtype]
    forward = forward or (lambda m, x: m(x))
    tokens, doc_ids, positions = _windows(windows)
    n_windows, t = tokens.shape
    n_rows = n_windows * t
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
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
    config = json.loads(json.dumps(config))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        if (out / MANIFEST_FILE).exists():
            manifest = read_manifest(out)
            diff = config_diff(manifest.config, config)
            if diff:
                raise StoreError(f"{out} holds a store of a different run; cannot resume it:\n  " + "\n  ".join(diff))
            if not resume:
                raise StoreError(f"{out} already holds this store ({manifest.rows_done} of {n_rows} rows); "
                                 "pass resume=True to continue it, or choose another folder")
        else:
            stray = [p.name for p in out.iterdir() if p.name != ".lock"]
            if stray:
                raise StoreError(f"{out} is not empty and holds no store manifest ({', '.join(sorted(stray)[:5])}); "
                                 "choose an empty or new folder")
            manifest = Manifest(config, n_rows, (), False, {})
            write_manifest(out, manifest)
        _clean_partial(out, len(manifest.shards))
        return _run(out, model, sites, last, dims, manifest, tokens, doc_ids, positions, batch_size, disk_dtype,
                    forward, progress, max_pending, device)


def _run(out, model, sites, last, dims, manifest, tokens, doc_ids, positions, batch_size, disk_dtype, forward,
         progress, max_pending, device) -> StoreSummary:
    n_windows, t = tokens.shape
    n_rows, shard_rows, dtype = manifest.n_rows, manifest.config["shard_rows"], manifest.config["dtype"]
    done = manifest.rows_done
    state = {"manifest": manifest}
    base_seconds = float(manifest.meta.get("seconds", 0.0))
    t0 = time.perf_counter()
    if done == n_rows:
        nbytes = sum(f.bytes for s in manifest.shards for f in s.files.values())
        return StoreSummary(out, n_rows, len(manifest.shards), nbytes, done, 0.0, float("nan"))

    def commit(index: int, shard: dict[str, dict[str, torch.Tensor]]) -> None:
        files = {}
        for group, tensors in shard.items():
            rel = shard_file(group, index)
            digest, nbytes = write_shard(out / rel, tensors, metadata={"format": "assay-activation-store"})
            files[group] = FileRecord(rel, digest, nbytes)
        m = state["manifest"]
        rows = shard[ROWS]["tokens"].shape[0]
        record = ShardRecord(index, index * shard_rows, rows, files)
        m = m._replace(shards=(*m.shards, record))
        complete = m.rows_done == n_rows
        meta = {**m.meta, "seconds": base_seconds + time.perf_counter() - t0}
        state["manifest"] = m._replace(complete=complete, meta=meta)
        write_manifest(out, state["manifest"])

    pending: list[Future] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="assay-store-writer") if max_pending > 0 else None

    def submit(index: int, shard) -> None:
        if pool is None:
            commit(index, shard)
            return
        while len(pending) >= max_pending:
            pending.pop(0).result()
        pending.append(pool.submit(commit, index, shard))

    buffer = _ShardBuffer(dims, shard_rows, disk_dtype)
    next_shard = len(manifest.shards)
    first_batch = (done // t) // batch_size
    skip = done - first_batch * batch_size * t
    rows_seen = done
    try:
        for b in range(first_batch, -(-n_windows // batch_size)):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n_windows)
            with torch.no_grad(), hooks.capture(model, sites, stop_at=last) as cap:
                forward(model, tokens[lo:hi].to(device))
            where = f"windows {lo}..{hi - 1}"
            acts = {}
            for s in sites:
                h = cap[s].reshape(-1, dims[s])[skip:]
                stored = h.to("cpu", disk_dtype)
                _check_finite(s, h, stored, dtype, where)
                acts[s] = stored
            meta = {
                "tokens": tokens[lo:hi].reshape(-1)[skip:],
                "doc_ids": doc_ids[lo:hi, None].expand(-1, t).reshape(-1)[skip:],
                "positions": positions[lo:hi].reshape(-1)[skip:],
            }
            skip = 0
            for shard in buffer.add(acts, meta):
                submit(next_shard, shard)
                next_shard += 1
            rows_seen = hi * t
            if progress is not None:
                progress(rows_seen, n_rows)
        if buffer.fill:
            submit(next_shard, buffer.take())
        while pending:
            pending.pop(0).result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    seconds = time.perf_counter() - t0
    m = state["manifest"]
    rate = (n_rows - done) / seconds if seconds > 0 else float("nan")
    m = m._replace(meta={**m.meta, "rows_per_second_last_call": rate})
    write_manifest(out, m)
    nbytes = sum(f.bytes for s in m.shards for f in s.files.values())
    return StoreSummary(out, n_rows, len(m.shards), nbytes, done, seconds, rate)
