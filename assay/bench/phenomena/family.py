"""The ``dynamics`` bench family: each learning-dynamics world shows (or fails to show) its paper's phenomenon
as one bench row per metric, with Student-t intervals over seeds, and its curves as a plot.

The worlds are the phenomena of :data:`assay.bench.phenomena.registry.PHENOMENA` (each module cites its
paper); the one method, ``default``, is the world's default tiny model trained and measured by the
phenomenon's :meth:`~assay.bench.phenomena.base.Phenomenon.measure`. The settings hold one switch, ``quick``
(a seconds-long budget for tests, at which a phenomenon need not show). Each run saves its curves as
``curves.json`` in its run folder beside the cache entry, so a cached run keeps them for the plots.

    assay bench --family dynamics                               # the cheap phenomena (DEFAULT_WORLDS)
    assay bench --family dynamics --worlds random_binary --seeds 0 1 2
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.bench.phenomena.base import Curve
from assay.bench.phenomena.registry import PHENOMENA, load_phenomenon
from assay.bench.runner import BenchResult, RunContext, check_params, expand_with, summary_rows
from assay.bench.spec import SpecRun, parse_world_spec, world_params

__all__ = ["DynamicsSettings", "DynamicsFamily", "DEFAULT_WORLDS", "save_curves", "load_curves", "FAMILY"]

DEFAULT_WORLDS = ("toy_superposition", "contamination", "cyclic")
"""The phenomena ``assay bench --family dynamics`` runs by default: each well under a CPU minute per seed
(docs/dynamics.md lists the others with their run times)."""

CURVES_FILE = "curves.json"
"""Name of the curves file in each run folder."""


@dataclass(frozen=True, kw_only=True)
class DynamicsSettings:
    """The run budget of the dynamics family."""

    quick: bool = False
    """Each phenomenon's seconds-long test budget instead of its documented one (the phenomenon need not show)."""


def save_curves(curves: tuple[Curve, ...], path: Path) -> Path:
    """Write ``curves`` as JSON (a list of :class:`Curve` field dicts) to ``path``, atomically."""
    from assay.artifact import atomic_write_text
    from assay.report.html import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(json_safe([c._asdict() for c in curves])))
    return path


def load_curves(path: Path) -> tuple[Curve, ...]:
    """The curves written by :func:`save_curves` (non-finite values come back as NaN)."""
    nan = float("nan")
    return tuple(Curve(**{**c, "xs": tuple(nan if v is None else v for v in c["xs"]),
                          "ys": tuple(nan if v is None else v for v in c["ys"])})
                 for c in json.loads(path.read_text()))


class DynamicsFamily:
    """Learning-dynamics phenomena on their worlds' default tiny models (module docstring)."""

    name = "dynamics"
    title = "Learning dynamics: each world's phenomenon"
    worlds = DEFAULT_WORLDS
    methods = ("default",)
    settings_type = DynamicsSettings

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every registered phenomenon's metrics, in registry order (each world's table shows its own)."""
        return tuple(dict.fromkeys(m for name in PHENOMENA for m in load_phenomenon(name).metrics))

    def world_names(self) -> dict[str, dict[str, Any]]:
        return {name: {} for name in PHENOMENA}

    def method_names(self) -> tuple[str, ...]:
        return ("default",)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(self.method_names())(spec)
        for run in runs:
            check_params(run, {})
        return runs

    def prepare(self, world: str, seed: int, settings: DynamicsSettings) -> Any:
        return load_phenomenon(world_params(world, self.world_names())[0])

    def score(self, prepared: Any, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        m = prepared.measure(ctx.seed, quick=ctx.settings.quick, run_dir=ctx.run_dir)
        missing = [k for k in prepared.metrics if k not in m.metrics]
        if missing:
            raise ValueError(f"phenomenon {prepared.name!r} did not return its metric(s) {', '.join(missing)}")
        save_curves(tuple(m.curves), ctx.run_dir / CURVES_FILE)
        return dict(m.metrics)

    def section(self, result: BenchResult) -> Any:
        from assay.report import Plot, Section, Table

        seeds = sorted({r["seed"] for r in result.runs})
        budget = "quick (test) budget: a phenomenon need not show" if result.settings.quick else "documented budget"
        notes = [f"Each world's default tiny model trained and measured once per seed ({', '.join(map(str, seeds))}) "
                 f"at its {budget}; cells are means with a 95% Student-t interval over seeds."]
        tables, plots = [], []
        for world in dict.fromkeys(r["world"] for r in result.runs):
            ph = load_phenomenon(parse_world_spec(world, self.world_names())[0])
            mine = result._replace(summary=[s for s in result.summary if s["world"] == world])
            columns, rows = summary_rows(mine, ph.metrics)
            tables.append(Table(ph.title, columns, rows))
            notes.append(f"{world}: {ph.claim}")
            curves = {r["seed"]: result.out_dir / "cache" / r["key"] / CURVES_FILE
                      for r in result.runs if r["world"] == world}
            found = {seed: load_curves(p) for seed, p in curves.items() if p.is_file()}
            if any(found.values()):
                path = plot_curves(found, result.out_dir / "plots" / f"{world}.svg")
                plots.append(Plot(f"{ph.title}: thin lines are seeds, thick lines their mean", path))
        return Section(self.title, tables, plots, notes)


def plot_curves(curves_by_seed: dict[int, tuple[Curve, ...]], path: Path) -> Path:
    """One panel per y label; each curve in its colour: one thin line per seed and, where the seeds share the x
    values, a thick line of their mean (NaN where a seed has none)."""
    import warnings

    import numpy as np

    from assay.report import new_figure, save_figure

    every = [c for cs in curves_by_seed.values() for c in cs]
    panels = list(dict.fromkeys(c.y_label for c in every))
    names = list(dict.fromkeys(c.name for c in every))
    fig = new_figure((5.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, name in enumerate(names):
        mine = [c for c in every if c.name == name]
        ax, color = axes[panels.index(mine[0].y_label)], f"C{i % 10}"
        for c in mine:
            ax.plot(c.xs, c.ys, color=color, alpha=0.35, linewidth=0.8)
        if all(c.xs == mine[0].xs for c in mine):
            with warnings.catch_warnings():  # an x where every seed is NaN stays NaN (not drawn)
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.array([c.ys for c in mine], dtype=float), axis=0)
            ax.plot(mine[0].xs, mean, color=color, linewidth=2, label=f"{name} (mean of {len(mine)})" if len(mine) > 1 else name)
        ax.set_xlabel(mine[0].x_label)
        ax.set_ylabel(mine[0].y_label)
        if mine[0].log_x:
            ax.set_xscale("log")
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path, tight=True)


FAMILY = DynamicsFamily()
"""The dynamics family for :func:`assay.bench.runner.run_family`."""
