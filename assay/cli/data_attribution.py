"""``assay data-attribution``: attribute predictions to training points and score the attribution.

The data-attribution bench family (:mod:`assay.bench.data_attribution`) on chosen worlds, methods and
seeds, through the one bench runner: each model is trained with ``assay.models.train``; each method is
scored by the linear datamodeling score against retraining, by mislabel-detection AUROC with planted
label noise, and on the contamination world by how well it finds planted copies. Finished runs are
cached under ``--out-dir`` (a re-run computes only what changed); the tables (``summary.csv``,
``results.csv``) and the report section (``section.json`` + ``report.html``, with an LDS chart and a
digit's proponents/opponents) go there too.

``--groups`` attributes to groups of training points (GGDA, Ley et al. 2024: group_trak and group_tracin
against the pointwise methods summed over groups, scored by group-LDS); ``--target mean`` or ``class=C``
attributes a model property, the mean loss over the targets (of class C), scored by property-LDS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from assay.cli import command
from assay.config import ConfigError

DEFAULT_METHODS = ("random", "grad_dot", "tracin", "trak", "influence")
GROUP_DEFAULT_METHODS = ("random", "tracin", "group_tracin", "trak", "group_trak")
"""The methods run with ``--groups`` when ``--methods`` is not given: each group method beside its baseline."""


@dataclass(frozen=True, kw_only=True)
class DataAttributionCommand:
    """Attribute predictions to training points; score against retraining (LDS), label noise and contamination."""

    methods: tuple[str, ...] = DEFAULT_METHODS
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
    groups: str = ""
    """Attribute to groups of training points: NAME[:size=S] with NAME class (whole classes; size=S splits each
    class into groups of ≈S), random, kmeans (k-means on inputs) or grad_kmeans (on loss gradients); size
    default 64. Metric: group-LDS; default methods then pair group_tracin, group_trak with tracin, trak."""
    target: str = "points"
    """What is attributed: points (each target), mean (the mean loss over the targets) or class=C (the mean
    loss over the targets of class C) — a model property, scored by property-LDS."""

    def __post_init__(self) -> None:
        if not self.methods or not self.worlds or not self.seeds:
            raise ConfigError("give at least one --methods, --worlds and --seeds")
        from assay.bench.data_attribution import FAMILY, check_world
        from assay.bench.runner import parse_options
        from assay.data_attribution.scorers import GROUP_METHODS

        for spec in self.methods:  # a bad spec is a usage error, reported before any work
            FAMILY.expand(spec)
        for spec in self.world_specs():
            check_world(spec)
        parse_options(FAMILY, self.options)
        if not self.groups and any(m.partition(":")[0] in GROUP_METHODS for m in self.methods) and not any(
                check_world(w)[1].get("grouping", "none") != "none" for w in self.worlds):
            raise ConfigError("group_trak and group_tracin score groups of training points: give --groups "
                              "(e.g. --groups kmeans:size=64)")

    def world_specs(self) -> tuple[str, ...]:
        """The world specs with ``--groups`` and ``--target`` added as world parameters (validated)."""
        from assay.bench.data_attribution_groups import groups_option, target_option

        extra = {**(groups_option(self.groups) if self.groups else {}),
                 **(target_option(self.target) if self.target != "points" else {})}
        if not extra:
            return self.worlds
        out = []
        for w in self.worlds:
            name, _, rest = w.partition(":")
            if name == "contamination":
                raise ConfigError("--groups and --target apply to the classifier worlds (digits, tabular), not "
                                  "contamination")
            clash = sorted(set(extra) & {p.partition("=")[0].strip() for p in rest.split(",") if p})
            if clash:
                raise ConfigError(f"world {w!r} already sets {', '.join(clash)}; drop it or --groups/--target")
            out.append(f"{w}{',' if rest else ':'}" + ",".join(f"{k}={v}" for k, v in extra.items()))
        return tuple(out)


def run(cfg: DataAttributionCommand) -> Any:
    """Run the family on the chosen worlds × seeds × methods; print the summary table and where the outputs are."""
    from assay.cli.bench import BenchCommand, run_bench

    methods = GROUP_DEFAULT_METHODS if cfg.groups and cfg.methods == DEFAULT_METHODS else cfg.methods
    return run_bench(BenchCommand(family="data-attribution", methods=methods, worlds=cfg.world_specs(),
                                  seeds=cfg.seeds, options=cfg.options, out_dir=cfg.out_dir))


def register(app: typer.Typer) -> None:
    command(app, "data-attribution", DataAttributionCommand, run)
