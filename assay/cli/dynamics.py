"""``assay dynamics``: train a world's tiny model with a log-spaced checkpoint series, run probes and task
metrics across it, detect transitions and write the curves to a report section.

The experiment is :func:`assay.bench.dynamics.run_dynamics` (config :class:`~assay.bench.dynamics.DynamicsConfig`);
this module only registers the command and prints its results. The series (``--out-dir``/series) is
resumable after a kill and reused by a second run with the same settings.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from assay.bench.dynamics import DynamicsConfig
from assay.cli import command

__all__ = ["register"]


def _fmt(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.0f}"


def _run(cfg: DynamicsConfig) -> None:
    from assay.bench.dynamics import run_dynamics

    r = run_dynamics(cfg)
    typer.echo(f"series: {r.series_path} ({'trained' if r.trained else 'reused'})")
    for name, curve in r.curves.items():
        tr = r.transitions.get(name)
        where = (f"t0 {_fmt(tr.t0)}  onset t10 {_fmt(tr.t10)}  width {tr.width_decades:.2f} dec  "
                 f"{'ABRUPT' if tr.abrupt else 'gradual/none'}") if tr is not None else "not normalisable"
        typer.echo(f"{name:24s} {curve[0][1]:8.4f} → {curve[-1][1]:8.4f}   {where}")
    typer.echo(f"section: {Path(r.section)}")


def register(app: typer.Typer) -> None:
    command(app, "dynamics", DynamicsConfig, _run)
