"""``assay quickstart``: the flagship end-to-end run (what ``make quickstart`` does).

1. Ground truth: train (or load from the zoo cache) the tiny transformer of the PCFG world (``expr``),
   cache its residual activations, fit TopK and ReLU SAEs and a PCA baseline, and score them against
   the grammar's per-token truth (the dictionaries family of :mod:`assay.bench.dictionaries` through the
   bench runner, one seed; results are cached so a re-run is instant).
2. A real model: cache SmolLM2-135M's residual stream after layer 3 over ~20k tokens of the bundled
   corpus into ``<out_dir>/store`` (resumed if interrupted, reused if complete; a summary of the
   store with activation statistics is printed), train a TopK SAE on it and compute the CE loss
   recovered when the SAE's reconstruction is spliced in (:mod:`assay.evaluate.spliced`).
3. Write ``<out_dir>/report.html`` (tables, plots, a feature browser over the SmolLM2 SAE's latents
   with top contexts and logit effects) and print where it is with a summary table.
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
    world: str = "expr"
    """Ground-truth world of the first part (a bench world spec; expr is the PCFG world)."""
    world_methods: tuple[str, ...] = ("topk:k=4|8", "relu:l1_coef=1|3", "pca:n=16")
    """Methods scored against the world's ground truth (bench method specs)."""
    world_sae_steps: int = 600
    """SAE training steps on the world's activations."""
    lm: bool = True
    """Run the SmolLM2 part (caching, SAE, CE loss recovered)."""
    lm_sae_steps: int = 300
    """SAE training steps on the SmolLM2 activations."""
    lm_sae_batch: int = 1024
    """Tokens per SAE step on SmolLM2."""
    lm_sae_expansion: int = 8
    """Latents = expansion x 576 for the SmolLM2 SAE."""
    lm_sae_k: int = 32
    """Active latents per token of the SmolLM2 TopK SAE."""
    ce_windows: int = 8
    """Last windows of the cached store held out from SAE training: held-out FVU, L0 and CE loss recovered."""


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
    """Run the flagship quickstart; returns what it printed as a dict."""
    import time

    from rich.console import Console

    from assay.bench.dictionaries import FAMILY, DictionarySettings
    from assay.bench.runner import run_family

    console = Console()
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    console.print(f"[1/3] ground truth: {', '.join(cfg.world_methods)} on the {cfg.world!r} world")
    suite = run_family(FAMILY, worlds=(cfg.world,), methods=cfg.world_methods, seeds=(0,),
                       settings=DictionarySettings(steps=cfg.world_sae_steps), out_dir=out / "bench", report=False,
                       log=lambda m: console.print("  " + m, markup=False, highlight=False))
    facts: dict[str, Any] = {"world_runs": len(suite.runs)}
    lm: dict[str, Any] | None = None
    if cfg.lm:
        console.print(f"[2/3] {cfg.model}: cache activations, train a TopK SAE, CE loss recovered")
        facts.update(_cache_and_summarise(cfg, console))
        lm = _lm_sae(cfg, console)
        facts.update({k: v for k, v in lm.items() if k != "features"})
    console.print("[3/3] report")
    path = _report(cfg, suite, lm)
    facts["report"] = str(path)
    facts["seconds"] = time.perf_counter() - t0
    _print_summary(console, suite, lm, path, facts["seconds"])
    return facts


def _cache_and_summarise(cfg: QuickstartConfig, console: Any) -> dict[str, Any]:
    """The caching step (written by engineer "store"): cache SmolLM2 activations, print a store summary."""
    from rich.table import Table

    from assay.cli.cache import CacheConfig, run_cache
    from assay.store import ActivationStore

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


