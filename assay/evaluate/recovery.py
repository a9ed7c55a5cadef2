"""Ground-truth recovery: how well a learned dictionary finds planted directions.

As in Sharkey, Braun & Millidge 2022 ("Taking features out of superposition with sparse
autoencoders", mean max cosine similarity) and SAELens' synthetic benchmark (Hungarian-matched MCC).
For planted unit directions G ``[m, d]``, learned atoms D ``[k, d]`` and weights w_g (default 1):

    matched cosine_g = cos(G_g, D_Π(g)) for the Hungarian assignment Π maximising Σ cos
    best cosine_g = max_i cos(G_g, D_i)   (atoms may be reused)
    mcc = Σ_g w_g matched cosine_g / Σ_g w_g;  mean max cosine = Σ_g w_g best cosine_g / Σ_g w_g
    fraction recovered = Σ_g w_g [matched cosine_g ≥ threshold] / Σ_g w_g

``signed=True`` (default) keeps the sign of the cosine, so an atom pointing the opposite way
(cos = −1) leaves a direction unrecovered: an SAE's atom has a sign fixed by its non-negative (ReLU)
code, so −G_g cannot express G_g. Baselines with signed codes (PCA, ICA in ``assay.bench.baselines``)
carry every direction as the atom pair ±V, so they are still matched fairly. ``signed=False`` takes
|cos| (SAELens' convention), for dictionaries whose atoms have no meaningful sign.
Weights such as each feature's firing probability give an importance-weighted recovery.
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
    """(Weighted) mean Hungarian-matched cosine over planted directions (unmatched ones count 0)."""
    mean_max_cosine: float
    """(Weighted) mean over planted directions of ``best_cosine``."""
    fraction_recovered: float
    """(Weighted) fraction of planted directions whose matched cosine ≥ threshold."""
    matched_cosine: Tensor
    """Per planted direction: its matched cosine ``[m]`` (0 when unmatched)."""
    best_cosine: Tensor
    """Per planted direction: its best cosine with any atom ``[m]`` (atoms may be reused)."""
    threshold: float
    """The threshold used."""


def feature_recovery(D: Tensor, G: Tensor, *, threshold: float = 0.9, signed: bool = True,
                     weights: Tensor | None = None) -> RecoveryMetrics:
    """Recovery of planted directions ``G [m, d]`` by atoms ``D [k, d]`` (rows); optional ``weights
    [m]`` (non-negative, e.g. firing probabilities) turn the three means into weighted means."""
    if D.shape[-1] != G.shape[-1]:
        raise ValueError(f"atoms have dimension {D.shape[-1]} but planted directions {G.shape[-1]}")
    m = G.shape[0]
    if weights is None:
        w = torch.ones(m, dtype=torch.float64)
    else:
        w = torch.as_tensor(weights).detach().double().cpu()
        if w.shape != (m,) or bool((w < 0).any()) or not w.sum() > 0:
            raise ValueError(f"weights must be [m] = [{m}] non-negative with a positive sum, got shape "
                             f"{tuple(w.shape)}")
    w = w / w.sum()
    rows, _, cos = hungarian_match(G, D, signed=signed)
    matched = torch.zeros(m, dtype=torch.float64)
    matched[rows] = cos if signed else cos.abs()
    all_cos = unit(G) @ unit(D).t()
    best = (all_cos if signed else all_cos.abs()).max(dim=1).values.cpu()
    return RecoveryMetrics(
        mcc=(w * matched).sum().item(),
        mean_max_cosine=(w * best).sum().item(),
        fraction_recovered=(w * (matched >= threshold).double()).sum().item(),
        matched_cosine=matched,
        best_cosine=best,
        threshold=threshold,
    )
