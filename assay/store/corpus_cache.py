"""Caching an offline model's activations over a bundled corpus: the work behind ``assay cache``.

:func:`prepare` loads the model (:func:`assay.models.load`) and cuts the text
(:func:`assay.corpora.load_corpus`) into windows that never span two documents
(:func:`assay.corpora.token_windows`); :func:`cache_corpus` then writes the store with
:func:`assay.store.write_store`, which resumes an interrupted run and, on a re-run, checks every shard file
and rewrites exactly the damaged ones. Launched by ``torchrun --nproc-per-node N -m assay cache ...``, the
ranks split the shards and write one store (:mod:`assay.store.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from assay.config import ConfigError

__all__ = ["CacheConfig", "prepare", "cache_corpus"]


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Cache a model's activations at one or more sites over a tokenised corpus."""

    model: str = "smollm2-135m"
    """Offline model name (see assay.models.load): smollm2-135m or minilm-l6; or a path to a local Hugging Face
    model folder saved with safetensors (config.json, model.safetensors and tokenizer files)."""
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
    """On-disk dtype of the activations (a named model runs in float32, a model folder in its saved dtype)."""
    device: str = "cpu"
    """Device to run the model on (cpu, cuda, cuda:1, ...)."""
    autocast_dtype: Literal["bfloat16", "float16"] | None = None
    """Run the forward pass under torch.autocast in this dtype (CPU or GPU; the weights stay as loaded); the
    manifest records it. Unset: no autocast."""
    out_dir: Path | None = None
    """Store folder; unset: runs/cache/<model>-<sites>-<n_tokens>."""
    resume: bool = True
    """Continue an interrupted run of the same config in out_dir (otherwise an existing store is an error)."""
    verify: bool = True
    """On a re-run, check every existing shard file (size, header, SHA-256: one full read of the store) and
    recompute exactly the damaged shards; --no-verify skips the check."""
    timeout_s: float = 1800.0
    """Under torchrun: seconds a rank waits for another before reporting it dead or hung (and which rank)."""

    def __post_init__(self) -> None:
        if not self.sites or any(not s for s in self.sites):
            raise ConfigError("sites must name at least one module path, e.g. --sites model.layers.3")
        for name in ("n_tokens", "context_length", "batch_size", "shard_rows", "timeout_s"):
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
        return Path("runs") / "cache" / f"{Path(self.model).name}-{sites}-{self.n_tokens}"


def prepare(cfg: CacheConfig, *, loaded: Any = None) -> tuple[Any, Any]:
    """Load the model (unless ``loaded``, an already loaded :class:`assay.models.offline.LoadedModel` of
    ``cfg.model``, is given) and cut the corpus into windows: ``(model, TokenWindows)``."""
    import torch

    from assay import corpora, models
    from assay.store.ranks import rank_device

    if loaded is None:
        loaded = models.load(cfg.model, device=rank_device(cfg.device))
    elif loaded.name != cfg.model:
        raise ConfigError(f"the loaded model is {loaded.name!r} but the config asks for {cfg.model!r}")
    if loaded.tokenizer is None:
        raise ConfigError(f"model {cfg.model!r} has no tokenizer (an image model, or a model folder without "
                          "tokenizer files); `assay cache` needs a text model with its tokenizer")
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


def cache_corpus(cfg: CacheConfig, *, loaded: Any = None,
                 progress: Callable[[int, int], None] | None = None) -> Any:
    """Cache ``cfg``'s model (or ``loaded``) at ``cfg.sites`` over its corpus into ``cfg.store_dir``; returns
    the :class:`assay.store.StoreSummary`. ``progress(rows_done, n_rows)`` is called after every batch."""
    from assay.store import write_store
    from assay.store.distributed import write_store_distributed
    from assay.store.ranks import launched_by_torchrun, torchrun_group

    model, windows = prepare(cfg, loaded=loaded)
    kwargs = dict(batch_size=cfg.batch_size, shard_rows=cfg.shard_rows, dtype=cfg.dtype, model_name=cfg.model,
                  resume=cfg.resume, verify=cfg.verify, progress=progress, autocast_dtype=cfg.autocast_dtype)
    if not launched_by_torchrun():
        return write_store(cfg.store_dir, model, cfg.sites, windows, **kwargs)
    with torchrun_group(cfg.timeout_s) as group:
        return write_store_distributed(cfg.store_dir, model, cfg.sites, windows, group=group, **kwargs)
