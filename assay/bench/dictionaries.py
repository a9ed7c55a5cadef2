"""The dictionaries family: SAEs and their baselines scored on worlds whose features are known.

Every method (an SAE architecture of :mod:`assay.dictionaries.registry`, or PCA/ICA/NMF/a random
dictionary, :mod:`assay.bench.baselines`) is fitted on a world's activations and scored by every
ground-truth metric the world supports (:mod:`assay.bench.score`): reconstruction and sparsity always;
latent detection, k-sparse probes, entanglement and splitting against the world's concepts; planted
direction recovery (MCC), activation MCC and intervention selectivity on planted worlds; absorption on
the hierarchy world (the MP-SAE / Matryoshka toy, Costa et al. 2025, Bussmann et al. 2025); CE loss
recovered on sequence worlds (the SAE spliced into the tiny transformer). SAEBench (Karvonen et al.
2025) scores the same kinds of quantities on real models without ground truth.

Outputs beside the runner's tables: ``plots/`` (sparsity–fidelity Pareto fronts, recovery, a per-concept
detection heatmap) and, for the first run of the first seed, the latents of a feature browser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.bench.methods import METHOD_NAMES, expand_method
from assay.bench.runner import BenchResult, RunContext, summary_rows
from assay.bench.spec import SpecRun
from assay.config import ConfigError
from assay.report.html import json_safe

__all__ = ["DictionarySettings", "DictionaryFamily", "FAMILY", "SUMMARY_METRICS"]

SUMMARY_METRICS = ("l0", "fvu", "recovery_mcc", "activation_mcc", "detect_auroc", "detect_f1", "f1_best5",
                   "probe_auroc_k1", "probe_auroc_k5", "absorption", "concepts_per_latent", "selectivity_relative", "ce_recovered")
"""Columns of the summary table."""

FEATURES_FILE = "features.json"
PER_CONCEPT_FILE = "per_concept.json"


@dataclass(frozen=True, kw_only=True)
class DictionarySettings:
    """The run budget of a dictionary bench."""

    steps: int = 600
    """SAE training steps per run."""
    batch_size: int = 512
    """Rows per SAE training step."""
    lr: float | None = 3e-3
    """SAE learning rate (None: each architecture's default, tuned for long runs on real models)."""
    n_eval: int = 4096
    """Evaluation rows per world."""
    plots: bool = True
    """Draw the plots (matplotlib; PNG + SVG)."""

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0 or self.n_eval < 16:
            raise ConfigError("steps and batch_size must be positive and n_eval at least 16")


class DictionaryFamily:
    """SAEs and baselines × planted and sequence worlds (module docstring)."""

    name = "dictionaries"
    title = "Dictionary bench: ground-truth recovery on worlds"
    worlds = ("superposition", "hierarchy", "dyck")
    methods = ("topk:k=2|4|8", "batchtopk:k=2|4|8", "relu:l1_coef=1|3|10", "matryoshka:k=2|4|8", "pca:n=4|8|16",
               "ica:n=16", "nmf:n=16|64", "random:k=4")
    metrics = SUMMARY_METRICS
    settings_type = DictionarySettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        from assay.bench.worlds import world_parameters

        return world_parameters()

    def method_names(self) -> tuple[str, ...]:
        return METHOD_NAMES

    def expand(self, spec: str) -> list[SpecRun]:
        return expand_method(spec)

    def prepare(self, world: str, seed: int, settings: DictionarySettings) -> Any:
        from assay.bench.worlds import load_world

        return load_world(world, seed=seed, n_eval=settings.n_eval)

    def score(self, prepared: Any, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        import time

        import torch

        from assay.artifact import atomic_write_text
        from assay.bench.methods import fit_method
        from assay.bench.score import score_method

        s: DictionarySettings = ctx.settings
        t0 = time.perf_counter()
        lens = fit_method(run, prepared.train, prepared.d, seed=ctx.seed, steps=s.steps, batch_size=s.batch_size,
                          lr=s.lr, planted_l0=prepared.planted_l0, defaults=prepared.method_defaults)
        fit_s = time.perf_counter() - t0
        with torch.no_grad():
            sc = score_method(lens, prepared)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ctx.run_dir / PER_CONCEPT_FILE, json.dumps(json_safe(sc.per_concept)))
        if ctx.seed == 0 or not (ctx.run_dir / FEATURES_FILE).exists():
            from assay.bench.features import feature_browser_data

            unembed = prepared.model.unembed.weight if prepared.model is not None else None
            fd = feature_browser_data(lens, prepared, concept_best=sc.best_latent, unembed=unembed,
                                      title=f"{run.label} {run.level} on {prepared.name}, seed {ctx.seed}")
            atomic_write_text(ctx.run_dir / FEATURES_FILE, json.dumps(json_safe(fd)))
        return {**sc.metrics, "fit_seconds": fit_s}

    def section(self, result: BenchResult) -> Any:
        from assay.bench.plots import draw_all
        from assay.report import Plot, Section, Table

        runs = [{**r, "per_concept": _read(result.out_dir / "cache" / r["key"] / PER_CONCEPT_FILE)}
                for r in result.runs]
        plots = []
        if result.settings.plots:
            draw_all(result.out_dir, runs, result.summary)
            plots = [Plot(p.stem.replace("_", " "), p) for p in sorted((result.out_dir / "plots").glob("*.svg"))]
        tables = []
        for world in dict.fromkeys(r["world"] for r in result.runs):
            mine = result._replace(summary=[s for s in result.summary if s["world"] == world])
            cols, rows = summary_rows(mine, [m for m in SUMMARY_METRICS
                                             if any(s["metric"] == m and s["n"] for s in mine.summary)])
            n = max((s["n"] for s in mine.summary), default=0)
            tables.append(Table(f"{world} (mean [95% interval] over {n} seed(s))", cols[1:], [r[1:] for r in rows]))
        s = result.settings
        worlds = {r["world"] for r in result.runs}
        notes = [f"{len(result.runs)} runs on {len(worlds)} world(s); SAE steps {s.steps}, batch {s.batch_size}, "
                 f"lr {s.lr}, {s.n_eval} evaluation rows.",
                 "recovery_mcc: mean |cos| of Hungarian-matched atoms and planted directions; detect_auroc: best "
                 "single-latent AUROC per concept, averaged; detect_f1 / f1_best5: F1 of \"latent fires\" (> 1e-6) "
                 "as a detector of the concept for its best latent / the mean of its best 5 (Hindupur et al. 2025), "
                 "averaged over concepts; absorption: share of a parent's firings its latent "
                 "misses when a child fires (hierarchy world); ce_recovered: share of the CE loss gap between "
                 "zero-ablation and the clean model closed by splicing the reconstruction in."]
        if any(r["world"].startswith("concept_clusters") for r in result.runs):
            notes.append("concept_clusters (separability): unless a spec says otherwise, methods use expansion 25 "
                         "(50 latents, the paper's width), relu l1_coef 0.6 and topk k 16 (each one's best per-latent "
                         "F1 over a sweep).")
        features = next((f for r in result.runs if (f := _read(result.out_dir / "cache" / r["key"] / FEATURES_FILE))),
                        None)
        return Section(self.title, tables, plots, notes, features=features)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


FAMILY = DictionaryFamily()
"""The dictionaries family for :func:`assay.bench.runner.run_family`."""
