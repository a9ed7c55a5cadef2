"""Configs: frozen, keyword-only dataclasses, their field docs, dict/TOML round trips.

Every command and every method in assay is configured by a frozen dataclass
(``@dataclass(frozen=True, kw_only=True)``) whose fields each carry a docstring — a string literal
on the line after the field, as in::

    @dataclass(frozen=True, kw_only=True)
    class CacheConfig:
        n_tokens: int = 100_000
        '''How many tokens to cache.'''

:func:`field_docs` reads those strings (for ``--help`` and for docs), :func:`to_dict` /
:func:`from_dict` convert with type checks and clear errors for unknown or ill-typed keys, and
:func:`load_toml` reads a config file. The CLI (``assay.cli.from_config``) is generated from the same
dataclasses, so each default exists once.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import operator
import textwrap
import tomllib
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

__all__ = ["ConfigError", "field_docs", "to_dict", "from_dict", "load_toml", "check_choice", "check_int_fields"]

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value that is missing, unknown or of the wrong type."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (inherited ones included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise a :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


@cache
def _int_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """``(name, may_be_none)`` of every field of dataclass ``cls`` annotated ``int`` or ``int | None``."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        if tp is int:
            out.append((name, False))
        elif get_origin(tp) in (typing.Union, types.UnionType) and set(get_args(tp)) == {int, type(None)}:
            out.append((name, True))
    return tuple(out)


def check_int_fields(config: Any) -> None:
    """Raise a :class:`ConfigError` for any field of the dataclass ``config`` annotated ``int`` (or
    ``int | None``) that holds something else: a float such as ``2.5``, a bool, a string. Integer-like
    values (numpy integers, one-element integer tensors) are stored as plain ``int``. Call it first in
    a config's ``__post_init__``."""
    for name, may_be_none in _int_fields(type(config)):
        v = getattr(config, name)
        if v is None and may_be_none:
            continue
        try:
            if isinstance(v, bool):
                raise TypeError
            i = operator.index(v)
        except TypeError:
            raise ConfigError(f"{type(config).__name__}.{name} must be an integer, got {type(v).__name__} {v!r}; "
                              "pass a whole number") from None
        if type(v) is not int:
            object.__setattr__(config, name, i)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-ready dict of a config dataclass (tuples become lists, paths strings)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return to_dict(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: {value!r} matches none of {tp}: " + "; ".join(errors))
    if origin is Literal:
        check_choice(name, value, args)
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(f"{name}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        seq = [_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table/dict, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table/dict for {tp.__name__}, got {value!r}")
        return from_dict(tp, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type):
        if tp is int and isinstance(value, bool) or not isinstance(value, tp):
            raise ConfigError(f"{name} must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build config ``cls`` from a plain dict, rejecting unknown keys and ill-typed values."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} for {cls.__name__}; valid keys: {', '.join(fields)}"
        )
    kwargs = {k: _coerce(f"{cls.__name__}.{k}", hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def load_toml(cls: type[C], path: str | Path, *, overrides: dict[str, Any] | None = None) -> C:
    """Read a TOML config file into ``cls``; ``overrides`` (e.g. from command-line flags) win."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    data.update(overrides or {})
    return from_dict(cls, data)
