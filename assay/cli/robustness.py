"""``assay robustness``: train a tiny classifier on a world and report its robustness.

Average-case robustness by each estimator (and its error against Monte Carlo), PGD robust accuracy
over ε, and the normalised loss curvature (config: :class:`assay.robustness.suite.RobustnessConfig`);
ends by writing the report section (``section.json`` + ``report.html``) to the output folder.
"""

from __future__ import annotations

from typing import Any

import typer

from assay.cli import command
from assay.robustness.suite import RobustnessConfig

__all__ = ["register", "run"]


def run(cfg: RobustnessConfig) -> Any:
    """Run the report and print one line per row."""
    from assay.robustness.suite import run_robustness, write_robustness_section

    rows = run_robustness(cfg)
    for r in rows:
        extra = "".join(f"  {k}={v:.3g}" for k, v in r.items() if k not in ("section", "name", "value"))
        typer.echo(f"{r['section']:<26} {r['name']:<12} {r['value']:.4f}{extra}")
    if cfg.out is not None:
        typer.echo(f"wrote {cfg.out}")
    out = write_robustness_section(cfg, rows)
    typer.echo(f"wrote {out / 'section.json'} and {out / 'report.html'}")
    return rows


def register(app: typer.Typer) -> None:
    command(app, "robustness", RobustnessConfig, run)
