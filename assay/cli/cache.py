"""``assay cache``: cache a real model's activations over a bundled corpus into an activation store.

The config and the work are :mod:`assay.store.corpus_cache` (every flag is a field of its
:class:`~assay.store.corpus_cache.CacheConfig`; ``--config FILE.toml`` reads any of them); this module
registers the command and shows a progress bar with tokens/s and the time left (under ``torchrun`` rank 0's
bar, over its share of the shards: see :mod:`assay.store.distributed`). Running the same
command again resumes an interrupted run (``--no-resume`` refuses to touch an existing store instead)
and repairs a damaged one: every existing shard file is checked against the manifest (``--no-verify``
skips this full read) and exactly the damaged shards are recomputed and rewritten.
"""

from __future__ import annotations

import math
from typing import Any

import typer

from assay.cli import command
from assay.store.corpus_cache import CacheConfig

__all__ = ["run_cache", "register"]


def run_cache(cfg: CacheConfig, *, quiet: bool = False, loaded: Any = None) -> Any:
    """Run ``assay cache`` with a progress bar; returns the :class:`assay.store.StoreSummary`. ``loaded``: the
    model, already loaded (see :func:`assay.store.corpus_cache.prepare`)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from assay.store import StoreError
    from assay.store.corpus_cache import cache_corpus
    from assay.store.manifest import MANIFEST_FILE

    class TokensPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? tok/s" if speed is None else f"{speed:,.0f} tok/s")

    import os

    console = Console(stderr=True, quiet=quiet or int(os.environ.get("RANK", "0")) != 0)  # under torchrun: rank 0 talks
    n_rows = math.ceil(cfg.n_tokens / cfg.context_length) * cfg.context_length
    out = cfg.store_dir
    console.print(f"caching {cfg.model} at {', '.join(cfg.sites)}: {n_rows:,} tokens -> {out}")
    if cfg.verify and cfg.resume and (out / MANIFEST_FILE).is_file():
        console.print("checking the existing shard files against the manifest (SHA-256; --no-verify skips this)")
    columns = (TextColumn("[bold]cache"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} tok"),
               TokensPerSecond(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("cache", total=n_rows)
        started: dict[str, int] = {}

        def progress(done: int, total: int) -> None:
            if "first" not in started:  # a resumed run starts the bar (and its speed) where it was
                started["first"] = done
                bar.reset(task, total=total, completed=done)
            bar.update(task, completed=done)

        try:
            summary = cache_corpus(cfg, loaded=loaded, progress=progress)
        except StoreError as e:
            raise typer.BadParameter(str(e)) from None
        bar.update(task, completed=bar.tasks[0].total)  # the total: all rows, or under torchrun rank 0's share
    if summary.repaired_shards:
        console.print(f"repaired shard(s) {', '.join(map(str, summary.repaired_shards))}: rewrote "
                      f"{', '.join(summary.repaired_files)}")
    if summary.rerecorded_files:
        console.print(f"warning: the recomputed {', '.join(summary.rerecorded_files)} differ from the bytes first "
                      "written (the model is not bit-reproducible on this machine); their manifest records were "
                      "updated")
    note = f" (resumed at row {summary.resumed_rows:,})" if summary.resumed_rows else ""
    console.print(f"wrote {summary.n_rows:,} rows in {summary.n_shards} shards, {summary.bytes / 2**20:,.1f} MiB; "
                  f"{summary.rows_per_second:,.0f} tok/s{note}")
    return summary


def register(app: typer.Typer) -> None:
    command(app, "cache", CacheConfig, run_cache)
