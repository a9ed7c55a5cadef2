"""``assay data-attribution``: attribute predictions to training points and score the attribution.

The data-attribution bench family (:mod:`assay.bench.data_attribution`) on chosen worlds, methods and
seeds, through the one bench runner: each model is trained with ``assay.models.train``; each method is
scored by the linear datamodeling score against retraining, by mislabel-detection AUROC with planted
label noise, and on the contamination world by how well it finds planted copies. Finished runs are
cached under ``--out-dir`` (a re-run computes only what changed); the tables (``summary.csv``,
``results.csv``) and the report section (``section.json`` + ``report.html``, with an LDS chart and a
digit's proponents/opponents) go there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from assay.cli import command
from assay.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class DataAttributionCommand:
    """Attribute predictions to training points; score against retraining (LDS), label noise and contamination."""

    methods: tuple[str, ...] = ("random", "grad_dot", "tracin", "trak", "influence")
    """Method specs name[:key=v1|v2,…]: random, grad_dot, grad_cos, tracin, trak, influence, ekfac (see
    docs/data_attribution.md), e.g. trak:proj_dim=512,ensemble=5 or influence:solver=lissa."""
    worlds: tuple[str, ...] = ("digits:label_noise=0.1",)
    """World specs: digits or tabular [:model=logreg|mlp,label_noise=F], contamination[:repetitions=0/4/64,…]."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (each draws the data, trains the models and draws the retraining subsets)."""
    options: tuple[str, ...] = ()
    """Run budget as key=value (n_train, n_test, steps, n_subsets, n_checkpoints, lm_steps, …; docs/bench.md)."""
    out_dir: Path = Path("runs/data-attribution")
    """Output folder (run cache, tables, report section)."""

    def __post_init__(self) -> None:
        if not self.methods or not self.worlds or not self.seeds:
            raise ConfigError("give at least one --methods, --worlds and --seeds")
        from assay.bench.data_attribution import FAMILY, check_world
        from assay.bench.runner import parse_options

        for spec in self.methods:  # a bad spec is a usage error, reported before any work
            FAMILY.expand(spec)
        for spec in self.worlds:
            check_world(spec)
        parse_options(FAMILY, self.options)


def run(cfg: DataAttributionCommand) -> Any:
    """Run the family on the chosen worlds × seeds × methods; print the summary table and where the outputs are."""
    from assay.cli.bench import BenchCommand, run_bench

    return run_bench(BenchCommand(family="data-attribution", methods=cfg.methods, worlds=cfg.worlds, seeds=cfg.seeds,
                                  options=cfg.options, out_dir=cfg.out_dir))


def register(app: typer.Typer) -> None:
    command(app, "data-attribution", DataAttributionCommand, run)
