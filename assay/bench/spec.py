"""Spec strings: one compact text for a method or a world, shared by every bench family.

A spec is ``name[:key=v1|v2|…,key2=…]``. ``name`` must be one the family knows; ``|`` separates the
values of a swept key (several swept keys give their product), so ``"topk:k=2|4|8"`` is three runs
and ``"ig:steps=16|64"`` two. Values are cast to int, then float, then bool (``true``/``false``),
else kept as text. A world spec takes single values only (``"dyck:model_steps=20"``).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

from assay.config import ConfigError

__all__ = ["SpecRun", "spec_value", "parse_spec", "expand_spec", "parse_world_spec", "parameter_defaults", "world_params"]


def spec_value(v: str) -> Any:
    """``"4"`` → 4, ``"0.5"`` → 0.5, ``"true"`` → True, anything else stays text."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_spec(spec: str, known: Collection[str], *, what: str = "method") -> tuple[str, dict[str, list[Any]]]:
    """``"topk:k=2|4,expansion=8"`` → ``("topk", {"k": [2, 4], "expansion": [8]})``; an unknown name or a
    malformed part raises :class:`ConfigError` listing what is valid."""
    name, _, rest = spec.strip().partition(":")
    if name not in known:
        raise ConfigError(f"unknown {what} {name!r} in {spec!r}; choose from: {', '.join(sorted(known))}")
    params: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, vals = part.partition("=")
        if not eq or not key.strip() or not vals.strip():
            raise ConfigError(f"{what} parameter {part!r} in {spec!r} must look like key=v1|v2")
        params[key.strip()] = [spec_value(v.strip()) for v in vals.split("|")]
    return name, params


def parse_world_spec(spec: str, known: Collection[str]) -> tuple[str, dict[str, Any]]:
    """``"dyck:model_steps=20"`` → ``("dyck", {"model_steps": 20})``; a value with ``/`` is a tuple
    (``"hierarchy=3/3/0"`` → ``(3, 3, 0)``). A world spec sweeps nothing: list each world instead."""
    name, params = parse_spec(spec, known, what="world")
    swept = [k for k, v in params.items() if len(v) > 1]
    if swept:
        raise ConfigError(f"world spec {spec!r} sweeps {', '.join(swept)}; list each world separately instead")
    out: dict[str, Any] = {}
    for k, (v,) in params.items():
        out[k] = tuple(spec_value(p) for p in v.split("/")) if isinstance(v, str) and "/" in v else v
    return name, out


def parameter_defaults(of: Any, *, exclude: Collection[str] = ()) -> dict[str, Any]:
    """The parameters a world spec may set, with their defaults (None where there is none): a config dataclass's
    fields or a builder function's keyword arguments, less ``exclude`` (e.g. ``seed``, set by the bench)."""
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(of):
        out = {f.name: f.default if f.default is not dataclasses.MISSING
               else f.default_factory() if f.default_factory is not dataclasses.MISSING else None
               for f in dataclasses.fields(of)}
    else:
        out = {k: None if p.default is inspect.Parameter.empty else p.default
               for k, p in inspect.signature(of).parameters.items()}
    return {k: v for k, v in out.items() if k not in exclude}


def world_params(spec: str, defaults: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``(name, the world's default parameters updated by the spec's)`` for a family whose worlds each take a
    fixed set of parameters (``defaults``: world name → its parameters and their defaults). A key the world
    does not take is refused, naming the ones it does."""
    name, given = parse_world_spec(spec, defaults)
    unknown = sorted(set(given) - set(defaults[name]))
    if unknown:
        valid = ", ".join(defaults[name]) or "none (this world takes no parameters)"
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for world {name!r}; valid: {valid}")
    return name, {**defaults[name], **given}


class SpecRun(NamedTuple):
    """One method at one level of its sweep."""

    name: str
    """The method's name."""
    params: dict[str, Any]
    """Its parameters at this level (swept and fixed)."""
    label: str
    """Display label: the name, plus the fixed parameters when there is a sweep (``relu,expansion=8``)."""
    level: str
    """Display label of the level (``k=4``), or the fixed parameters, or ``default``."""


def expand_spec(spec: str, known: Collection[str], *, hidden: Collection[str] = (),
                hidden_in_level: Collection[str] = ()) -> Iterator[SpecRun]:
    """Every level of a method spec. ``hidden`` keys (run-budget settings such as ``steps``) are left out
    of the labels; ``hidden_in_level`` keys are also left out of an unswept level's label."""
    name, params = parse_spec(spec, known)
    fixed = {k: v[0] for k, v in params.items() if len(v) == 1}
    swept = {k: v for k, v in params.items() if len(v) > 1}
    label = name + ("".join(f",{k}={v}" for k, v in fixed.items() if k not in hidden) if swept else "")
    for combo in itertools.product(*swept.values()) if swept else [()]:
        level = dict(zip(swept, combo))
        shown = level or {k: v for k, v in fixed.items() if k not in hidden and k not in hidden_in_level}
        yield SpecRun(name, {**fixed, **level}, label, ",".join(f"{k}={v}" for k, v in shown.items()) or "default")
