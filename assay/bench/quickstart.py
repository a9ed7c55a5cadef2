"""The flagship quickstart (the work behind ``assay quickstart`` and ``make quickstart``; the command
only prints).

1. Ground truth, on two worlds through the bench runner (:func:`assay.bench.runner.run_family` with the
   dictionaries family of :mod:`assay.bench.dictionaries`, one seed; every run is cached, so a re-run
   is instant): TopK and ReLU SAEs and PCA are fitted on each world's activations and scored against
   its truth.

   - Planted features (``superposition``, the toy model of Elhage et al. 2022, "Toy Models of
     Superposition"): more feature directions than dimensions. The SAEs recover the planted directions
     (recovery MCC) and PCA cannot: its orthogonal components cannot line up with more directions than
     dimensions. This is the finding to trust first.
   - Grammar (``expr``, the PCFG world): a tiny transformer trained on arithmetic expressions (on first
     use, then cached), scored against the grammar's per-token labels. SAEs and PCA tie on detecting
     them: the labels are linearly decodable from a few dense directions. The notes say what the
     numbers of this run show.
2. A real model: SmolLM2-135M (loaded once) — its residual stream after layer 3 cached over ~20k
   tokens of the bundled corpus into ``<out_dir>/store`` (resumed if interrupted, reused if complete; a
   summary of the store with activation statistics is printed), a TopK SAE trained on it, and the CE
   loss recovered when the SAE's reconstruction is spliced in (:mod:`assay.evaluate.spliced`).
3. ``<out_dir>/report.html``: one section with the tables, plots and findings, and a feature browser
   over the SmolLM2 SAE's latents (top contexts, logit effects); a summary table is printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from assay.config import ConfigError

__all__ = ["QuickstartConfig", "run_quickstart", "store_statistics", "findings"]


@dataclass(frozen=True, kw_only=True)
class QuickstartConfig:
    """Three findings in about 1-1.5 minutes on 2 CPU cores: a TopK SAE recovers planted features that PCA
    cannot (superposition world); SAEs and PCA tie on a grammar world's per-token labels, and what that
    means; a TopK SAE spliced into SmolLM2-135M's residual stream recovers ~99% of the CE loss. Writes
    <out_dir>/report.html and prints a summary table. The first run also trains the grammar world's tiny
    transformer and converts SmolLM2 into $ASSAY_CACHE (3.5-4 minutes in all); a re-run in the same
    out_dir reuses every result (about 30 s). Timings: docs/benchmarks.md, "Quickstart"."""

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
    planted_world: str = "superposition"
    """World with planted feature directions, shown first (a bench world spec: superposition or hierarchy)."""
    world: str = "expr"
    """Sequence world shown second (a bench world spec; expr is the PCFG grammar world)."""
    world_methods: tuple[str, ...] = ("topk:k=4|8", "relu:l1_coef=1|3", "pca:n=4|16")
    """Methods scored on both worlds (bench method specs)."""
    world_sae_steps: int = 600
    """SAE training steps on each world's activations."""
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

    def __post_init__(self) -> None:
        from assay.bench.worlds import SEQUENCE_CONCEPTS, parse_world

        if parse_world(self.planted_world)[0] not in ("superposition", "hierarchy"):
            raise ConfigError(f"planted_world must be superposition or hierarchy (a world with planted "
                              f"directions), got {self.planted_world!r}")
        if parse_world(self.world)[0] not in SEQUENCE_CONCEPTS:
            raise ConfigError(f"world must be a sequence world ({', '.join(SEQUENCE_CONCEPTS)}), got {self.world!r}")


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


