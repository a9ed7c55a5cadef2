"""``assay world …``: list the registered worlds and print decoded samples with their ground truth.

``world_app`` is the Typer group; other command modules (e.g. the model zoo's ``world train``) add
commands to it with ``world_app.command(...)`` or :func:`assay.cli.command` (``parent=world_app``).
"""

from __future__ import annotations

import typer

__all__ = ["world_app", "register"]

world_app = typer.Typer(name="world", help="Synthetic worlds with ground truth.", no_args_is_help=True)


def _parse_overrides(items: list[str]) -> dict[str, object]:
    import json

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


@world_app.command("list")
def list_worlds() -> None:
    """Print every registered world and the first line of its documentation."""
    import sys

    from assay.worlds import registry

    for name in registry.names():
        try:
            entry = registry.get(name)
            doc = (sys.modules[entry.world_cls.__module__].__doc__ or "").strip().split("\n")[0]
            if len(doc) > 100 or not doc.endswith((".", ")", "?")):
                doc = (entry.world_cls.__doc__ or doc).strip().split("\n")[0]
        except (ImportError, AttributeError) as e:
            doc = f"(not available: {e})"
        typer.echo(f"{name:14s} {doc}")


@world_app.command("sample")
def sample(
    name: str = typer.Argument(..., help="World name (see `assay world list`)."),
    n: int = typer.Option(3, "--n", help="How many examples to draw."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling generator."),
    set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE (JSON values); repeatable."),
) -> None:
    """Print ``n`` decoded samples of world NAME with their per-token labels."""
    from assay.config import ConfigError
    from assay.worlds import registry
    from assay.worlds.base import make_generator

    try:
        world = registry.make(name, **_parse_overrides(set_))
    except (KeyError, ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    batch = world.sample(n, generator=make_generator(seed))
    vocab = getattr(world, "vocab", None)
    if vocab is None:
        typer.echo(f"inputs {tuple(batch.inputs.shape)} {batch.inputs.dtype}")
        if batch.targets is not None:
            typer.echo(f"targets {batch.targets[:n].tolist()}")
        for key, value in batch.labels.items():
            typer.echo(f"label {key}: {tuple(value.shape)} {value.dtype}")
        return
    T = batch.inputs.shape[1]
    per_token = {k: v for k, v in batch.labels.items() if v.shape[:2] == (n, T) and v.ndim == 2}
    per_example = {k: v for k, v in batch.labels.items() if k not in per_token and v.shape[:2] != (n, T)}
    for i in range(n):
        toks = world.decode(batch.inputs[i])
        typer.echo(f"# sample {i}: {' '.join(toks)}")
        for key, value in per_example.items():
            typer.echo(f"  {key} = {value[i].tolist()}")
        header = ["pos", "token", "target"] + list(per_token)
        typer.echo("  " + "\t".join(header))
        for t in range(len(toks)):
            tgt = int(batch.targets[i, t]) if batch.targets is not None else -100
            row = [str(t), toks[t], vocab[tgt] if tgt >= 0 else "-"]
            row += [_fmt(per_token[k][i, t].item()) for k in per_token]
            typer.echo("  " + "\t".join(row))


def _fmt(x: float | int | bool) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def register(app: typer.Typer) -> None:
    """Add the ``world`` group to the ``assay`` app."""
    app.add_typer(world_app, name="world")
