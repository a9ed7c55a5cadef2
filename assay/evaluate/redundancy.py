"""Planted-redundancy recovery: did a structured pruning rule remove the planted copies, one per pair?

The score of data-free neuron merging (Srinivas & Babu 2015, "Data-free Parameter Pruning for Deep
Neural Networks", BMVC 2015) and of trainable gates on a layer whose redundant pairs are known
(:mod:`assay.models.planted_redundancy`). A pair (source, copy) is *resolved* when exactly one of its
two units is removed: the other can carry both (a merge, or the next layer re-fitting). With R the
removed units and P the planted pairs,

    precision = |{u ∈ R : u is in a pair whose other unit is kept}| / |R|
    recall    = |{p ∈ P : exactly one unit of p removed}| / |P|

Removing both units of a pair counts for neither (the pair's signal is gone). Precision is 0 when
nothing is removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["PairRemoval", "pair_removal"]


class PairRemoval(NamedTuple):
    """Planted-pair precision and recall of one removal."""

    precision: float
    """Share of removed units whose planted partner was kept."""
    recall: float
    """Share of planted pairs with exactly one unit removed."""
    n_removed: int
    """Units removed."""


def pair_removal(removed: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> PairRemoval:
    """Score ``removed`` (bool per unit, True = removed) against the planted ``pairs`` (module docstring)."""
    if removed.dtype != torch.bool or removed.dim() != 1:
        raise ValueError(f"removed must be a 1-d boolean tensor (one entry per unit), got {removed.dtype} "
                         f"{tuple(removed.shape)}")
    if not pairs:
        raise ValueError("no planted pairs to score against")
    n = removed.numel()
    bad = [p for p in pairs if not (0 <= p[0] < n and 0 <= p[1] < n)]
    if bad:
        raise ValueError(f"pairs {bad} index units outside the layer's {n}")
    r = removed.tolist()
    resolved = [(a, b) for a, b in pairs if r[a] != r[b]]
    hits = {a if r[a] else b for a, b in resolved}
    n_removed = sum(r)
    return PairRemoval(len(hits) / n_removed if n_removed else 0.0, len(resolved) / len(pairs), n_removed)
