"""Distributed caching: ``torchrun --nproc-per-node N -m assay cache ...`` writes one store from N processes.

Built on PyTorch's own engine, ``torch.distributed`` (Li et al., 2020, *PyTorch Distributed: Experiences on
Accelerating Data Parallel Training*), started by ``torchrun``; nothing here is a home-made transport.

**Split.** The store's ``S`` shards are cut into ``N`` contiguous blocks: rank ``r`` computes shards
``[floor(r S / N), floor((r + 1) S / N))``, i.e. the windows (and so the documents) of those rows. Every
shard is computed from the forward batches a single process would run (:func:`assay.store.writer._shards`),
so its files are byte-identical to the single-process store's; a batch straddling two blocks is run by both.

**Files.** Each rank writes its shard files where a single process would and, after each shard, atomically
rewrites its own record ``ranks/rank_<r>.json`` (world size, run config, its complete shards). Rank 0
creates ``manifest.json`` first (no shards, ``meta.world_size = N``) and, once every rank has reported
success, replaces it atomically with the full manifest and deletes ``ranks/``. The finished store is the
single-process store: the same shard files, the same manifest apart from ``meta``.

**Resume.** Re-running the same command continues: each rank keeps the shards its record lists (checked
against the files with ``verify``) and computes the rest of its block; no finished shard is recomputed. A
different world size from the run that started the store is refused
(:func:`assay.store.manifest.check_world_size`), and so is a single-process ``write_store`` on it. A
finished store is returned as it is; repair one with a single-process re-run.

**Failures.** The ranks coordinate over a gloo group only (the activations go straight to disk, never over
the network). After setup and after the work, every rank sends rank 0 its status and rank 0 receives from
each rank in turn, so a rank that died (closed connection) or hangs (the group's timeout) is named; every
live rank then raises one :class:`StoreError` listing each failed rank and why.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assay.artifact import atomic_write_text
from assay.store.manifest import (
    ROWS,
    Manifest,
    ShardRecord,
    StoreError,
    config_diff,
    read_manifest,
    shard_from_dict,
    shard_shapes,
    shard_to_dict,
    write_manifest,
)
from assay.store.ranks import exchange_status, rank_block, run_status
from assay.store.shardfile import file_damage
from assay.store.writer import (
    ForwardFn,
    ProgressFn,
    StoreSummary,
    _drain,
    _lock,
    _prepare_run,
    _shards,
    _Source,
    _write_file,
    open_manifest,
)

__all__ = ["write_store_distributed", "RANKS"]

RANKS = "ranks"
"""Folder of the per-rank records of an unfinished distributed store."""
_SHARD_NAME = re.compile(r"^\.?(shard_(\d+)\.safetensors)(\.tmp)?$")


def _exchange(status: str, out: Path, group: Any) -> None:
    """:func:`assay.store.ranks.exchange_status`; a non-empty verdict raises :class:`StoreError` on every live
    rank, naming each failed rank."""
    verdict = exchange_status(status, group)
    if verdict:
        raise StoreError(f"distributed caching into {out} failed: {verdict}. Re-run the same command with the same "
                         "number of processes to resume (finished shards are kept)")


# ------------------------------------------------------------------------------------------ phases
def _start(out: Path, config: dict[str, Any], n_rows: int, world: int, resume: bool) -> None:
    """Rank 0: create the manifest of a new store, or check that the existing one is this run's."""
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        open_manifest(out, config, n_rows, resume=resume, world_size=world)


def _record_path(out: Path, rank: int) -> Path:
    return out / RANKS / f"rank_{rank:05d}.json"


def _read_record(out: Path, rank: int, world: int, config: dict[str, Any]) -> list[ShardRecord]:
    path = _record_path(out, rank)
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
        shards = [shard_from_dict(s) for s in doc["shards"]]
        saved_world, saved_config = int(doc["world_size"]), doc["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path} is corrupted ({type(e).__name__}: {e}); delete it to recompute rank {rank}'s "
                         "shards") from None
    if saved_world != world:
        raise StoreError(f"{path} was written by a run of {saved_world} processes; this run has {world}")
    diff = config_diff(saved_config, config)
    if diff:
        raise StoreError(f"{path} belongs to a different run:\n  " + "\n  ".join(diff))
    return shards


def _clean_block(out: Path, block: range, kept: set[int]) -> None:
    """Remove this block's temporary files and its shard files not listed in the rank's record."""
    for p in [*out.glob(f"{ROWS}/*"), *out.glob("acts/*/*")]:
        m = _SHARD_NAME.match(p.name)
        if m and int(m.group(2)) in block and (m.group(3) or int(m.group(2)) not in kept):
            p.unlink()


