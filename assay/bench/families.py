"""The bench families by name: ``assay bench --family NAME`` looks them up here.

Each entry names the module that defines the family (imported only when the family runs, so the
command line starts fast). A new family adds one module under ``assay/bench/`` with a ``FAMILY``
object satisfying :class:`assay.bench.runner.Family`, and one line here.
"""

from __future__ import annotations

import importlib
from typing import Literal

from assay.config import ConfigError

__all__ = ["FAMILY_MODULES", "FamilyName", "load_family"]

FAMILY_MODULES = {
    "dictionaries": "assay.bench.dictionaries",
    "lenses": "assay.bench.lenses",
    "attribution": "assay.bench.attribution",
    "robustness": "assay.bench.robustness",
    "data-attribution": "assay.bench.data_attribution",
    "sae-fragility": "assay.bench.sae_fragility",
    "sae-causal": "assay.bench.sae_causal",
    "concepts": "assay.bench.concepts",
    "temporal": "assay.bench.temporal",
    "circuits": "assay.bench.circuits",
    "pruning": "assay.bench.pruning",
    "dynamics": "assay.bench.phenomena.family",
}
"""Family name → the module holding its ``FAMILY``."""

FamilyName = Literal[tuple(FAMILY_MODULES)]  # type: ignore[valid-type]
"""The names of :data:`FAMILY_MODULES` as a Literal (the command line's choices come from it)."""


def load_family(name: str):
    """The ``FAMILY`` object of family ``name``."""
    if name not in FAMILY_MODULES:
        raise ConfigError(f"unknown bench family {name!r}; choose from: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY
