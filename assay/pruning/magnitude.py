"""Magnitude pruning, layer-wise and global, and the lowest-score selection every score-based rule uses.

Magnitude pruning as in Zhu & Gupta 2017 ("To prune, or not to prune: exploring the efficacy of
pruning for model compression", arXiv 1710.01878): the mask keeps the 1 − s fraction of weights with
the largest |θ|. Layer-wise scope prunes each layer to sparsity s; global scope draws one threshold
over the scores of all given layers together (one kth value over their concatenation).

Rules (spec `pruning.md` §2):

- **Count**: k = round(s · n) weights are pruned out of n, with s taken at its decimal value
  (``Fraction(repr(s))``, so 0.1 is exactly 1/10) and halves rounded to even (Python's ``round``).
  Example: θ₁ = (0.1, −0.5, 0.3), θ₂ = (2.0, −0.05), s = 0.4 → layer-wise prunes round(1.2) = 1 of θ₁
  and round(0.8) = 1 of θ₂; global prunes round(2.0) = 2 of the 5.
- **Ties**: the k lowest scores are pruned, equal scores broken by position — the earlier layer (in
  the order given), then the lower flat index, is pruned first — via a stable sort of float64 scores,
  so the result is deterministic.

Pruning a model projects its dense shadow weights (:mod:`assay.pruning.masks`): the new mask is
recomputed from θ, not from θ ⊙ M, so masked weights that have grown can come back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Literal

import torch
from torch import nn

from assay.config import check_choice
from assay.pruning.masks import apply_masks, check_sparsity, prunable_layers, shadow_weight

__all__ = ["n_pruned", "prune_lowest", "magnitude_masks", "magnitude_prune"]

Scope = Literal["layer", "global"]


def n_pruned(n: int, s: float) -> int:
    """How many of ``n`` weights sparsity ``s`` prunes: round(s · n), s at its decimal value, halves to even."""
    return round(Fraction(repr(check_sparsity(s))) * n)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat boolean mask that is False at the ``k`` lowest entries of ``scores`` (ties: lower index first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.detach().reshape(-1).to(torch.float64), stable=True).indices
    keep[order[:k]] = False
    return keep


def prune_lowest(scores: Mapping[str, torch.Tensor], sparsity: float, *, scope: Scope = "global"
                 ) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True keeps) that prune the lowest ``scores`` to ``sparsity``, per layer
    (``scope="layer"``) or over all layers at once (``"global"``); counts and ties as in the module
    docstring. NaN scores are refused."""
    check_sparsity(sparsity)
    check_choice("scope", scope, ("layer", "global"))
    for name, t in scores.items():
        if torch.isnan(t).any():
            raise ValueError(f"scores of layer {name!r} contain NaN; a NaN score cannot be ranked")
    if scope == "layer":
        return {n: _lowest(t, n_pruned(t.numel(), sparsity)).reshape(t.shape) for n, t in scores.items()}
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in scores.values()]) if scores else torch.zeros(0)
    keep = _lowest(flat, n_pruned(flat.numel(), sparsity))
    out, start = {}, 0
    for name, t in scores.items():
        out[name] = keep[start : start + t.numel()].reshape(t.shape).to(t.device)
        start += t.numel()
    return out


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float, *, scope: Scope = "global"
                    ) -> dict[str, torch.Tensor]:
    """Keep-masks that prune the smallest |θ| of ``weights`` (layer name → tensor) to ``sparsity``."""
    return prune_lowest({n: w.detach().abs() for n, w in weights.items()}, sparsity, scope=scope)


def magnitude_prune(model: nn.Module, sparsity: float, *, scope: Scope = "global",
                    layers: Sequence[str] | None = None, regrow: bool = True) -> dict[str, torch.Tensor]:
    """Mask ``model`` in place by the magnitude of its dense shadow weights and return the masks.

    ``layers`` defaults to the prunable layers without the first and the last (spec §2: the input and
    output layers are left dense by default); ``regrow`` as in :func:`assay.pruning.masks.apply_masks`."""
    names = tuple(layers) if layers is not None else prunable_layers(model, skip_first_last=True)
    if not names:
        raise ValueError("no layers to prune: the model has fewer than three prunable layers, so none is left "
                         "after skipping the first and the last; name the layers explicitly with layers=")
    masks = magnitude_masks({n: shadow_weight(model, n) for n in names}, sparsity, scope=scope)
    apply_masks(model, masks, regrow=regrow)
    return masks
