"""The learning-dynamics phenomena by name: ``assay bench --family dynamics --worlds NAME``.

Each entry names the module holding a ``PHENOMENON`` (:class:`assay.bench.phenomena.base.Phenomenon`),
imported only when it runs. A new phenomenon adds one module and one line here.
"""

from __future__ import annotations

import importlib

from assay.config import ConfigError

__all__ = ["PHENOMENA", "load_phenomenon"]

PHENOMENA: dict[str, str] = {
    "toy_superposition": "assay.bench.phenomena.toy_superposition",
    "random_binary": "assay.bench.phenomena.random_binary",
    "matrix_completion": "assay.bench.phenomena.matrix_completion",
    "graph_trace": "assay.bench.phenomena.graph_trace",
    "contamination": "assay.bench.phenomena.contamination",
    "cyclic": "assay.bench.phenomena.cyclic",
    "knowledge_editing": "assay.bench.phenomena.knowledge_editing",
    "pcsg": "assay.bench.phenomena.pcsg",
}
"""Phenomenon name → the module holding its ``PHENOMENON``."""


def load_phenomenon(name: str):
    """The ``PHENOMENON`` object of phenomenon ``name``."""
    if name not in PHENOMENA:
        raise ConfigError(f"unknown dynamics phenomenon {name!r}; choose from: {', '.join(PHENOMENA) or '(none)'}")
    return importlib.import_module(PHENOMENA[name]).PHENOMENON
