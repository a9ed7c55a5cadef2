"""The bench runner: one loop for every family — worlds × seeds × methods → cached runs → intervals →
tables, a report section.

A family (:class:`Family`, one module per family in this package) says which worlds apply, how to build
and score a method from a spec string, and how to present the result. The runner does the rest, the
same way for all of them:

- **Resumable cache.** Each run (one method level on one world and seed) is saved as
  ``<out_dir>/cache/<key>.json``, written atomically, with
  ``key = sha256(json(family, world, method, params, seed, settings, assay version))[:16]``; a re-run
  computes only runs whose configuration changed, and a run killed midway resumes at the first missing
  run with the same results. A torn or hand-edited cache file is recomputed.
- **Seeds and intervals.** Across seeds a metric's mean m, standard deviation s and n finite values give
  the 95% Student-t interval m ± t₀.₉₇₅,ₙ₋₁·s/√n (:func:`assay.stats.t_interval`; one seed gives a
  zero-width interval, flagged by n = 1).
- **Outputs.** ``results.{csv,json}`` (long: one row per run and metric), ``summary.{csv,json}`` (mean,
  ci_low, ci_high, n per world × method × level × metric) and the family's report section
  (``section.json`` + ``report.html``), which ``assay report`` joins with the others.

The world is prepared once per (world, seed) and only when a run of it is missing from the cache.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from assay import __version__
from assay.bench.spec import SpecRun, expand_spec, parse_world_spec, spec_value, world_params
from assay.config import ConfigError, from_dict
from assay.report.html import json_safe

__all__ = ["Family", "RunContext", "BenchResult", "run_family", "run_key", "aggregate", "parse_options",
           "write_tables"]


class RunContext(NamedTuple):
    """What a family's ``score`` gets besides the prepared world and the method."""

    seed: int
    """The bench seed (draws the data and initialises the method)."""
    settings: Any
    """The family's settings dataclass (its run budget: steps, sizes, …)."""
    run_dir: Path
    """A folder for this run's extra files (kept beside the cache entry, reused on resume)."""


