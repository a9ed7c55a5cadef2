"""``assay sae train``: train an SAE on activations from an assay store (config: :class:`SAETrainCommand`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import typer

from assay.cli import command
from assay.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class SAETrainCommand:
    """Train a sparse autoencoder on one site of an activation store."""

    store: Path
    """Activation store folder (written by assay's store)."""
    site: str
    """Site whose activations to train on."""
    out: Path
    """Output artifact folder for the trained SAE."""
    architecture: Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "mp"] = "topk"
    """SAE architecture."""
    expansion: int = 8
    """d_sae = expansion × d_in."""
    k: int = 32
    """Active latents per token (TopK family, MP)."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float | None = None
    """Learning rate (None: the architecture's default / width-scaled rule)."""
    seed: int = 0
    """Seed of the data order and the initialisation."""
    checkpoint: Path | None = None
    """Checkpoint folder (resumed when it exists)."""

    def __post_init__(self) -> None:
        if self.expansion <= 0 or self.steps <= 0 or self.batch_size <= 0:
            raise ConfigError("expansion, steps and batch_size must be positive")


def _run(cfg: SAETrainCommand) -> None:
    from assay.dictionaries.registry import build_sae, save_sae
    from assay.dictionaries.trainer import TrainConfig, train_saes
    from assay.store import ActivationStore

    store = ActivationStore.open(cfg.store)
    d = store.d(cfg.site)
    kw = {"d_in": d, "d_sae": cfg.expansion * d, "seed": cfg.seed}
    if cfg.architecture in ("topk", "batchtopk", "matryoshka", "mp"):
        kw["k"] = cfg.k
    sae = build_sae(cfg.architecture, **kw)
    (trained,), result = train_saes(sae, TrainConfig(steps=cfg.steps, lr=cfg.lr, progress=True), store,
                                    site=cfg.site, batch_size=cfg.batch_size, seed=cfg.seed,
                                    checkpoint=cfg.checkpoint)
    save_sae(cfg.out, trained, meta={"store": str(cfg.store), "site": cfg.site, "steps": result.steps,
                                     "last": result.last[0]})
    typer.echo(f"saved {cfg.out}: {result.last[0]}")


def register(app: typer.Typer) -> None:
    sae_app = typer.Typer(help="Sparse autoencoders.", no_args_is_help=True)
    command(sae_app, "train", SAETrainCommand, _run)
    app.add_typer(sae_app, name="sae")
