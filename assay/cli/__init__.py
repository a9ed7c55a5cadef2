"""The ``assay`` command line.

Each command is backed by a frozen config dataclass: :func:`command` turns a dataclass into a Typer
command whose options are the dataclass fields (help text from the field docstrings, defaults from
the dataclass), plus ``--config FILE.toml``; flags given on the command line override the file.

Command modules live beside this file, one per command group, each defining
``register(app: typer.Typer) -> None``; they are discovered automatically. Command modules import
the heavy method code inside the command body, so ``assay --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer

from assay.config import ConfigError, field_docs, from_dict, load_toml

__all__ = ["app", "main", "command"]

app = typer.Typer(
    name="assay",
    help="assay: take neural networks apart, and check the tools that do it against ground truth.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _cli_type(tp: Any) -> tuple[Any, str]:
    """Map a config field type to a type Typer understands, plus a help suffix."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _cli_type(rest[0])
        return str, ""
    if origin is Literal:
        return type(args[0]), f" Choices: {', '.join(map(str, args))}."
    if origin in (tuple, list):
        item = args[0] if args else str
        inner, _ = _cli_type(item)
        return list[inner], " (repeat the flag for several)"
    if tp in (int, float, str, bool, Path):
        return tp, ""
    return str, ""


def _plain(text: str) -> str:
    """Help text without reStructuredText markup (``code`` and :role:`target` become plain words)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("`", "")


def _shown_default(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) if value else "none"
    return "none" if value is None or value == "" else str(value)


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, ImportError, FileNotFoundError,
                                                 PermissionError, IsADirectoryError, NotADirectoryError)
"""Errors a command reports as one line (``error: …``) instead of a traceback: the library raises these
for bad input (ConfigError, StoreError, ArtifactError, SiteError, ModelPackageError, …). Set
``ASSAY_TRACEBACK=1`` to see the whole traceback."""


def default_threads() -> int:
    """Intra-op threads for a command: ``$ASSAY_THREADS`` if set, else the cores not already busy
    (``os.cpu_count()`` minus the 1-minute load average, at least 1). On a shared machine, threads that
    outnumber the free cores spin-wait: `assay world train dyck` ran ≈4× slower with 2 threads than with 1
    under load. ``OMP_NUM_THREADS`` set by the user is respected (then this returns torch's own count)."""
    import torch

    if os.environ.get("ASSAY_THREADS"):
        return max(1, int(os.environ["ASSAY_THREADS"]))
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(torch.get_num_threads(), cores - round(busy)))


def _report_user_errors(run: Callable[[Any], Any], cfg: Any) -> Any:
    try:
        return run(cfg)
    except USER_ERRORS as e:
        if os.environ.get("ASSAY_TRACEBACK"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        typer.secho(f"error: {msg or type(e).__name__}", fg="red", err=True)
        typer.echo("(set ASSAY_TRACEBACK=1 to see where it was raised)", err=True)
        raise typer.Exit(2) from None


def command(
    parent: typer.Typer, name: str, config_cls: type, run: Callable[[Any], Any], *, help: str | None = None
) -> None:
    """Register ``assay <name>``: build ``config_cls`` from flags (and ``--config``) and call ``run``."""
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    params = [
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help="TOML file with any of the options below."),
            annotation=typing.Optional[Path],  # noqa: UP045 (Typer needs typing.Optional)
        )
    ]
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        cli_tp, suffix = _cli_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        flag = "--" + f.name.replace("_", "-")
        decls = [flag] if cli_tp is not bool else [f"{flag}/--no-{f.name.replace('_', '-')}"]
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=("REQUIRED. " if required else "") + _plain(docs.get(f.name, ""))
                                     + suffix, show_default=False if required else _shown_default(default)),
                annotation=typing.Optional[cli_tp],  # noqa: UP045
            )
        )

    def callback(**kwargs: Any) -> Any:
        config_file = kwargs.pop("config_file")
        given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items() if v is not None}
        try:
            cfg = load_toml(config_cls, config_file, overrides=given) if config_file else from_dict(config_cls, given)
        except (ConfigError, ValueError) as e:
            raise typer.BadParameter(str(e)) from None
        import torch

        torch.set_num_threads(default_threads())
        return _report_user_errors(run, cfg)

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__name__ = name.replace("-", "_")
    parent.command(name, help=_plain(help or (config_cls.__doc__ or "").strip().split("\n\n")[0]))(callback)


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    """Entry point of the ``assay`` script."""
    app()
