"""A bench suite: methods × worlds × seeds × sparsity levels → a tidy results table with 95% intervals.

Each run (one method at one level, one world, one seed) is cached on disk as
``<out_dir>/cache/<key>.json`` with ``key = sha256(json(method, params, world spec, seed, steps,
batch size, n_eval, assay version))[:16]`` and written atomically, so re-running a suite computes only
the runs whose configuration changed and a suite killed midway resumes where it stopped.

Across seeds a metric's mean m, standard deviation s and n seeds give the 95% Student-t interval
m ± t₀.₉₇₅,ₙ₋₁ · s/√n (:func:`assay.stats.t_interval`; a single seed gives a zero-width interval,
flagged by n = 1).
Outputs: ``results.csv``/``results.json`` (long format: one row per run and metric),
``summary.csv``/``summary.json`` (mean, ci_low, ci_high, n per world × method × level × metric), and
``results.parquet`` when pyarrow imports.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from assay import __version__
from assay.config import ConfigError
from assay.stats import t_interval

__all__ = ["SuiteConfig", "SuiteResult", "run_suite", "run_key", "aggregate", "DEFAULT_METHODS",
           "DEFAULT_WORLDS"]

DEFAULT_METHODS = ("topk:k=2|4|8", "batchtopk:k=2|4|8", "relu:l1_coef=1|3|10", "matryoshka:k=2|4|8",
                   "pca:n=4|8|16", "ica:n=16", "nmf:n=16|64", "random:k=4")
DEFAULT_WORLDS = ("superposition", "hierarchy", "dyck")


@dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    """A ground-truth benchmark suite: every method at every sparsity level on every world and seed."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    """Method specs ``name[:key=v1|v2,…]`` (an SAE architecture or pca/ica/nmf/random; ``|`` = levels)."""
    worlds: tuple[str, ...] = DEFAULT_WORLDS
    """World specs ``name[:key=value,…]`` (superposition, hierarchy, dyck, expr, english)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds (each draws the data and initialises the method)."""
    steps: int = 600
    """SAE training steps per run."""
    batch_size: int = 512
    """Rows per SAE training step."""
    lr: float | None = 3e-3
    """SAE learning rate (None: each architecture's default, tuned for long runs on real models)."""
    n_eval: int = 4096
    """Evaluation rows per world."""
    out_dir: Path = Path("runs/bench")
    """Where tables, plots, the report and the run cache go."""
    plots: bool = True
    """Draw the plots (matplotlib, PNG + SVG)."""
    report: bool = True
    """Write the self-contained HTML report."""

    def __post_init__(self) -> None:
        if not self.methods or not self.worlds or not self.seeds:
            raise ConfigError("a suite needs at least one method, one world and one seed")
        if self.steps <= 0 or self.batch_size <= 0 or self.n_eval < 16:
            raise ConfigError("steps and batch_size must be positive and n_eval at least 16")
        from assay.bench.methods import parse_method
        from assay.bench.worlds import parse_world

        for m in self.methods:
            parse_method(m)
        for w in self.worlds:
            parse_world(w)


def run_key(run: Any, world: str, seed: int, cfg: SuiteConfig) -> str:
    """16 hex digits identifying one run's configuration (module docstring)."""
    doc = {"method": run.name, "params": run.params, "world": world, "seed": seed, "steps": cfg.steps,
           "batch_size": cfg.batch_size, "lr": cfg.lr, "n_eval": cfg.n_eval, "version": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SuiteResult(NamedTuple):
    """What :func:`run_suite` returns."""

    runs: list[dict[str, Any]]
    """One record per run: world, method, level, seed, key, metrics, per_concept, cached."""
    summary: list[dict[str, Any]]
    """Aggregated rows: world, method, level, metric, mean, ci_low, ci_high, n."""
    out_dir: Path
    """The output folder."""
    computed: int
    """Runs computed in this call (the others came from the cache)."""


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% interval across seeds for each world × method × level × metric."""
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for r in runs:
        for k, v in r["metrics"].items():
            groups.setdefault((r["world"], r["method"], r["level"], k), []).append(v)
    out = []
    for (w, meth, lev, k), vals in groups.items():
        m, lo, hi, n = t_interval(vals)
        out.append({"world": w, "method": meth, "level": lev, "metric": k, "mean": m, "ci_low": lo, "ci_high": hi,
                    "n": n})
    return out


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def _load_cached(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or torn (never: writes are atomic) — recompute
    rec["metrics"] = {k: (float("nan") if v is None else v) for k, v in rec["metrics"].items()}
    return rec


def run_suite(cfg: SuiteConfig, *, log: Callable[[str], None] | None = None) -> SuiteResult:
    """Run (or resume) the suite and write its tables, plots and report under ``cfg.out_dir``."""
    import torch

    from assay.artifact import atomic_write_text
    from assay.bench.methods import expand_method, fit_method
    from assay.bench.score import score_method
    from assay.bench.worlds import load_world

    out = Path(cfg.out_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    runs: list[dict[str, Any]] = []
    computed = 0
    browse = None  # (world, label, level) of the run whose latents the report browses
    for world in cfg.worlds:
        for seed in cfg.seeds:
            data = None
            for spec in cfg.methods:
                for run in expand_method(spec):
                    key = run_key(run, world, seed, cfg)
                    path = cache / f"{key}.json"
                    rec = _load_cached(path)
                    fresh = rec is None
                    if browse is None:
                        browse = (world, run.label, run.level)
                    feat_path = cache / f"{key}.features.json"
                    if rec is None:
                        if data is None:
                            data = load_world(world, seed=seed, n_eval=cfg.n_eval)
                        t0 = time.perf_counter()
                        lens = fit_method(run, data.train, data.d, seed=seed, steps=cfg.steps,
                                          batch_size=cfg.batch_size, lr=cfg.lr, planted_l0=data.planted_l0)
                        fit_s = time.perf_counter() - t0
                        with torch.no_grad():
                            sc = score_method(lens, data)
                        sc.metrics["fit_seconds"] = fit_s
                        rec = {"world": world, "method": run.label, "level": run.level, "seed": seed, "key": key,
                               "params": run.params, "metrics": sc.metrics, "per_concept": sc.per_concept}
                        atomic_write_text(path, json.dumps(_json_safe(rec), sort_keys=True))
                        if browse == (world, run.label, run.level) and seed == cfg.seeds[0]:
                            from assay.bench.features import feature_browser_data

                            unembed = data.model.unembed.weight if data.model is not None else None
                            fd = feature_browser_data(lens, data, concept_best=sc.best_latent, unembed=unembed,
                                                      title=f"{run.label} {run.level} on {world}, seed {seed}")
                            atomic_write_text(feat_path, json.dumps(_json_safe(fd)))
                        rec = _load_cached(path) or rec
                        computed += 1
                        say(f"{world} | {run.label} {run.level} | seed {seed}: L0 {sc.metrics['l0']:.2f} "
                            f"FVU {sc.metrics['fvu']:.3f} AUROC {sc.metrics['detect_auroc']:.3f} ({fit_s:.1f}s)")
                    rec["cached"] = not fresh
                    if browse == (world, run.label, run.level) and seed == cfg.seeds[0] and feat_path.exists():
                        rec["features_file"] = str(feat_path)
                    runs.append(rec)
    summary = aggregate(runs)
    write_tables(out, runs, summary)
    if cfg.plots:
        from assay.bench.plots import draw_all

        draw_all(out, runs, summary)
    if cfg.report:
        from assay.bench.suite_report import write_suite_report

        write_suite_report(out, cfg, runs, summary)
    return SuiteResult(runs, summary, out, computed)


def write_tables(out: Path, runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    """results.{csv,json[,parquet]} (long) and summary.{csv,json} under ``out`` (atomic writes)."""
    from assay.artifact import atomic_write_text

    long = [{"world": r["world"], "method": r["method"], "level": r["level"], "seed": r["seed"], "metric": k,
             "value": v} for r in runs for k, v in r["metrics"].items()]
    for name, rows in (("results", long), ("summary", summary)):
        atomic_write_text(out / f"{name}.json", json.dumps(_json_safe(rows), indent=1))
        if rows:
            import io

            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(out / f"{name}.csv", buf.getvalue())
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    pq.write_table(pa.Table.from_pylist(long), out / "results.parquet")
