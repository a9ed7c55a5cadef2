"""``assay sae train``: train an SAE on one site of an activation store (``assay cache`` output), report
held-out FVU/L0 and, when the store's model is an offline model, CE loss recovered with the
reconstruction spliced in. Config: :class:`SAETrainCommand`; the work is
:func:`assay.dictionaries.store_run.train_sae_on_store` (a crosscoder:
:func:`assay.dictionaries.store_crosscoder.train_crosscoder_on_store`; a temporal SAE:
:func:`assay.dictionaries.store_temporal.train_temporal_on_store`). A token-level SAE's folder also gets a
report section (:func:`assay.dictionaries.store_section.write_store_sae_section`: ``section.json`` +
``report.html``, so ``assay report`` shows it) with the held-out figures and a feature browser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from assay.cli import command
from assay.config import ConfigError
from assay.dictionaries.store_run import StoreSAEConfig

__all__ = ["SAETrainCommand", "run_sae_train", "register"]


@dataclass(frozen=True, kw_only=True)
class SAETrainCommand(StoreSAEConfig):
    """Train a sparse autoencoder on one site of an activation store and evaluate it."""

    store: Path
    """Activation store folder (written by `assay cache`)."""
    site: str
    """Site whose activations to train on (a transcoder's input site, e.g. blocks.0.ln2)."""
    output_site: str | None = None
    """A transcoder's output site in the same store (e.g. blocks.0.mlp); needs a *_transcoder architecture."""
    cross_site: tuple[str, ...] = ()
    """A crosscoder's further sources: sites of the store read with --site at the same rows (needs
    --architecture crosscoder)."""
    cross_store: tuple[Path, ...] = ()
    """A crosscoder's further sources across models: the --site of these stores, cached from the same token
    stream as --store (needs --architecture crosscoder)."""
    out: Path
    """Output artifact folder for the trained SAE (checked before training; never replaced unless --overwrite)."""
    overwrite: bool = False
    """Replace an existing SAE at --out."""
    checkpoint: Path | None = None
    """Checkpoint folder (resumed when it exists; a finished run resumed takes no step)."""
    evaluate_model: bool = True
    """Load the store's model (an offline model name or a local model folder) and report CE loss recovered on
    held-out windows."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.cross_site or self.cross_store) != (self.architecture == "crosscoder"):
            raise ConfigError("--cross-site/--cross-store name a crosscoder's further sources; give them with "
                              "--architecture crosscoder" if self.cross_site or self.cross_store else "a crosscoder "
                              "reads several sources: give --cross-site or --cross-store (one or more)")
        if self.output_site and self.architecture in ("crosscoder", "temporal"):
            raise ConfigError(f"--output-site is a transcoder option; a {self.architecture} reconstructs its input")


def run_sae_train(cfg: SAETrainCommand) -> dict[str, Any]:
    """Run ``assay sae train``; returns the printed figures."""
    from assay.artifact import check_writable
    from assay.dictionaries.store_run import train_sae_on_store
    from assay.dictionaries.store_section import write_store_sae_section
    from assay.store import ActivationStore

    check_writable(cfg.out, overwrite=cfg.overwrite)
    store = ActivationStore.open(cfg.store, sites=[cfg.site, *cfg.cross_site] + ([cfg.output_site] if cfg.output_site
                                                                                 else []))
    if cfg.architecture in ("crosscoder", "temporal"):  # no CE splice or feature browser for these yet
        from assay.dictionaries.store_crosscoder import train_crosscoder_on_store
        from assay.dictionaries.store_temporal import train_temporal_on_store

        sources = [(store, s) for s in (cfg.site, *cfg.cross_site)] + [(p, cfg.site) for p in cfg.cross_store]
        res = (train_crosscoder_on_store(sources, cfg, out=cfg.out, checkpoint=cfg.checkpoint, log=typer.echo)
               if cfg.architecture == "crosscoder" else
               train_temporal_on_store(store, cfg.site, cfg, out=cfg.out, checkpoint=cfg.checkpoint, log=typer.echo))
        return _echo({"out": str(cfg.out)} | res.figures())
    loaded = None
    if cfg.evaluate_model:
        from assay.models.local_hf import is_model_path
        from assay.models.offline import MODELS, load

        name = store.config.get("model")
        if name in MODELS or (isinstance(name, str) and is_model_path(name) and Path(name).is_dir()):
            loaded = load(name)
        else:
            typer.echo(f"store model {name!r} is not an offline model; skipping CE loss recovered", err=True)
    res = train_sae_on_store(store, cfg.site, cfg, model=loaded.model if loaded else None, out=cfg.out,
                             checkpoint=cfg.checkpoint, log=typer.echo, output_site=cfg.output_site)
    facts: dict[str, Any] = {"out": str(cfg.out), "steps": res.train.steps, "train_s": round(res.train_seconds, 1),
                             "last_step": {k: round(v, 4) for k, v in res.train.last[0].items()}}
    if res.reconstruction is not None and res.sparsity is not None:
        facts |= {"heldout_tokens": res.reconstruction.n_tokens, "heldout_fvu": round(res.reconstruction.fvu, 4),
                  "heldout_l0": round(res.sparsity.l0, 2), "heldout_dead": round(res.sparsity.dead_fraction, 4)}
    if res.spliced is not None:
        s = res.spliced
        facts |= {"ce_clean": round(s.ce_clean, 4), "ce_sae": round(s.ce_sae, 4), "ce_zero": round(s.ce_zero, 4),
                  "ce_mean": round(s.ce_mean, 4), "ce_recovered": round(s.ce_recovered, 4),
                  "ce_recovered_vs_mean": round(s.ce_recovered_mean, 4), "kl_score": round(s.kl_score, 4)}
    _echo(facts)
    write_store_sae_section(cfg.out, store, cfg.site, cfg, res, facts, loaded, log=typer.echo)
    typer.echo(f"report: {cfg.out / 'report.html'}")
    return facts


def _echo(facts: dict[str, Any]) -> dict[str, Any]:
    for k, v in facts.items():
        typer.echo(f"{k}: {v}")
    return facts


def register(app: typer.Typer) -> None:
    sae_app = typer.Typer(help="Sparse autoencoders.", no_args_is_help=True)
    command(sae_app, "train", SAETrainCommand, run_sae_train)
    app.add_typer(sae_app, name="sae")
