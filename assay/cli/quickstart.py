"""``assay quickstart``: the flagship end-to-end run (what ``make quickstart`` does).

The work is :mod:`assay.bench.quickstart`: planted-feature recovery, a grammar world, and a SmolLM2
SAE, into one report. This module registers the command and prints: a line per step, the caching
progress bar (:func:`assay.cli.cache.run_cache`), the store's statistics and the summary table with the
findings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from assay.bench.quickstart import QuickstartConfig
from assay.cli import command

__all__ = ["register"]


def _quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from assay.bench.quickstart import run_quickstart
    from assay.cli.cache import run_cache

    console = Console()
    facts = run_quickstart(cfg, log=lambda s: console.print(s, markup=False, highlight=False),
                           cache=lambda c, loaded: run_cache(c, loaded=loaded))
    if facts["store"] is not None:
        table = Table(title=f"assay quickstart: {cfg.model} @ {cfg.site}", show_header=False)
        for label, value in facts["store"]["table"]:
            table.add_row(label, value)
        console.print(table)
    _print_summary(console, facts["suite"], facts["lm"], facts["findings"], Path(facts["report"]), facts["seconds"])
    return facts


def _print_summary(console: Any, suite: Any, lm: dict[str, Any] | None, found: list[str], path: Path,
                   seconds: float) -> None:
    from rich import box
    from rich.table import Table

    from assay.bench.worlds import parse_world

    metrics = ("l0", "fvu", "recovery_mcc", "detect_auroc", "detect_f1", "probe_auroc_k1", "ce_recovered")
    idx = {(r["world"], r["method"], r["level"], r["metric"]): r["mean"] for r in suite.summary}
    t = Table(title="assay quickstart: SAEs and PCA against ground truth, and a SmolLM2 SAE", box=box.SIMPLE_HEAD,
              caption="MCC: planted-direction recovery; AUROC, F1: the best single latent as a detector of each "
                      "label; probe k=1: a 1-latent logistic probe; CE rec.: CE loss recovered with the "
                      "reconstruction spliced in")
    t.add_column("world", no_wrap=True)
    t.add_column("method", no_wrap=True)
    for c in ("L0", "FVU", "MCC", "AUROC", "F1", "probe k=1", "CE rec."):
        t.add_column(c, justify="right")
    def f(v: float | None, metric: str = "") -> str:
        return "–" if v is None or v != v else f"{v:.3f}" if metric == "fvu" else f"{v:.2f}"

    for world, meth, lev in dict.fromkeys((w, a, b) for w, a, b, _ in idx):
        t.add_row(parse_world(world)[0], f"{meth} {lev}", *(f(idx.get((world, meth, lev, m)), m) for m in metrics))
    if lm is not None:
        t.add_row("SmolLM2", f"topk k={lm['lm_l0']:.0f}", f(lm["lm_l0"]), f(lm["lm_fvu"], "fvu"), "–", "–", "–", "–",
                  f(lm["ce_recovered"]))
    console.print(t)
    for sentence in found:
        console.print("- " + sentence, highlight=False)
    console.print(f"report: {path.resolve()}  ({seconds:.0f} s)")


def register(app: typer.Typer) -> None:
    command(app, "quickstart", QuickstartConfig, _quickstart)
