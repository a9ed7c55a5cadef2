"""One ``attribute(model, x, target, config=...)`` for every engine method.

Each engine method (Han, Srinivas & Lakkaraju 2022, "Which Explanation Should I Choose?") is a
configuration: the config's type picks the neighbourhood × surrogate × loss, and the registry
(:data:`assay.attribution.registry.ENGINE_METHODS`) pairs it with the function that runs it.
"""

from __future__ import annotations

from typing import Any

import torch

from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.registry import ENGINE_METHODS, lookup

__all__ = ["attribute"]


def attribute(
    model, x: torch.Tensor, target: int | torch.Tensor | None = None, *, config: EngineConfig | str, **kwargs: Any
) -> Attribution:
    """Run the method configured by ``config`` (an instance, or a method name for its defaults).

    Extra keyword arguments (``baseline``, ``feature_mask``, ``generator``, ``samples``, ``noise``)
    go to the method; one it does not take raises ``TypeError``.
    """
    if isinstance(config, str):
        config = lookup(config, ENGINE_METHODS).config()
    entry = ENGINE_METHODS.get(type(config).name)
    if entry is None or type(config) is not entry.config:
        raise TypeError(f"{type(config).__name__} is not an engine method config; use one of "
                        + ", ".join(e.config.__name__ for e in ENGINE_METHODS.values()))
    return entry.run(model, x, target, config=config, **kwargs)