def _work(out: Path, src: _Source, config: dict[str, Any], rank: int, world: int, verify: bool,
          progress: ProgressFn | None, max_pending: int) -> tuple[int, int, float]:
    """Compute this rank's block of shards (resuming its record): ``(rows resumed, rows new, seconds)``."""
    manifest = read_manifest(out)
    diff = config_diff(manifest.config, config)
    if diff:
        raise StoreError(f"rank {rank} runs a different model or corpus than rank 0:\n  " + "\n  ".join(diff))
    if manifest.complete:
        return 0, 0, 0.0
    n_rows, shard_rows = manifest.n_rows, src.shard_rows
    block = rank_block(math.ceil(n_rows / shard_rows), rank, world)
    (out / RANKS).mkdir(exist_ok=True)
    with _lock(out / RANKS, f".lock_{rank:05d}"):
        shards = []
        for k, shard in zip(block, _read_record(out, rank, world, config), strict=False):
            damaged = verify and any(
                file_damage(out, rec, shapes=shard_shapes(config, g, shard.rows)) is not None
                for g, rec in shard.files.items())
            if shard.index != k or damaged:
                break
            shards.append(shard)
        _clean_block(out, block, {s.index for s in shards})
        first_row, stop_row = block.start * shard_rows, min(block.stop * shard_rows, n_rows)
        resumed = sum(s.rows for s in shards)

        def save() -> None:
            doc = {"rank": rank, "world_size": world, "config": config, "shards": [shard_to_dict(s) for s in shards]}
            atomic_write_text(_record_path(out, rank), json.dumps(doc, indent=1, sort_keys=True))

        def commit(index: int, shard: dict[str, dict[str, torch.Tensor]]) -> None:
            files = {group: _write_file(out, index, group, tensors) for group, tensors in shard.items()}
            shards.append(ShardRecord(index, index * shard_rows, int(shard[ROWS]["tokens"].shape[0]), files))
            save()

        def after_batch(rows_end: int) -> None:
            if progress is not None:
                progress(min(rows_end, stop_row) - first_row, stop_row - first_row)

        save()
        t0 = time.perf_counter()
        if block.start + len(shards) < block.stop:
            _drain(_shards(src, block.start + len(shards), stop_row, after_batch), commit, max_pending)
        return resumed, stop_row - first_row - resumed, time.perf_counter() - t0


def _finish(out: Path, world: int, config: dict[str, Any], seconds: float) -> None:
    """Rank 0: join the ranks' records into the one manifest (atomic replace), then drop ``ranks/``."""
    with _lock(out):
        manifest = read_manifest(out)
        if manifest.complete:
            return
        shards = [s for r in range(world) for s in _read_record(out, r, world, config)]
        want = math.ceil(manifest.n_rows / int(config["shard_rows"]))
        if [s.index for s in shards] != list(range(want)):
            raise StoreError(f"the ranks' records in {out / RANKS} list shards {[s.index for s in shards]}, "
                             f"expected 0..{want - 1}; re-run the same command to complete them")
        meta = {**manifest.meta, "seconds": seconds}
        write_manifest(out, Manifest(config, manifest.n_rows, tuple(shards), True, meta))
        read_manifest(out)  # the joined manifest passes the same checks as any other
        shutil.rmtree(out / RANKS)


def write_store_distributed(
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
    group: Any = None,
    autocast_dtype: str | None = None,
) -> StoreSummary:
    """:func:`assay.store.write_store` split over the ranks of ``group`` (``None``: the default process group,
    which must be initialised; gloo, since only statuses travel over it). Call it on every rank with the same
    arguments; every rank returns the finished store's summary with its own ``resumed_rows``, ``seconds`` and
    ``rows_per_second``. ``progress(rows_done, rows)`` counts this rank's block.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    out = Path(out_dir)
    t0 = time.perf_counter()
    prepared, status = None, ""
    try:
        prepared = _prepare_run(model, sites, windows, batch_size=batch_size, shard_rows=shard_rows, dtype=dtype,
                                model_name=model_name, forward=forward, autocast_dtype=autocast_dtype)
        if rank == 0:
            _start(out, prepared[0], int(prepared[1].tokens.numel()), world, resume)
    except Exception as e:  # noqa: BLE001 - reported to every rank by _exchange
        status = f"{type(e).__name__}: {e}"
    _exchange(status, out, group)
    config, src = prepared
    done, status = run_status(_work, out, src, config, rank, world, verify, progress, max_pending)
    _exchange(status, out, group)
    status = run_status(_finish, out, world, config, time.perf_counter() - t0)[1] if rank == 0 else ""
    _exchange(status, out, group)
    resumed, new, seconds = done
    manifest = read_manifest(out)
    nbytes = sum(f.bytes for s in manifest.shards for f in s.files.values())
    rate = new / seconds if seconds > 0 else float("nan")
    return StoreSummary(out, manifest.n_rows, len(manifest.shards), nbytes, resumed, seconds, rate, (), (), ())
