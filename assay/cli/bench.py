"""``assay bench``: run one family's ground-truth benchmark (config: :class:`BenchCommand`).

``assay bench --family F`` runs worlds × seeds × methods of family F (:mod:`assay.bench.families`)
through the one runner (:mod:`assay.bench.runner`): finished runs are cached, so a re-run computes only
what changed and an interrupted bench resumes; the results (``results.csv``, ``summary.csv`` with mean
and 95% interval over seeds) and the report section go to ``--out-dir`` (default ``runs/bench/F``).

``assay attribute-rank`` is ``assay bench --family attribution`` with one seed and ``--out-dir``
``runs/attribute-rank`` by default (:class:`RankCommand`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from assay.bench.families import FamilyName
from assay.cli import command
from assay.config import ConfigError

__all__ = ["BenchCommand", "RankCommand", "register", "run_bench", "run_rank"]


@dataclass(frozen=True, kw_only=True)
class BenchCommand:
    """Score a method family on worlds whose truth is known: worlds × seeds × methods, cached and resumable."""

    family: FamilyName = "dictionaries"
    """Which family to bench."""
    methods: tuple[str, ...] = ()
    """Method specs name[:key=v1|v2,…] ('|' sweeps a value); none given: the family's defaults."""
    worlds: tuple[str, ...] = ()
    """World specs name[:key=value,…]; none given: the family's defaults."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds (each draws the data and initialises the methods)."""
    options: tuple[str, ...] = ()
    """The family's run settings as key=value (e.g. steps=200 for dictionaries); see docs/bench.md."""
    out_dir: Path | None = None
    """Output folder; default runs/bench/<family>."""
    report: bool = True
    """Write the report section (section.json + report.html)."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("give at least one --seeds")


def run_bench(cfg: BenchCommand) -> Any:
    """Run the family, print its summary table and where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    from assay.bench.families import load_family
    from assay.bench.runner import parse_options, run_family, summary_rows

    family = load_family(cfg.family)
    settings = parse_options(family, cfg.options)
    out = cfg.out_dir or Path("runs/bench") / cfg.family
    console = Console()
    res = run_family(family, worlds=cfg.worlds, methods=cfg.methods, seeds=cfg.seeds, settings=settings,
                     out_dir=out, report=cfg.report,
                     log=lambda s: console.print(s, markup=False, highlight=False))
    shown = {s["metric"] for s in res.summary}
    columns, rows = summary_rows(res, [m for m in family.metrics if m in shown])  # a family's worlds may differ
    table = Table(title=f"assay bench --family {cfg.family}: {len(res.runs)} runs ({res.computed} computed, "
                        f"{len(res.runs) - res.computed} cached)")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*map(str, r))
    console.print(table)
    console.print(f"tables: {out / 'summary.csv'}, {out / 'results.csv'}")
    if cfg.report:
        console.print(f"report: {out / 'report.html'}")
    return res


def run_family_command(family: str, *, worlds: tuple[str, ...], methods: tuple[str, ...], seeds: tuple[int, ...],
                       options: tuple[str, ...], out_dir: Path) -> Any:
    """For a command that is one family's bench under its own name: print the equivalent
    ``assay bench --family …`` line, then run it."""
    import shlex

    flags = [("--worlds", w) for w in worlds] + [("--methods", m) for m in methods]
    flags += [("--seeds", str(s)) for s in seeds] + [("--options", o) for o in options] + [("--out-dir", str(out_dir))]
    args = [a for pair in flags for a in pair]
    typer.echo(f"assay bench --family {family} " + " ".join(map(shlex.quote, args)))
    return run_bench(BenchCommand(family=family, worlds=worlds, methods=methods, seeds=seeds, options=options,
                                  out_dir=out_dir))


@dataclass(frozen=True, kw_only=True)
class RankCommand:
    """Rank attribution methods against true attribution masks (assay bench --family attribution, one seed)."""

    methods: tuple[str, ...] = ()
    """Method specs name[:key=v1|v2,…] (e.g. integrated_gradients:steps=16|64, occlusion:patch=4); none
    given: every registered method, DiET and the random control."""
    worlds: tuple[str, ...] = ()
    """World specs (digits, tabular; e.g. digits:top_k=32); none given: both."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (each draws the explained examples and seeds the stochastic methods)."""
    options: tuple[str, ...] = ()
    """Run settings as key=value (n_examples, output, deletion_steps, randomise, …); see docs/bench.md."""
    out_dir: Path = Path("runs/attribute-rank")
    """Output folder (tables, cache, report section)."""
    report: bool = True
    """Write the report section (section.json + report.html)."""


def run_rank(cfg: RankCommand) -> Any:
    """Run the attribution family through :func:`run_bench`."""
    return run_bench(BenchCommand(family="attribution", methods=cfg.methods, worlds=cfg.worlds, seeds=cfg.seeds,
                                  options=cfg.options, out_dir=cfg.out_dir, report=cfg.report))


def register(app: typer.Typer) -> None:
    command(app, "bench", BenchCommand, run_bench)
    command(app, "attribute-rank", RankCommand, run_rank)