class Family(Protocol):
    """One method family on the bench (see ``bench/<family>.py``)."""

    name: str
    """Family name for ``assay bench --family``."""
    title: str
    """Title of the family's report section."""
    worlds: tuple[str, ...]
    """Default world specs."""
    methods: tuple[str, ...]
    """Default method specs."""
    metrics: tuple[str, ...]
    """The metrics shown in the summary table, in order (``score`` may return more)."""
    settings_type: type
    """The frozen settings dataclass (run budget); ``--options key=value`` sets its fields."""

    def world_names(self) -> Collection[str]:
        """Names a world spec may use; a mapping name → the world's parameters and their defaults (every
        family in assay gives one) also has :func:`run_family` refuse a parameter the world does not take before
        any work starts."""
        ...

    def method_names(self) -> Collection[str]:
        """Names a method spec may use."""
        ...

    def expand(self, spec: str) -> list[SpecRun]:
        """The runs of one method spec (``expand_spec`` with the family's names and hidden keys)."""
        ...

    def prepare(self, world: str, seed: int, settings: Any) -> Any:
        """Build a world for one seed (data, truth, trained model): called once per (world, seed)."""
        ...

    def score(self, prepared: Any, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        """Build the method ``run`` and score it on the prepared world: metric name → value."""
        ...

    def section(self, result: BenchResult) -> Any:
        """The report section (an :class:`assay.report.Section`); may draw plots into ``result.out_dir``."""
        ...


class BenchResult(NamedTuple):
    """What :func:`run_family` returns."""

    family: str
    """The family name."""
    runs: list[dict[str, Any]]
    """One record per run: world, method, level, seed, key, params, metrics, seconds, cached."""
    summary: list[dict[str, Any]]
    """world, method, level, metric, mean, ci_low, ci_high, n."""
    out_dir: Path
    """The output folder."""
    computed: int
    """Runs computed in this call (the rest came from the cache)."""
    settings: Any
    """The settings the runs used."""


def parse_options(family: Family, options: Collection[str]) -> Any:
    """``("steps=5", "sigmas=0.1|0.2")`` → the family's settings dataclass (``|`` separates the items of a
    list-valued setting; unknown keys and ill-typed values are refused with the valid keys)."""
    hints = typing.get_type_hints(family.settings_type)
    given: dict[str, Any] = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--options takes key=value, got {opt!r}")
        parts = [spec_value(v.strip()) for v in value.split("|")]
        listed = typing.get_origin(hints.get(key.strip())) in (tuple, list)
        given[key.strip()] = parts if "|" in value or listed else parts[0]
    return from_dict(family.settings_type, given)


def run_key(family: str, world: str, run: SpecRun, seed: int, settings: Any) -> str:
    """16 hex digits identifying one run's configuration (module docstring)."""
    doc = {"family": family, "world": world, "method": run.name, "params": run.params, "seed": seed,
           "settings": dataclasses.asdict(settings), "version": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% Student-t interval across seeds for each world × method × level × metric."""
    from assay.stats import t_interval

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


def _load_cached(path: Path, key: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
        if rec.get("key") != key or not isinstance(rec.get("metrics"), dict):
            return None
        rec["metrics"] = {k: (float("nan") if v is None else float(v)) for k, v in rec["metrics"].items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # missing, torn or hand-edited: recompute
    return rec


def run_family(family: Family, *, worlds: Collection[str] = (), methods: Collection[str] = (),
               seeds: Collection[int] = (0, 1, 2), settings: Any = None, out_dir: str | Path,
               report: bool = True, log: Callable[[str], None] | None = None) -> BenchResult:
    """Run (or resume) ``family`` over worlds × seeds × methods and write its tables and report section.

    Empty ``worlds`` / ``methods`` mean the family's defaults; ``settings`` None means the family's
    default settings. Every spec is checked before any work starts.
    """
    from assay.artifact import atomic_write_text

    worlds = tuple(worlds) or family.worlds
    methods = tuple(methods) or family.methods
    seeds = tuple(seeds)
    if not seeds:
        raise ConfigError("give at least one seed")
    settings = family.settings_type() if settings is None else settings
    known = family.world_names()
    for w in worlds:
        world_params(w, known) if isinstance(known, Mapping) else parse_world_spec(w, known)
    plan = [(spec, family.expand(spec)) for spec in methods]
    out = Path(out_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    total = len(worlds) * len(seeds) * sum(len(runs) for _, runs in plan)
    runs: list[dict[str, Any]] = []
    computed = 0
    for world in worlds:
        for seed in seeds:
            prepared = None
            for _, expanded in plan:
                for run in expanded:
                    key = run_key(family.name, world, run, seed, settings)
                    path = cache / f"{key}.json"
                    rec = _load_cached(path, key)
                    cached = rec is not None
                    if rec is None:
                        if prepared is None:
                            say(f"preparing {world} (seed {seed})")
                            prepared = family.prepare(world, seed, settings)
                        t0 = time.perf_counter()
                        metrics = family.score(prepared, run, RunContext(seed, settings, cache / key))
                        seconds = time.perf_counter() - t0
                        rec = {"family": family.name, "world": world, "method": run.label, "level": run.level,
                               "seed": seed, "key": key, "params": run.params, "seconds": seconds,
                               "metrics": {k: float(v) for k, v in metrics.items()}}
                        atomic_write_text(path, json.dumps(json_safe(rec), sort_keys=True, default=str))
                        rec = _load_cached(path, key) or rec
                        computed += 1
                        shown = ", ".join(f"{m} {rec['metrics'][m]:.3g}" for m in family.metrics
                                          if m in rec["metrics"])
                        say(f"[{len(runs) + 1}/{total}] {world} | {run.label} {run.level} | seed {seed}: {shown} "
                            f"({seconds:.1f}s)")
                    rec["cached"] = cached
                    runs.append(rec)
    summary = aggregate(runs)
    write_tables(out, runs, summary)
    result = BenchResult(family.name, runs, summary, out, computed, settings)
    if report:
        from assay.report import write_section

        write_section(out, family.section(result))
    return result


def write_tables(out: Path, runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    """results.{csv,json[,parquet]} (long) and summary.{csv,json} under ``out`` (atomic writes)."""
    from assay.artifact import atomic_write_text

    long = [{"world": r["world"], "method": r["method"], "level": r["level"], "seed": r["seed"], "metric": k,
             "value": v} for r in runs for k, v in r["metrics"].items()]
    for name, rows in (("results", long), ("summary", summary)):
        atomic_write_text(out / f"{name}.json", json.dumps(json_safe(rows), indent=1))
        if rows:
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


def summary_rows(result: BenchResult, metrics: Collection[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the standard summary table: one row per world × method × level, each metric as
    ``mean [ci_low, ci_high]`` (just the mean for one seed)."""
    metrics = list(metrics) if metrics is not None else None
    idx: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for s in result.summary:
        idx.setdefault((s["world"], s["method"], s["level"]), {})[s["metric"]] = s
    if metrics is None:
        metrics = list(dict.fromkeys(s["metric"] for s in result.summary))
    rows = []
    for (w, m, lev), by in idx.items():
        cells: list[Any] = [w, m, lev]
        for k in metrics:
            s = by.get(k)
            if s is None or not s["n"]:
                cells.append("–")
            elif s["n"] == 1 or s["ci_low"] == s["ci_high"]:
                cells.append(f"{s['mean']:.4g}")
            else:
                cells.append(f"{s['mean']:.4g} [{s['ci_low']:.3g}, {s['ci_high']:.3g}]")
        rows.append(cells)
    return ["world", "method", "level", *metrics], rows


def expand_with(known: Collection[str], hidden: Collection[str] = ()) -> Callable[[str], list[SpecRun]]:
    """A family's ``expand``: :func:`expand_spec` over ``known`` names with ``hidden`` budget keys."""
    return lambda spec: list(expand_spec(spec, known, hidden=hidden))


def check_params(run: SpecRun, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """``run.params`` over the defaults in ``allowed``; an unknown key raises :class:`ConfigError`."""
    unknown = sorted(set(run.params) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for method {run.name!r}; "
                          f"valid: {', '.join(sorted(allowed)) or 'none'}")
    return {**allowed, **run.params}
