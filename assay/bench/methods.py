"""Bench methods: a compact spec string → one fitted Lens per sparsity level.

A method spec is ``name[:key=v1|v2|…,key2=…]``: ``name`` is any SAE architecture of
:mod:`assay.dictionaries.registry` or a baseline of :mod:`assay.bench.baselines`; ``|`` separates the
sparsity levels (the sweep; several swept keys give their product). Examples::

    topk:k=2|4|8        relu:l1_coef=1|3|10,expansion=8        pca:n=4|8|16        random:k=4

Shared keys: ``expansion`` (latents = expansion × d, default 4), ``steps`` / ``lr`` / ``batch_size``
(SAE training; defaults from the bench settings, lr None = the architecture's own default). Other keys go to the SAE config (``k``, ``l1_coef``, …).
Baselines take ``n`` (components; PCA/ICA default d, NMF and random default expansion × d) and, for
the random dictionary, ``k`` (default: the planted L0 rounded up, else 4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from assay.bench.baselines import BASELINES, fit_baseline
from assay.bench.spec import SpecRun, expand_spec
from assay.config import ConfigError
from assay.dictionaries.registry import ARCHITECTURES

__all__ = ["METHOD_NAMES", "expand_method", "fit_method", "atoms_of"]

BUDGET_KEYS = ("steps", "lr", "batch_size")
"""Per-method overrides of the run budget: left out of the labels."""


METHOD_NAMES = (*ARCHITECTURES, *BASELINES)
"""The names a dictionary method spec may use (SAE architectures, then baselines)."""


def expand_method(spec: str) -> list[SpecRun]:
    """Every sparsity level of a dictionary method spec (the expansion is shown only when swept)."""
    return list(expand_spec(spec, METHOD_NAMES, hidden=BUDGET_KEYS, hidden_in_level=("expansion",)))


def fit_method(run: SpecRun, train: Callable[[int, int], Tensor], d: int, *, seed: int, steps: int,
               batch_size: int, lr: float | None = None, planted_l0: float | None = None,
               defaults: Mapping[str, Mapping[str, Any]] | None = None):
    """Fit ``run`` on data from ``train(n_rows, seed) -> [n_rows, d]``; returns a Lens with ``atoms [n, d]``.

    ``defaults`` (a world's :attr:`~assay.bench.worlds.WorldData.method_defaults`) fill the parameters the
    spec leaves out: ``defaults["*"]`` for every method, then ``defaults[run.name]``."""
    defaults = defaults or {}
    p = {**defaults.get("*", {}), **defaults.get(run.name, {}), **dict(run.params)}
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
    from assay.dictionaries.trainer import SAETrainConfig, train_saes

    sae = build_sae(run.name, d_in=d, d_sae=expansion * d, seed=seed, **p)

    def batches(start: int):
        for step in range(start, steps):
            yield train(batch_size, 10_000 * (seed + 1) + step)

    cfg = SAETrainConfig(steps=steps, lr=lr, warmup_steps=max(1, steps // 20))
    trained, _ = train_saes(sae, cfg, batches)
    return trained


def atoms_of(lens) -> Tensor | None:
    """The decoder rows of a fitted method (None if it has none)."""
    a = getattr(lens, "atoms", None)
    if a is None and hasattr(lens, "W_dec"):
        a = lens.W_dec
    return a.detach() if isinstance(a, Tensor) else None

