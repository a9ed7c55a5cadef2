"""The store manifest: one JSON file that says what a store holds and which shards are complete.

A store is a folder::

    manifest.json                               this file
    rows/shard_000000.safetensors               tokens, doc_ids, positions (int64, one row per token)
    acts/<site>/shard_000000.safetensors        acts [rows, d] in the store's dtype, one file per site

Shard ``k`` holds global rows ``[k * shard_rows, min((k + 1) * shard_rows, n_rows))``: every shard
but the last has exactly ``shard_rows`` rows. The manifest records, per shard and per file, the
file's SHA-256 and byte size. A shard is listed only after all of its files are on disk (written to
a temporary name, fsynced, renamed), and the manifest itself is replaced atomically, so the
manifest never names a file that is not fully written.

``config`` identifies the run (model name and weight fingerprint, sites and widths, dtype, context
length, batch size, shard size, number of windows, corpus fingerprint). Resuming a run requires the
same config; :func:`config_diff` names every key that differs. :func:`shard_shapes` says which
tensors, of which shapes, a shard file of a group must hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from assay import __version__
from assay.artifact import atomic_write_text

__all__ = [
    "StoreError",
    "FileRecord",
    "ShardRecord",
    "Manifest",
    "MANIFEST_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "read_manifest",
    "write_manifest",
    "config_diff",
    "shard_file",
    "shard_shapes",
    "shard_to_dict",
    "shard_from_dict",
    "check_world_size",
    "META",
    "REPAIR_HINT",
]

MANIFEST_FILE = "manifest.json"
FORMAT = "assay-activation-store"
FORMAT_VERSION = 1
ROWS = "rows"
"""Name of the per-shard file group holding tokens, doc ids and positions."""
META = ("tokens", "doc_ids", "positions")
"""The int64 per-row tensors of a ``rows`` file."""
REPAIR_HINT = ("re-run the same `assay cache` command (or write_store with the same arguments) to rewrite exactly "
               "the damaged shards")
"""How to repair a damaged shard file (the writer checks and recomputes listed shards on a re-run)."""


class StoreError(ValueError):
    """A store that is missing, corrupted, incomplete, or not what the caller expected."""


class FileRecord(NamedTuple):
    """One file of a shard."""

    path: str
    """Path relative to the store folder."""
    sha256: str
    """Hex SHA-256 of the whole file."""
    bytes: int
    """File size in bytes."""


class ShardRecord(NamedTuple):
    """One complete shard."""

    index: int
    """Shard number ``k``."""
    start: int
    """First global row (``k * shard_rows``)."""
    rows: int
    """Number of rows (``shard_rows`` except possibly for the last shard)."""
    files: dict[str, FileRecord]
    """``"rows"`` and one entry per site."""


class Manifest(NamedTuple):
    """The parsed ``manifest.json``."""

    config: dict[str, Any]
    """Run identity; see the module docstring."""
    n_rows: int
    """Rows the finished store holds (windows x context length)."""
    shards: tuple[ShardRecord, ...]
    """Complete shards, in order."""
    complete: bool
    """True once every row is written."""
    meta: dict[str, Any]
    """Free-form facts about the run (timings, tokens/s)."""

    @property
    def rows_done(self) -> int:
        """Rows held by the complete shards."""
        return sum(s.rows for s in self.shards)


def shard_file(group: str, index: int) -> str:
    """Relative path of shard ``index`` of a file group (``"rows"`` or a site name)."""
    name = f"shard_{index:06d}.safetensors"
    return f"{ROWS}/{name}" if group == ROWS else f"acts/{group}/{name}"


def shard_shapes(config: Mapping[str, Any], group: str, rows: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors a shard file of ``group`` with ``rows`` rows holds."""
    if group == ROWS:
        return {name: (rows,) for name in META}
    return {"acts": (rows, int(config["d"][group]))}


