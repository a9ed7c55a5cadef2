"""``assay report``: gather the results of every command under a folder into one HTML report.

Each results-producing command writes a ``section.json`` into its output folder
(:mod:`assay.report.section`); this command finds them all under ``--runs`` and writes one
self-contained ``report.html`` (tables and plots inlined, no network).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from assay.cli import command

__all__ = ["ReportCommand", "register", "run"]


@dataclass(frozen=True, kw_only=True)
class ReportCommand:
    """Gather every command's results (``section.json`` files) under a folder into one report."""

    runs: Path = Path("runs")
    """Folder searched (recursively) for the commands' output folders."""
    out: Path = Path("runs/report.html")
    """Where the combined report is written."""
    title: str = "assay report"
    """Title of the report."""


def run(cfg: ReportCommand) -> Path:
    """Write the combined report and print its path."""
    from assay.report import SectionError, collect_sections

    try:
        path, n = collect_sections(cfg.runs, cfg.out, title=cfg.title)
    except SectionError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report with {n} section(s): {path}")
    return path


def register(app: typer.Typer) -> None:
    command(app, "report", ReportCommand, run)
