"""``assay bench``: run a ground-truth benchmark suite (config: :class:`assay.bench.suite.SuiteConfig`).

Methods × worlds × seeds × sparsity levels → ``results.csv``/``summary.csv`` (mean and 95% interval
over seeds), plots and ``report.html`` under ``--out-dir``; finished runs are cached, so a re-run
computes only what changed and an interrupted suite resumes.
"""

from __future__ import annotations

from typing import Any

import typer

from assay.bench.suite import SuiteConfig
from assay.cli import command

__all__ = ["register", "run_bench"]


def run_bench(cfg: SuiteConfig) -> Any:
    """Run the suite, print a short summary table and where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    from assay.bench.suite import run_suite

    console = Console()
    res = run_suite(cfg, log=lambda s: console.print(s, markup=False, highlight=False))
    idx = {(r["world"], r["method"], r["level"], r["metric"]): r for r in res.summary}
    table = Table(title=f"assay bench: {len(res.runs)} runs ({res.computed} computed, "
                        f"{len(res.runs) - res.computed} cached)")
    cols = ("l0", "fvu", "recovery_mcc", "detect_auroc", "probe_auroc_k1", "absorption")
    for c in ("world", "method", "level", *cols):
        table.add_column(c)
    for w, m, lev in dict.fromkeys((k[0], k[1], k[2]) for k in idx):
        cells = []
        for c in cols:
            r = idx.get((w, m, lev, c))
            cells.append("–" if not r or not r["n"] else f"{r['mean']:.3f}")
        table.add_row(w, m, lev, *cells)
    console.print(table)
    console.print(f"tables: {res.out_dir / 'summary.csv'}, {res.out_dir / 'results.csv'}")
    if cfg.report:
        console.print(f"report: {res.out_dir / 'report.html'}")
    return res


def register(app: typer.Typer) -> None:
    command(app, "bench", SuiteConfig, run_bench)
