"""Bench methods: a compact spec string → one fitted Lens per sparsity level.

A method spec is ``name[:key=v1|v2|…,key2=…]``: ``name`` is any SAE architecture of
:mod:`assay.dictionaries.registry` or a baseline of :mod:`assay.bench.baselines`; ``|`` separates the
sparsity levels (the sweep; several swept keys give their product). Examples::

    topk:k=2|4|8        relu:l1_coef=1|3|10,expansion=8        pca:n=4|8|16        random:k=4

Shared keys: ``expansion`` (latents = expansion × d, default 4), ``steps`` / ``lr`` / ``batch_size``
(SAE training; defaults from the suite, lr None = the architecture's own default). Other keys go to the SAE config (``k``, ``l1_coef``, …).
Baselines take ``n`` (components; PCA/ICA default d, NMF and random default expansion × d) and, for
the random dictionary, ``k`` (default: the planted L0 rounded up, else 4).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from torch import Tensor

from assay.bench.baselines import BASELINES, fit_baseline
from assay.config import ConfigError

__all__ = ["MethodRun", "parse_method", "expand_method", "fit_method", "atoms_of"]

_SHARED = ("expansion", "steps", "lr", "batch_size")


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def parse_method(spec: str) -> tuple[str, dict[str, list[Any]]]:
    """``"topk:k=2|4,expansion=8"`` → ``("topk", {"k": [2, 4], "expansion": [8]})``."""
    from assay.dictionaries.registry import ARCHITECTURES

    name, _, rest = spec.strip().partition(":")
    if name not in ARCHITECTURES and name not in BASELINES:
        raise ConfigError(f"unknown method {name!r} in {spec!r}; SAEs: {', '.join(ARCHITECTURES)}; "
                          f"baselines: {', '.join(BASELINES)}")
    params: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, vals = part.partition("=")
        if not eq or not key or not vals:
            raise ConfigError(f"method parameter {part!r} in {spec!r} must look like key=v1|v2")
        params[key.strip()] = [_value(v.strip()) for v in vals.split("|")]
    return name, params


class MethodRun(NamedTuple):
    """One method at one sparsity level."""

    name: str
    """Architecture or baseline name."""
    params: dict[str, Any]
    """Its parameters at this level (the swept ones included)."""
    label: str
    """Display label of the method (its spec without the swept values), e.g. ``topk``."""
    level: str
    """Display label of the level, e.g. ``k=4``."""


def expand_method(spec: str) -> Iterator[MethodRun]:
    """Every sparsity level of a method spec."""
    name, params = parse_method(spec)
    fixed = {k: v[0] for k, v in params.items() if len(v) == 1}
    swept = {k: v for k, v in params.items() if len(v) > 1}
    label = name + ("".join(f",{k}={v}" for k, v in fixed.items() if k not in _SHARED[1:]) if swept else "")
    for combo in itertools.product(*swept.values()) if swept else [()]:
        level = dict(zip(swept, combo))
        shown = level or {k: v for k, v in fixed.items() if k not in _SHARED}
        yield MethodRun(name, {**fixed, **level}, label, ",".join(f"{k}={v}" for k, v in shown.items()) or "default")


def fit_method(run: MethodRun, train: Callable[[int, int], Tensor], d: int, *, seed: int, steps: int,
               batch_size: int, lr: float | None = None, planted_l0: float | None = None):
    """Fit ``run`` on data from ``train(n_rows, seed) -> [n_rows, d]``; returns a Lens with ``atoms [n, d]``."""
    p = dict(run.params)
    expansion = int(p.pop("expansion", 4))
    steps = int(p.pop("steps", steps))
    batch_size = int(p.pop("batch_size", batch_size))
    lr = p.pop("lr", lr)
    if run.name in BASELINES:
        default_n = d if run.name in ("pca", "ica") else expansion * d
        n = int(p.pop("n", default_n))
        k = p.pop("k", None)
        if run.name == "random" and k is None:
            k = max(1, round(planted_l0)) if planted_l0 else 4
        if p:
            raise ConfigError(f"unknown parameter(s) {sorted(p)} for baseline {run.name!r}")
        x = train(max(4 * n, 8192), seed)
        return fit_baseline(run.name, x, n=n, k=int(k) if k is not None else None, seed=seed)  # type: ignore[arg-type]
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import TrainConfig, train_saes

    sae = build_sae(run.name, d_in=d, d_sae=expansion * d, seed=seed, **p)

    def batches(start: int):
        for step in range(start, steps):
            yield train(batch_size, 10_000 * (seed + 1) + step)

    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=max(1, steps // 20))
    (trained,), _ = train_saes(sae, cfg, batches)
    return trained


def atoms_of(lens) -> Tensor | None:
    """The decoder rows of a fitted method (None if it has none)."""
    a = getattr(lens, "atoms", None)
    if a is None and hasattr(lens, "W_dec"):
        a = lens.W_dec
    return a.detach() if isinstance(a, Tensor) else None