def _lm_sae(cfg: QuickstartConfig, console: Any) -> dict[str, Any]:
    """Train a TopK SAE on the cached SmolLM2 activations; CE loss recovered; feature-browser data.

    Training and evaluation are :func:`assay.dictionaries.store_run.train_sae_on_store`: BOS rows (norm
    outliers) are left out of training and never spliced, and the last ``ce_windows`` windows of the store
    are held out for FVU, L0 and CE/KL recovered.
    """
    import types

    import torch

    from assay import models
    from assay.bench.features import feature_browser_data
    from assay.cli.cache import CacheConfig
    from assay.dictionaries.store_run import StoreSAEConfig, train_sae_on_store
    from assay.store import ActivationStore

    store_dir = CacheConfig(model=cfg.model, sites=(cfg.site,), out_dir=Path(cfg.out_dir) / "store").store_dir
    loaded = models.load(cfg.model)
    run_cfg = StoreSAEConfig(architecture="topk", expansion=cfg.lm_sae_expansion, k=cfg.lm_sae_k,
                             steps=cfg.lm_sae_steps, batch_size=cfg.lm_sae_batch, lr=1e-3,
                             warmup_steps=max(1, cfg.lm_sae_steps // 20), holdout_windows=cfg.ce_windows)
    with ActivationStore.open(store_dir, verify="open") as store:
        res = train_sae_on_store(store, cfg.site, run_cfg, model=loaded.model, out=Path(cfg.out_dir) / "lm_sae",
                                 checkpoint=Path(cfg.out_dir) / "lm_sae.ckpt")
        T = cfg.context_length
        m = min(store.n_rows, 4096) // T * T
        h = store.read(cfg.site, 0, m)
        tokens = torch.as_tensor(store.tokens[:m]).long().reshape(-1, T)
    sae, rec, sp, sm = res.sae, res.reconstruction, res.sparsity, res.spliced
    console.print(f"  SAE: L0 {sp.l0:.1f}, FVU {rec.fvu:.3f}, dead {sp.dead_fraction:.1%}; CE clean {sm.ce_clean:.3f}, "
                  f"with SAE {sm.ce_sae:.3f}, zero-ablated {sm.ce_zero:.3f} -> recovered {sm.ce_recovered:.3f} "
                  f"(on {cfg.ce_windows} held-out windows)", highlight=False)
    rows = torch.arange(m)
    data = types.SimpleNamespace(eval=h, concepts=None, concept_names=(), token_rows=tokens, vocab=None, acts=None,
                                 row_index=torch.stack([rows // T, rows % T], 1))
    tok = loaded.tokenizer
    head = loaded.model.get_output_embeddings().weight
    features = feature_browser_data(sae, data, top_n=5, radius=10, unembed=head,
                                    token_str=lambda i: tok.decode([int(i)]),
                                    title=f"TopK SAE (k={cfg.lm_sae_k}, {sae.d_sae} latents) on {cfg.model} {cfg.site}")
    return {"lm_l0": sp.l0, "lm_fvu": rec.fvu, "lm_dead": sp.dead_fraction, "ce_clean": sm.ce_clean,
            "ce_sae": sm.ce_sae, "ce_zero": sm.ce_zero, "ce_recovered": sm.ce_recovered, "kl_score": sm.kl_score,
            "lm_steps": res.train.steps, "features": features}


def _report(cfg: QuickstartConfig, suite: Any, lm: dict[str, Any] | None) -> Path:
    from assay.bench.dictionaries import FAMILY
    from assay.report import Section, Table, write_section

    bench = FAMILY.section(suite)  # the world's table and plots (drawn under <out_dir>/bench/plots)
    tables = list(bench.tables)
    if lm is not None:
        tables.append(Table(f"{cfg.model} @ {cfg.site}: TopK SAE", ["metric", "value"],
                            [[k, float(lm[k])] for k in ("lm_l0", "lm_fvu", "lm_dead", "ce_clean", "ce_sae",
                                                         "ce_zero", "ce_recovered", "kl_score")]))
    notes = [f"assay quickstart: {cfg.world!r} world (ground truth: per-token grammar labels) and {cfg.model} on "
             "the bundled corpus.", *bench.notes]
    write_section(cfg.out_dir, Section("Quickstart: PCFG world and SmolLM2 SAE", tables, bench.plots, notes,
                                       features=lm["features"] if lm else bench.features))
    return Path(cfg.out_dir) / "report.html"


def _print_summary(console: Any, suite: Any, lm: dict[str, Any] | None, path: Path, seconds: float) -> None:
    from rich.table import Table

    idx = {(r["method"], r["level"], r["metric"]): r["mean"] for r in suite.summary}
    t = Table(title="assay quickstart: ground-truth scores (PCFG world) and SmolLM2 SAE")
    for c in ("method", "L0", "FVU", "best-latent AUROC", "probe AUROC k=1", "CE recovered"):
        t.add_column(c)
    f = lambda v: "–" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    for meth, lev in dict.fromkeys((a, b) for a, b, _ in idx):
        t.add_row(f"{meth} ({lev})", *(f(idx.get((meth, lev, m))) for m in ("l0", "fvu", "detect_auroc",
                                                                            "probe_auroc_k1", "ce_recovered")))
    if lm is not None:
        t.add_row(f"SmolLM2 topk (k={lm.get('lm_l0', 0):.0f})", f(lm["lm_l0"]), f(lm["lm_fvu"]), "–", "–",
                  f(lm["ce_recovered"]))
    console.print(t)
    console.print(f"report: {path.resolve()}  ({seconds:.0f} s)")


def _tokenizer(name: str) -> Any:
    try:
        from assay import models

        return models.load(name).tokenizer
    except Exception:  # the summary still prints token ids
        return None


def register(app: typer.Typer) -> None:
    command(app, "quickstart", QuickstartConfig, run_quickstart)
