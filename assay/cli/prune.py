"""``assay prune``: prune a real model over sparsities and report quality, size and measured latency
(config: :class:`assay.bench.prune_real.PruneRealConfig`).

The digits MLP (trained in seconds), the classifier zoo's digits CNN, or SmolLM2-135M's MLP neurons; per
sparsity the accuracy (and after a short fine-tune) or the perplexity on the bundled corpus, parameters,
MACs and the median latency at batch 1 and 64 (:mod:`assay.bench.prune_real`). Writes ``results.json``,
``plots/prune.svg`` and the report section to ``--out-dir`` (default ``runs/prune``). The ground-truth
comparison of pruning rules is ``assay bench --family pruning``.
"""

from __future__ import annotations

from typing import Any

import typer

from assay.bench.prune_real import PruneRealConfig
from assay.cli import command

__all__ = ["register", "run"]


def run(cfg: PruneRealConfig) -> Any:
    """Run the experiment and print one line per sparsity."""
    from assay.bench.prune_real import run_prune

    res = run_prune(cfg, log=typer.echo)
    typer.echo(f"results: {cfg.out_dir / 'results.json'}; plot: {res.plot}; report: {cfg.out_dir / 'report.html'}")
    return res


def register(app: typer.Typer) -> None:
    command(app, "prune", PruneRealConfig, run)
