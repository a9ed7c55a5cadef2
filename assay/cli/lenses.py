"""``assay probe``, ``assay steer``, ``assay lens``: probes, steering and the logit lens on a real LM.

The experiments live in the lenses family of the experiment layer (configs and runs):

- ``probe``: :mod:`assay.bench.lenses.probe_sweep` — cross-validated probe AUROC per layer on the bundled
  Pang & Lee sentences; saves the best layer's probe as an artifact (``out_dir/probe``);
- ``steer``: :mod:`assay.bench.lenses.sentiment_steering` — CAA / PCA / probe directions, effect and coherence
  cost per strength; saves the vectors and the read-out probe (``out_dir/vectors``, ``out_dir/readout_probe``);
- ``lens``: :mod:`assay.bench.lenses.logit_lens` — the logit lens over layers at the prompt's positions.

Each command writes ``results.json``, its plot under ``out_dir/plots/`` and a report section into
``--out-dir``. This module only registers them and prints their results.
"""

from __future__ import annotations

from pathlib import Path

import typer

from assay.bench.lenses.logit_lens import LensConfig
from assay.bench.lenses.probe_sweep import ProbeConfig
from assay.bench.lenses.sentiment_steering import SteerConfig
from assay.cli import command

__all__ = ["register"]


def _probe(cfg: ProbeConfig) -> None:
    from assay.bench.lenses.probe_sweep import run_probe

    r = run_probe(cfg)
    for row in r["layers"]:
        typer.echo(f"{row['site']:20s} AUROC {row['auroc']:.3f} [{row['auroc_low']:.3f}, {row['auroc_high']:.3f}]"
                   f"  acc {row['accuracy']:.3f}")
    if "cascade" in r:
        c = r["cascade"]
        typer.echo(f"cascade: {c['calls']} judge calls (share {cfg.cascade_fraction:g}) -> AUROC {c['auroc']:.3f} "
                   f"(probe alone {c['probe_auroc']:.3f}, judge alone {c['judge_auroc']:.3f})")
    typer.echo(f"best: {r['best']}   probe: {r['probe']}   plot: {r['plot']}   "
               f"section: {Path(cfg.out_dir) / 'section.json'}")


def _steer(cfg: SteerConfig) -> None:
    from assay.bench.lenses.sentiment_steering import run_steer

    r = run_steer(cfg)
    for row in r["rows"]:
        typer.echo(f"{row['direction']:5s} α={row['strength']:<5g} effect {row['effect']:+.3f} [{row['effect_low']:+.3f}, "
                   f"{row['effect_high']:+.3f}]  Pres pos/neg@50% {row['pres_pos'][1]:+.3f}/{row['pres_neg'][1]:+.3f}"
                   f"  probe shift {row['probe_shift']:+.3f}  KL {row['heldout_kl']:.4f}  ppl "
                   f"{row['heldout_ppl']:.2f}  | {row['sample']!r}")
    typer.echo(f"vectors: {r['vectors']}   read-out probe: {r['readout_probe']}   plot: {r['plot']}   "
               f"section: {Path(cfg.out_dir) / 'section.json'}")


def _lens(cfg: LensConfig) -> None:
    from assay.bench.lenses.logit_lens import run_lens

    r = run_lens(cfg)
    typer.echo(f"positions {r['positions']}: {r['tokens']}")
    for row in r["layers"]:
        typer.echo(f"{row['site']:20s} KL@last {row['kl_to_final']:7.3f}  top@last {row['top']}  "
                   f"top per position {row['top_at']}")
    typer.echo(f"final: {r['final_top']!r}   plot: {r['plot']}")


def register(app: typer.Typer) -> None:
    command(app, "probe", ProbeConfig, _probe)
    command(app, "steer", SteerConfig, _steer)
    command(app, "lens", LensConfig, _lens)
