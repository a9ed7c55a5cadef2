"""``assay cache``: cache a real model's activations over a bundled corpus into an activation store.

Backed by :class:`CacheConfig` (every flag is a field; ``--config FILE.toml`` reads any of them).
The model comes from :func:`assay.models.load`, the text from :func:`assay.corpora.load_corpus`, cut
into windows by :func:`assay.corpora.token_windows`; :func:`assay.store.write_store` does the work,
with a progress bar showing tokens/s and the time left. Running the same command again resumes an
interrupted run (``--no-resume`` refuses to touch an existing store instead) and repairs a damaged
one: every existing shard file is checked against the manifest (``--no-verify`` skips this full
read) and exactly the damaged shards are recomputed and rewritten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from assay.cli import command
from assay.config import ConfigError

__all__ = ["CacheConfig", "run_cache", "prepare", "register"]


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Cache a model's activations at one or more sites over a tokenised corpus."""

    model: str = "smollm2-135m"
    """Offline model name (see assay.models.load): smollm2-135m or minilm-l6."""
    sites: tuple[str, ...] = ("model.layers.3",)
    """Sites (module paths) to cache, all from one forward pass stopped after the last of them."""
    corpus: str = "bundled"
    """Corpus name (see assay.corpora.load_corpus): bundled, lee_background, lee, pang_lee or pydoc_topics."""
    n_tokens: int = 100_000
    """Tokens (rows) to cache: rounded up to whole windows of context_length tokens."""
    context_length: int = 128
    """Tokens per window, a BOS token included; no window spans two documents."""
    window_seed: int | None = 0
    """Seed for picking which windows of the corpus to cache (kept in corpus order); unset: the first ones."""
    batch_size: int = 8
    """Windows per forward pass."""
    shard_rows: int = 65_536
    """Rows per shard file (fixed; the last shard may be shorter)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """On-disk dtype of the activations (the model itself runs in float32)."""
    device: str = "cpu"
    """Device to run the model on (cpu, cuda, cuda:1, ...)."""
    out_dir: Path | None = None
    """Store folder; unset: runs/cache/<model>-<sites>-<n_tokens>."""
    resume: bool = True
    """Continue an interrupted run of the same config in out_dir (otherwise an existing store is an error)."""
    verify: bool = True
    """On a re-run, check every existing shard file (size, header, SHA-256: one full read of the store) and
    recompute exactly the damaged shards; --no-verify skips the check."""

    def __post_init__(self) -> None:
        if not self.sites or any(not s for s in self.sites):
            raise ConfigError("sites must name at least one module path, e.g. --sites model.layers.3")
        for name in ("n_tokens", "context_length", "batch_size", "shard_rows"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive; got {getattr(self, name)}")
        if self.context_length < 2:
            raise ConfigError("context_length must be at least 2 (a BOS token and one text token)")

    @property
    def store_dir(self) -> Path:
        """``out_dir``, or the default folder under ``runs/cache``."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        sites = "+".join(self.sites)
        return Path("runs") / "cache" / f"{self.model}-{sites}-{self.n_tokens}"


def prepare(cfg: CacheConfig, *, loaded: Any = None) -> tuple[Any, Any]:
    """Load the model (unless ``loaded``, an already loaded :class:`assay.models.offline.LoadedModel` of
    ``cfg.model``, is given) and cut the corpus into windows: ``(model, TokenWindows)``."""
    import torch

    from assay import corpora, models

    if loaded is None:
        loaded = models.load(cfg.model, device=cfg.device)
    elif loaded.name != cfg.model:
        raise ConfigError(f"the loaded model is {loaded.name!r} but the config asks for {cfg.model!r}")
    if loaded.tokenizer is None:
        raise ConfigError(f"model {cfg.model!r} takes images, not text; `assay cache` needs a text model")
    docs = corpora.load_corpus(cfg.corpus)
    windows = corpora.token_windows(loaded.tokenizer, docs, cfg.context_length)
    needed = math.ceil(cfg.n_tokens / cfg.context_length)
    available = windows.tokens.shape[0]
    if needed > available:
        raise ConfigError(
            f"corpus {cfg.corpus!r} yields {available} windows of {cfg.context_length} tokens "
            f"({available * cfg.context_length} tokens); asked for {cfg.n_tokens}. Lower --n-tokens or "
            "--context-length, or pick a larger corpus."
        )
    if cfg.window_seed is None:
        keep = torch.arange(needed)
    else:
        g = torch.Generator().manual_seed(cfg.window_seed)
        keep = torch.randperm(available, generator=g)[:needed].sort().values
    windows = type(windows)(windows.tokens[keep], windows.doc_ids[keep], windows.positions[keep])
    return loaded.model, windows


def run_cache(cfg: CacheConfig, *, quiet: bool = False, loaded: Any = None) -> Any:
    """Run ``assay cache``; returns the :class:`assay.store.StoreSummary`. ``loaded``: the model, already
    loaded (see :func:`prepare`)."""
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

    from assay.store import StoreError, write_store
    from assay.store.manifest import MANIFEST_FILE

    class TokensPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? tok/s" if speed is None else f"{speed:,.0f} tok/s")

    console = Console(stderr=True, quiet=quiet)
    model, windows = prepare(cfg, loaded=loaded)
    n_rows = windows.tokens.numel()
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
            summary = write_store(out, model, cfg.sites, windows, batch_size=cfg.batch_size, shard_rows=cfg.shard_rows,
                                  dtype=cfg.dtype, model_name=cfg.model, resume=cfg.resume, verify=cfg.verify,
                                  progress=progress)
        except StoreError as e:
            raise typer.BadParameter(str(e)) from None
        bar.update(task, completed=n_rows)
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
