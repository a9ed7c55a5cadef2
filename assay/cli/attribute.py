"""``assay attribute``: feature attribution on a real model — heatmaps for photos, scores for tokens.

The work (config, loading, attributing, the report section) is :mod:`assay.bench.real_model_attribution`;
this module registers the command and prints: per photo its class, the explained output and the
completeness gap; per token its score; and the warnings (raw logits of a softmax model; an incomplete
IG/KernelSHAP, flagged UNTRUSTWORTHY).
"""

from __future__ import annotations

import typer

from assay.bench.real_model_attribution import AttributeCommand
from assay.cli import command

__all__ = ["register"]


def _attribute(cfg: AttributeCommand) -> dict:
    from assay.bench.real_model_attribution import run_attribution

    res = run_attribution(cfg)
    if res["logit_warning"]:
        typer.secho(res["logit_warning"], fg="yellow", err=True)
    kind = res["output_kind"]
    if "image" in (res["rows"][0] if res["rows"] else {}):
        for r in res["rows"]:
            typer.echo(f"{r['image']:<12} class {r['target']:>4}  {kind} f_t = {r['output']:9.4f}  "
                       f"Σφ − Δf = {r['completeness_gap']:+.3e}  → {r['png']}")
    else:
        typer.echo(f"explaining {res['target_token']!r} (id {res['target']}), {kind} f_t = {res['output']:.4f}, "
                   f"Σφ − Δf = {res['completeness_gap']:+.3e} (baseline: {res['text_baseline']})")
        if res["warning"]:
            typer.secho(res["warning"], fg="red", err=True)
        for r in res["rows"]:
            typer.echo(f"  {r['token']!r:<20} {r['score']:+.5f}")
    typer.echo(f"wrote {res['out_dir']}")
    return res


def register(app: typer.Typer) -> None:
    command(app, "attribute", AttributeCommand, _attribute)