def run_quickstart(cfg: QuickstartConfig, *, log: Callable[[str], None] = lambda s: None,
                   cache: Callable[[Any, Any], Any] | None = None) -> dict[str, Any]:
    """Run the quickstart; returns its facts (``findings``, the bench result ``suite``, ``lm`` (the SmolLM2
    part, or None), ``store`` (the store statistics), ``report``, ``seconds``). ``log`` receives one line per
    step; ``cache(cache_config, loaded)`` caches the activations (default:
    :func:`assay.store.corpus_cache.cache_corpus`; the command passes its progress-bar version)."""
    import time

    from assay.bench.dictionaries import FAMILY, DictionarySettings
    from assay.bench.runner import run_family

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    worlds = (cfg.planted_world, cfg.world)
    steps = 3 if cfg.lm else 2
    log(f"[1/{steps}] ground truth: {', '.join(cfg.world_methods)} on the {cfg.planted_world!r} (planted features) "
        f"and {cfg.world!r} (grammar) worlds; the first run also trains the grammar world's tiny transformer, then "
        "caches it")
    suite = run_family(FAMILY, worlds=worlds, methods=cfg.world_methods, seeds=(0,),
                       settings=DictionarySettings(steps=cfg.world_sae_steps), out_dir=out / "bench", report=False,
                       log=lambda m: log("  " + m))
    facts: dict[str, Any] = {"world_runs": len(suite.runs), "findings": findings(suite, *worlds), "suite": suite,
                             "lm": None, "store": None}
    facts["seconds_worlds"] = time.perf_counter() - t0
    if cfg.lm:
        from assay import models

        t1 = time.perf_counter()
        log(f"[2/3] {cfg.model}: load (the first use converts it into $ASSAY_CACHE), cache activations, train a "
            f"TopK SAE, CE loss recovered ({t1 - t0:.0f} s so far)")
        loaded = models.load(cfg.model)
        facts["store"] = _cache_and_summarise(cfg, loaded, cache)
        facts.update({k: v for k, v in facts["store"].items() if k != "table"})
        facts["lm"] = _lm_sae(cfg, loaded, log)
        facts.update({k: v for k, v in facts["lm"].items() if k != "features"})
        facts["seconds_lm"] = time.perf_counter() - t1
    log(f"[{steps}/{steps}] report ({time.perf_counter() - t0:.0f} s so far)")
    facts["report"] = str(_report(cfg, suite, facts["lm"], facts["findings"]))
    facts["seconds"] = time.perf_counter() - t0
    return facts


def findings(suite: Any, planted_world: str, world: str) -> list[str]:
    """The quickstart's findings as sentences, from one seed's summary of ``suite`` (a
    :class:`assay.bench.runner.BenchResult`): SAEs vs PCA on planted-direction recovery on ``planted_world``,
    and on detecting the per-token labels of the sequence world ``world`` (with what a tie there means).
    A finding whose methods (an SAE and PCA) were not run is left out."""
    import math

    from assay.bench.baselines import BASELINES
    from assay.bench.worlds import SEQUENCE_CONCEPTS, parse_world

    idx = {(s["world"], s["method"], s["level"], s["metric"]): s["mean"] for s in suite.summary}
    levels = dict.fromkeys((w, m, lev) for w, m, lev, _ in idx)

    def best(w: str, metric: str, sae: bool) -> tuple[str, str, float] | None:
        """(method, level, value) of the best SAE level (sae) or the best PCA level by ``metric`` on ``w``."""
        cands = [(m, lev, v) for ww, m, lev in levels if ww == w and ((m not in BASELINES) if sae else m == "pca")
                 and (v := idx.get((w, m, lev, metric), math.nan)) == v]  # v == v: not NaN
        return max(cands, key=lambda c: c[2], default=None)

    out = []
    sae, pca = best(planted_world, "recovery_mcc", True), best(planted_world, "recovery_mcc", False)
    if sae and pca:
        gap = sae[2] - pca[2]
        verdict = ("the SAEs recover the planted feature directions and PCA does not" if gap > 0.2 else
                   "the SAEs recover the planted directions better than PCA, but narrowly" if gap > 0 else
                   "the SAEs do not beat PCA at recovering the planted directions")
        why = (" There are more planted directions than dimensions, so PCA's orthogonal components cannot line up "
               "with them; a sparse dictionary with more latents than dimensions can." if gap > 0.2 else
               " Train longer (--world-sae-steps) before reading anything into it.")
        out.append(f"Planted features ({planted_world}): {verdict} — recovery MCC {sae[0]} {sae[1]} {sae[2]:.2f} vs "
                   f"pca {pca[1]} {pca[2]:.2f} (mean |cos| between planted directions and Hungarian-matched atoms)."
                   + why)
    sae, pca = best(world, "detect_auroc", True), best(world, "detect_auroc", False)
    if sae and pca:
        labels = " and ".join(SEQUENCE_CONCEPTS.get(parse_world(world)[0], ("per-token",)))
        gap = sae[2] - pca[2]
        tie = abs(gap) <= 0.03
        verdict = (f"the SAEs and PCA tie at detecting the per-token grammar labels ({labels})" if tie
                   else f"the SAEs detect the per-token grammar labels ({labels}) better than PCA" if gap > 0
                   else f"PCA detects the per-token grammar labels ({labels}) better than the SAEs")
        sentence = (f"Grammar ({world}): {verdict} — best-latent AUROC {sae[0]} {sae[1]} {sae[2]:.2f} vs pca "
                    f"{pca[1]} {pca[2]:.2f}.")
        if gap <= 0.03:
            low = min((p for p in levels if p[0] == world and p[1] == "pca"), key=lambda p: idx.get((*p, "l0"), math.inf))
            low_fvu = idx.get((*low, "fvu"), math.nan)
            probe = best(world, "probe_auroc_k5", False)
            evidence = [f"a 5-component probe on PCA: AUROC {probe[2]:.2f}"] if probe else []
            if low_fvu <= 0.05:
                evidence.append(f"the activations are nearly low-rank: PCA with {low[2].removeprefix('n=')} "
                                f"components leaves FVU {low_fvu:.3f}")
            sentence += (f" {'A tie' if tie else 'PCA ahead'} here does not mean the SAEs failed: the labels are as "
                         "readable from a few dense directions as from sparse latents"
                         + (f" ({'; '.join(evidence)})" if evidence else "")
                         + ", so PCA finds them as well as a sparse dictionary does.")
        sae_f1, pca_f1 = best(world, "detect_f1", True), best(world, "detect_f1", False)
        if sae_f1 and pca_f1:
            sentence += (f" What the SAE adds is latents that work as on/off detectors (zero off their label): "
                         f"best-latent F1 {sae_f1[0]} {sae_f1[1]} {sae_f1[2]:.2f} vs pca {pca_f1[2]:.2f}."
                         if sae_f1[2] > pca_f1[2] else
                         f" The SAE's latents are not better on/off detectors either: best-latent F1 {sae_f1[0]} "
                         f"{sae_f1[1]} {sae_f1[2]:.2f} vs pca {pca_f1[2]:.2f}.")
        out.append(sentence)
    return out


