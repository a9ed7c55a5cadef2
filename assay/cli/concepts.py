"""``assay concepts``: SpLiCE (Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024) decompositions of MiniLM
embeddings of the bundled corpus sentences onto a vocabulary from the same corpora — the L0-vs-cosine curve
as λ varies and the top concepts per sentence, in a report section. The work is
:func:`assay.bench.concepts_real.run_real_concepts` (config: :class:`RealConceptsConfig`)."""

from __future__ import annotations

import typer

from assay.bench.concepts_real import RealConceptsConfig
from assay.cli import command

__all__ = ["register"]


def _run(cfg: RealConceptsConfig) -> None:
    from assay.bench.concepts_real import run_real_concepts

    r = run_real_concepts(cfg, log=typer.echo)
    for d in r["documents"][:5]:
        top = ", ".join(f"{w} {v:.2f}" for w, v in d["top"])
        typer.echo(f"  L0 {d['l0']:>3}  cos {d['cosine']:.3f}  {d['text'][:60]!r}: {top}")
    typer.echo(f"λ = {cfg.lam}: mean L0 {r['l0']:.2f}, mean cosine {r['cosine']:.3f}   report: {cfg.out_dir}/report.html")


def register(app: typer.Typer) -> None:
    command(app, "concepts", RealConceptsConfig, _run)
