"""``assay safety``: erase-and-check (Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM
Safety against Adversarial Prompting") evaluated on the bundled template prompts with a MiniLM classifier
filter — certified accuracy, false-positive rate and latency per mode and d, and detection of GCG suffixes
by the filter alone, RandEC and erase-and-check. The experiment is :mod:`assay.bench.safety`; this module
registers it and prints its tables. Writes ``results.json``, ``plots/`` and a report section into ``--out-dir``.
"""

from __future__ import annotations

import typer

from assay.bench.safety import SafetyConfig
from assay.cli import command

__all__ = ["register"]


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:5.1f}%"


def _safety(cfg: SafetyConfig) -> None:
    from assay.bench.safety import run_safety

    r = run_safety(cfg)
    for c in r["clean"]:
        typer.echo(f"{c['mode']:9s} filter: certified accuracy {_pct(c['certified_accuracy'])}  "
                   f"clean FPR {_pct(c['clean_fpr'])}")
    for s in r["sweep"]:
        typer.echo(f"{s['mode']:9s} d={s['d']:<3d} FPR {_pct(s['fpr'])}  {s['ms_per_safe_prompt']:8.1f} ms/prompt  "
                   f"{s['mean_calls']:7.1f} calls")
    for a in r["attack"]:
        typer.echo(f"GCG suffix {a['length']:2d} tokens: filter {_pct(a['filter'])}  RandEC {_pct(a['randec'])}  "
                   f"erase-and-check {_pct(a['erase_and_check'])}")
    typer.echo(f"section: {cfg.out_dir}")


def register(app: typer.Typer) -> None:
    command(app, "safety", SafetyConfig, _safety)