def _cache_and_summarise(cfg: QuickstartConfig, loaded: Any, cache: Callable[[Any, Any], Any] | None
                         ) -> dict[str, Any]:
    """The caching step: cache the activations of ``loaded`` (the model of ``cfg.model``); the store's
    statistics and a ``table`` of ``(label, value)`` rows that describe it."""
    from assay.store import ActivationStore
    from assay.store.corpus_cache import CacheConfig, cache_corpus

    cache_cfg = CacheConfig(model=cfg.model, sites=(cfg.site,), corpus="bundled", n_tokens=cfg.n_tokens,
                            context_length=cfg.context_length, batch_size=cfg.batch_size, shard_rows=8192,
                            dtype=cfg.dtype, out_dir=Path(cfg.out_dir) / "store")  # type: ignore[arg-type]
    summary = (cache or (lambda c, m: cache_corpus(c, loaded=m)))(cache_cfg, loaded)
    tokenizer = loaded.tokenizer
    with ActivationStore.open(cache_cfg.store_dir, verify="open") as store:
        stats = store_statistics(store, cfg.site)
        seconds = float(store.manifest.meta.get("seconds", summary.seconds))
    rate = store.n_rows / seconds if seconds > 0 else float("nan")
    table = [("store", str(cache_cfg.store_dir)),
             ("rows (tokens) x d", f"{stats['rows']:,} x {stats['d']}"),
             ("shards / bytes", f"{summary.n_shards} / {summary.bytes / 2**20:,.1f} MiB ({cfg.dtype})"),
             ("caching speed", f"{rate:,.0f} tokens/s over {seconds:.1f} s (checksums verified)"),
             ("entry mean / std", f"{stats['entry_mean']:+.4f} / {stats['entry_std']:.4f}"),
             ("row L2 norm, text tokens", f"median {stats['norm_median_text']:.2f}, max {stats['norm_max_text']:.2f}"),
             ("row L2 norm, BOS rows", f"median {stats['norm_median_bos']:.2f}")]
    table += [(f"large norm: row {r}", f"{tokenizer.decode([tok])!r} (norm {v:.2f})") for r, tok, v in stats["top_text_rows"]]
    return {**stats, "tokens_per_s": rate, "shards": summary.n_shards, "bytes": summary.bytes, "table": table}


