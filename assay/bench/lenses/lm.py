"""Layer sites of a loaded language model, shared by the SmolLM2 experiments of the lenses family
(``assay probe``, ``assay steer``, ``assay lens`` and the family's ``smollm2`` world)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["layer_sites", "layer_number"]


def layer_sites(lm: Any, layers: Sequence[int]) -> list[str]:
    """The residual sites of ``layers`` (all layers when empty) of a loaded model (``lm.layer_sites``)."""
    n = len(lm.layer_sites)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer(s) {bad} do not exist; {lm.name} has layers 0..{n - 1}")
    return [lm.layer_sites[i] for i in layers] if layers else list(lm.layer_sites)


def layer_number(site: str, i: int) -> int:
    """The layer index at the end of a site name (``model.layers.12`` → 12), else ``i``."""
    tail = site.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else i
