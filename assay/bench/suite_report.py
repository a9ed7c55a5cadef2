"""The dictionary bench's report: per-world summary tables (methods × metrics as ``mean ± half-width``
of the 95% Student-t interval over seeds), the suite's plots and the browsed run's latents, written
with the report floor (:mod:`assay.report`) as ``report.html`` and as a section (``section.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assay.report import Plot, Section, Table, write_report, write_section

__all__ = ["SUMMARY_METRICS", "summary_table", "write_suite_report"]

SUMMARY_METRICS = ("l0", "fvu", "recovery_mcc", "activation_mcc", "detect_auroc", "detect_f1", "probe_auroc_k1",
                   "probe_auroc_k5", "absorption", "concepts_per_latent", "selectivity_relative", "ce_recovered")
"""Columns of the report's summary tables."""


def summary_table(summary: list[dict[str, Any]], world: str, metrics: Sequence[str] = SUMMARY_METRICS) -> Table:
    """One world's methods × metrics as ``mean ± half-width`` (95% interval over seeds)."""
    idx = {(r["method"], r["level"], r["metric"]): r for r in summary if r["world"] == world}
    keys = list(dict.fromkeys((m, lev) for m, lev, _ in idx))
    present = [m for m in metrics if any(idx.get((a, b, m), {}).get("n") for a, b in keys)]
    rows = []
    for meth, lev in keys:
        row: list[Any] = [f"{meth} ({lev})"]
        for met in present:
            r = idx.get((meth, lev, met))
            if not r or not r["n"]:
                row.append(None)
            else:
                half = (r["ci_high"] - r["ci_low"]) / 2
                row.append(f"{r['mean']:.3f} ± {half:.3f}" if r["n"] > 1 else f"{r['mean']:.3f}")
        rows.append(row)
    n = max((r["n"] for r in idx.values()), default=0)
    return Table(f"{world} (mean ± 95% interval over {n} seed(s))", ["method (level)", *present], rows)


def write_suite_report(out: Path, cfg: Any, runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> Path:
    """``out/report.html`` for a bench suite: per-world tables, the plots, and the browsed run's latents."""
    worlds = list(dict.fromkeys(r["world"] for r in runs))
    tables = [summary_table(summary, w) for w in worlds]
    plots = [Plot(p.stem.replace("_", " "), p) for p in sorted((Path(out) / "plots").glob("*.svg"))]
    features = None
    for r in runs:
        f = r.get("features_file")
        if f and Path(f).exists():
            features = json.loads(Path(f).read_text())
            break
    notes = [f"{len(runs)} runs: {len(cfg.methods)} method spec(s) x {len(worlds)} world(s) x {len(cfg.seeds)} "
             f"seed(s); SAE steps {cfg.steps}, batch {cfg.batch_size}, {cfg.n_eval} evaluation rows."]
    write_section(out, Section("Dictionary bench: ground-truth recovery on worlds", tables, plots, notes),
                  report=False)
    return write_report(Path(out) / "report.html", "assay bench report", tables=tables, plots=plots,
                        features=features, notes=notes)