def _lm_sae(cfg: QuickstartConfig, loaded: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Train a TopK SAE on the cached activations of ``loaded``; CE loss recovered; feature-browser data.

    Training and evaluation are :func:`assay.dictionaries.store_run.train_sae_on_store` (with its progress
    bar): BOS rows (norm outliers) are left out of training and never spliced, and the last ``ce_windows``
    windows of the store are held out for FVU, L0 and CE/KL recovered.
    """
    import types

    import torch

    from assay.bench.features import feature_browser_data
    from assay.dictionaries.store_run import StoreSAEConfig, train_sae_on_store
    from assay.store import ActivationStore
    from assay.store.corpus_cache import CacheConfig

    store_dir = CacheConfig(model=cfg.model, sites=(cfg.site,), out_dir=Path(cfg.out_dir) / "store").store_dir
    run_cfg = StoreSAEConfig(architecture="topk", expansion=cfg.lm_sae_expansion, k=cfg.lm_sae_k,
                             steps=cfg.lm_sae_steps, batch_size=cfg.lm_sae_batch, lr=1e-3,
                             warmup_steps=max(1, cfg.lm_sae_steps // 20), decay_fraction=0.2,  # as its documented figures
                             holdout_windows=cfg.ce_windows,
                             progress=True)
    log(f"  training a TopK SAE ({cfg.lm_sae_expansion}x, k={cfg.lm_sae_k}, {cfg.lm_sae_steps} steps of "
                  f"{cfg.lm_sae_batch} tokens; resumed from {Path(cfg.out_dir) / 'lm_sae.ckpt'} if there), then "
                  f"CE loss recovered on {cfg.ce_windows} held-out windows")
    with ActivationStore.open(store_dir, verify="open") as store:
        res = train_sae_on_store(store, cfg.site, run_cfg, model=loaded.model, out=Path(cfg.out_dir) / "lm_sae",
                                 checkpoint=Path(cfg.out_dir) / "lm_sae.ckpt")
        T = cfg.context_length
        m = min(store.n_rows, 4096) // T * T
        h = store.read(cfg.site, 0, m)
        tokens = torch.as_tensor(store.tokens[:m]).long().reshape(-1, T)
    sae, rec, sp, sm = res.sae, res.reconstruction, res.sparsity, res.spliced
    log(f"  SAE: L0 {sp.l0:.1f}, FVU {rec.fvu:.3f}, dead {sp.dead_fraction:.1%}; CE clean {sm.ce_clean:.3f}, "
                  f"with SAE {sm.ce_sae:.3f}, zero-ablated {sm.ce_zero:.3f} -> recovered {sm.ce_recovered:.3f} "
                  f"(on {cfg.ce_windows} held-out windows; train {res.train_seconds:.0f} s, eval "
                  f"{res.eval_seconds:.0f} s)")
    log("  feature browser: top contexts and logit effects of the SAE's latents")
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


def _report(cfg: QuickstartConfig, suite: Any, lm: dict[str, Any] | None, found: list[str]) -> Path:
    from assay.bench.dictionaries import FAMILY
    from assay.report import Section, Table, write_section

    bench = FAMILY.section(suite)  # one table per world (planted first) and the plots (under <out_dir>/bench/plots)
    tables = list(bench.tables)
    if lm is not None:
        tables.append(Table(f"{cfg.model} @ {cfg.site}: TopK SAE", ["metric", "value"],
                            [[k, float(lm[k])] for k in ("lm_l0", "lm_fvu", "lm_dead", "ce_clean", "ce_sae",
                                                         "ce_zero", "ce_recovered", "kl_score")]))
    lm_note = [f"{cfg.model} on the bundled corpus: a TopK SAE on {cfg.site}; ce_recovered is the share of the CE "
               "loss gap between zero-ablating the site and the clean model that splicing the SAE in closes."] \
        if lm is not None else []
    notes = [*found, *lm_note, *bench.notes]
    title = "Quickstart: planted features, a grammar world" + (f" and a {cfg.model} SAE" if lm is not None else "")
    write_section(cfg.out_dir, Section(title, tables, bench.plots, notes,
                                       features=lm["features"] if lm else bench.features))
    return Path(cfg.out_dir) / "report.html"