def shard_to_dict(s: ShardRecord) -> dict[str, Any]:
    """A shard record as JSON-ready data (the inverse of :func:`shard_from_dict`)."""
    return {"index": s.index, "start": s.start, "rows": s.rows, "files": {g: f._asdict() for g, f in s.files.items()}}


def shard_from_dict(s: Mapping[str, Any]) -> ShardRecord:
    """A shard record from :func:`shard_to_dict`'s data (``KeyError``/``TypeError``/``ValueError`` if malformed)."""
    files = {g: FileRecord(str(f["path"]), str(f["sha256"]), int(f["bytes"])) for g, f in s["files"].items()}
    return ShardRecord(index=int(s["index"]), start=int(s["start"]), rows=int(s["rows"]), files=files)


def check_world_size(folder: Path, m: Manifest, world_size: int) -> None:
    """Refuse to continue an unfinished store with another number of processes than the run that started it
    (``meta["world_size"]``, 1 when absent): each rank's share of the shards depends on it."""
    started = int(m.meta.get("world_size", 1))
    if not m.complete and started != world_size:
        how = "a single process" if started == 1 else f"`torchrun --nproc-per-node {started}` (or as many ranks)"
        raise StoreError(f"{folder} is an unfinished store started by {started} process(es); this run has {world_size}. "
                         f"Resume it with {how}, or write a new store in another folder")


def _to_json(m: Manifest) -> str:
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "assay_version": __version__,
        "config": m.config,
        "n_rows": m.n_rows,
        "complete": m.complete,
        "meta": m.meta,
        "shards": [shard_to_dict(s) for s in m.shards],
    }
    return json.dumps(doc, indent=1, sort_keys=True)


def write_manifest(folder: str | Path, m: Manifest) -> None:
    """Replace ``folder/manifest.json`` atomically (temp file, fsync, rename, fsync of the folder)."""
    folder = Path(folder)
    atomic_write_text(folder / MANIFEST_FILE, _to_json(m))
    fsync_dir(folder)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and validate ``folder/manifest.json``; problems raise :class:`StoreError`."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"has no {MANIFEST_FILE}"
        raise StoreError(f"{folder} is not an activation store: it {what}. Write one with assay.store.write_store "
                         "or `assay cache`.")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is corrupted (not valid JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"{path} is not an activation-store manifest (format {doc.get('format')!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {doc.get('format_version')!r}; this assay reads version "
            f"{FORMAT_VERSION}. Re-create the store with this assay version."
        )
    try:
        shards = tuple(shard_from_dict(s) for s in doc["shards"])
        m = Manifest(dict(doc["config"]), int(doc["n_rows"]), shards, bool(doc["complete"]), dict(doc.get("meta", {})))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StoreError(f"{path} is corrupted: missing or ill-typed field ({type(e).__name__}: {e})") from None
    _check_consistent(path, m)
    return m


def _check_consistent(path: Path, m: Manifest) -> None:
    """Shards numbered 0..k-1, contiguous, of the configured size, with a file per site."""
    shard_rows = int(m.config["shard_rows"])
    groups = {ROWS, *m.config["sites"]}
    for k, s in enumerate(m.shards):
        if s.index != k or s.start != k * shard_rows:
            raise StoreError(f"{path} is corrupted: shard {k} is listed as index {s.index}, start {s.start}")
        last = s.start + s.rows == m.n_rows
        if s.rows != shard_rows and not (last and 0 < s.rows < shard_rows):
            raise StoreError(f"{path} is corrupted: shard {k} has {s.rows} rows, expected {shard_rows}")
        if set(s.files) != groups:
            raise StoreError(f"{path} is corrupted: shard {k} lists files {sorted(s.files)}, expected {sorted(groups)}")
    if m.rows_done > m.n_rows or (m.complete and m.rows_done != m.n_rows):
        raise StoreError(f"{path} is corrupted: {m.rows_done} rows in shards, {m.n_rows} expected")


def config_diff(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two run configs (empty when they match)."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<absent>"), wanted.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: store has {a!r}, this run has {b!r}")
    return out
