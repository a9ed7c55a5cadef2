"""``assay world train NAME``: train (or load from the cache) the default tiny model of a world.

Adds the ``train`` command to the ``assay world`` group of :mod:`assay.cli.world`; the work is done
by :func:`assay.models.zoo.world_model`, imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from assay.cli.world import _parse_overrides, world_app

__all__ = ["register", "train_command"]


def train_command(
    name: str = typer.Argument(..., help="World name (see `assay world list`)."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: the world's reference model)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and the data stream."),
    world_set: list[str] = typer.Option([], "--set", help="World config override KEY=VALUE (JSON values); repeatable."),
    model_set: list[str] = typer.Option([], "--model", help="Transformer config override KEY=VALUE; repeatable."),
    train_set: list[str] = typer.Option([], "--train", help="Training config override KEY=VALUE; repeatable."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache folder (default $ASSAY_CACHE or ~/.cache/assay)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if a cached model exists."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the default tiny transformer of world NAME (cached: a second call loads it)."""
    import json

    from assay.config import ConfigError
    from assay.models.zoo import world_model

    train_overrides = _parse_overrides(train_set)
    if steps is not None:
        train_overrides["steps"] = steps
    try:
        wm = world_model(name, world_overrides=_parse_overrides(world_set), model_overrides=_parse_overrides(model_set),
                         train_overrides=train_overrides, seed=seed, cache_dir=cache_dir, progress=progress,
                         retrain=retrain)
    except (ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(f"{'trained' if wm.trained else 'loaded from cache'}: {wm.path}")
    acceptance = getattr(wm.world, "acceptance", None)
    if acceptance and acceptance[0] in wm.metrics:
        typer.echo(f"{acceptance[0]} = {wm.metrics[acceptance[0]]:.4f} (acceptance threshold {acceptance[1]})")
    typer.echo(json.dumps({k: round(v, 6) for k, v in wm.metrics.items()}))


def register(app: typer.Typer) -> None:
    """Add ``train`` to the ``assay world`` group (the group itself is registered by ``assay.cli.world``)."""
    world_app.command("train")(train_command)
