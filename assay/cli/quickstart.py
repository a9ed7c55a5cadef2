"""``assay quickstart``: the first end-to-end run (what ``make quickstart`` does).

For now: cache SmolLM2-135M's residual stream after layer 3 over ~20k tokens of the bundled corpus
into ``runs/quickstart/store`` (resumed if interrupted, reused if complete), then print a summary:
rows, shards, bytes, tokens/s and a few activation statistics computed by streaming the store
(norms with and without the BOS rows, whose residual norm is outsized in Llama-family models, and
the tokens with the largest norms). Later issues extend it into the full flagship run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from assay.cli import command

__all__ = ["QuickstartConfig", "run_quickstart", "store_statistics", "register"]


@dataclass(frozen=True, kw_only=True)
class QuickstartConfig:
    """Cache SmolLM2 activations from the bundled corpus and summarise them."""

    model: str = "smollm2-135m"
    """Offline model name."""
    site: str = "model.layers.3"
    """Site to cache (an early residual-stream layer keeps the run short)."""
    n_tokens: int = 20_000
    """Tokens to cache."""
    context_length: int = 128
    """Tokens per window, BOS included."""
    batch_size: int = 8
    """Windows per forward pass."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """On-disk dtype of the activations."""
    out_dir: Path = Path("runs/quickstart")
    """Folder for this run's outputs (the store goes to <out_dir>/store)."""


def store_statistics(store: Any, site: str, *, chunk: int = 4096) -> dict[str, Any]:
    """Streaming statistics of a store's rows: norms (all rows, BOS rows, text rows), entry mean/std,
    and the five text tokens with the largest norms as ``(row, token_id, norm)``."""
    import torch

    n, d = store.n_rows, store.d(site)
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    norms = torch.empty(n)
    for a in range(0, n, chunk):
        h = store.read(site, a, min(a + chunk, n)).double()
        total += h.sum()
        total_sq += (h * h).sum()
        norms[a : a + h.shape[0]] = h.norm(dim=1).float()
    positions = store.positions.all()
    bos = positions < 0
    text_norms = norms.masked_fill(bos, float("-inf"))
    top = torch.topk(text_norms, k=min(5, int((~bos).sum())))
    mean = (total / (n * d)).item()
    return {
        "rows": n,
        "d": d,
        "entry_mean": mean,
        "entry_std": (total_sq / (n * d) - mean**2).clamp_min(0).sqrt().item(),
        "norm_median_text": norms[~bos].median().item() if (~bos).any() else float("nan"),
        "norm_max_text": norms[~bos].max().item() if (~bos).any() else float("nan"),
        "norm_median_bos": norms[bos].median().item() if bos.any() else float("nan"),
        "top_text_rows": [(int(r), int(store.tokens[int(r)]), float(v)) for r, v in zip(top.indices, top.values)],
    }


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run the quickstart; returns the printed facts as a dict."""
    from rich.console import Console
    from rich.table import Table

    from assay.cli.cache import CacheConfig, run_cache
    from assay.store import ActivationStore

    console = Console()
    cache_cfg = CacheConfig(model=cfg.model, sites=(cfg.site,), corpus="bundled", n_tokens=cfg.n_tokens,
                            context_length=cfg.context_length, batch_size=cfg.batch_size, shard_rows=8192,
                            dtype=cfg.dtype, out_dir=Path(cfg.out_dir) / "store")  # type: ignore[arg-type]
    summary = run_cache(cache_cfg)
    with ActivationStore.open(cache_cfg.store_dir, verify="open") as store:
        stats = store_statistics(store, cfg.site)
        tokenizer = _tokenizer(cfg.model)
        seconds = float(store.manifest.meta.get("seconds", summary.seconds))
    rate = store.n_rows / seconds if seconds > 0 else float("nan")
    table = Table(title=f"assay quickstart: {cfg.model} @ {cfg.site}", show_header=False)
    table.add_row("store", str(cache_cfg.store_dir))
    table.add_row("rows (tokens) x d", f"{stats['rows']:,} x {stats['d']}")
    table.add_row("shards / bytes", f"{summary.n_shards} / {summary.bytes / 2**20:,.1f} MiB ({cfg.dtype})")
    table.add_row("caching speed", f"{rate:,.0f} tokens/s over {seconds:.1f} s (checksums verified)")
    table.add_row("entry mean / std", f"{stats['entry_mean']:+.4f} / {stats['entry_std']:.4f}")
    table.add_row("row L2 norm, text tokens", f"median {stats['norm_median_text']:.2f}, max {stats['norm_max_text']:.2f}")
    table.add_row("row L2 norm, BOS rows", f"median {stats['norm_median_bos']:.2f}")
    for r, tok, v in stats["top_text_rows"]:
        word = tokenizer.decode([tok]) if tokenizer is not None else str(tok)
        table.add_row(f"large norm: row {r}", f"{word!r} (norm {v:.2f})")
    console.print(table)
    return {**stats, "tokens_per_s": rate, "shards": summary.n_shards, "bytes": summary.bytes}


def _tokenizer(name: str) -> Any:
    try:
        from assay import models

        return models.load(name).tokenizer
    except Exception:  # the summary still prints token ids
        return None


def register(app: typer.Typer) -> None:
    command(app, "quickstart", QuickstartConfig, run_quickstart)
