"""Ground-truth recovery: how well a learned dictionary finds planted directions.

As in Sharkey, Braun & Millidge 2022 ("Taking features out of superposition with sparse
autoencoders", mean max cosine similarity) and SAELens' synthetic benchmark (Hungarian-matched MCC).
For planted unit directions G ``[m, d]`` and learned atoms D ``[k, d]``:

    matched cosine_g = cos(G_g, D_Π(g)) for the Hungarian assignment Π maximising Σ cos
    mcc = mean matched cosine;  mean max cosine = mean_g max_i cos(G_g, D_i)
    fraction recovered = #{g : matched cosine_g ≥ threshold} / m

Cosines are signed by default (a ReLU code cannot use a flipped atom); ``signed=True`` takes |cos|.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from assay.evaluate.geometry import hungarian_match, unit

__all__ = ["RecoveryMetrics", "feature_recovery"]


class RecoveryMetrics(NamedTuple):
    """Recovery of planted directions by a dictionary."""

    mcc: float
    """Mean Hungarian-matched cosine over planted directions (unmatched ones count 0)."""
    mean_max_cosine: float
    """mean_g max_i cos(G_g, D_i) (atoms may be reused)."""
    fraction_recovered: float
    """Fraction of planted directions whose matched cosine ≥ threshold."""
    matched_cosine: Tensor
    """Per planted direction: its matched cosine ``[m]`` (0 when unmatched)."""
    threshold: float
    """The threshold used."""


def feature_recovery(D: Tensor, G: Tensor, *, threshold: float = 0.9, signed: bool = False) -> RecoveryMetrics:
    """Recovery of planted directions ``G [m, d]`` by atoms ``D [k, d]`` (rows)."""
    if D.shape[-1] != G.shape[-1]:
        raise ValueError(f"atoms have dimension {D.shape[-1]} but planted directions {G.shape[-1]}")
    rows, cols, cos = hungarian_match(G, D, signed=signed)
    matched = torch.zeros(G.shape[0], dtype=torch.float64)
    matched[rows] = cos.abs() if signed else cos
    all_cos = unit(G) @ unit(D).t()
    best = (all_cos.abs() if signed else all_cos).max(dim=1).values
    return RecoveryMetrics(
        mcc=matched.mean().item(),
        mean_max_cosine=best.mean().item(),
        fraction_recovered=(matched >= threshold).double().mean().item(),
        matched_cosine=matched,
        threshold=threshold,
    )
