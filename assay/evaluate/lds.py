"""Linear datamodeling score (LDS): do attribution scores predict retraining outcomes?

Park, Georgiev, Ilyas, Leclerc & Madry 2023, "TRAK: Attributing Model Behavior at Scale". For
subsets S_1..S_M of the training set and target values v_j(t) of models retrained on S_j (−loss, so
larger = better, matching the attribution sign convention), the predicted value is
u_j(t) = Σ_{i∈S_j} S[i, t] and

    LDS(t) = Spearman_j(u_j(t), v_j(t)),   LDS = mean_t LDS(t).

Group LDS (Ley et al. 2024, GGDA) is the same with subsets formed as unions of groups and one score
per group. The Spearman correlation is :func:`assay.stats.spearman`. This module never imports a
method: it takes score matrices and retraining results.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from assay.stats import spearman

__all__ = ["LDSResult", "lds", "expand_group_masks"]


class LDSResult(NamedTuple):
    """LDS over targets."""

    mean: float
    """Mean over targets of the per-target Spearman correlation."""
    ci_low: float
    """Lower end of a normal 95% interval over targets (mean − 1.96·sd/√m)."""
    ci_high: float
    """Upper end of that interval."""
    per_target: torch.Tensor
    """``[m]`` per-target Spearman correlations (NaN where a side is constant)."""


def lds(scores: torch.Tensor, masks: torch.Tensor, values: torch.Tensor) -> LDSResult:
    """LDS of ``scores [n, m]`` against retraining ground truth: ``masks [M, n]`` (bool) and ``values [M, m]``."""
    if scores.dim() != 2 or masks.dim() != 2 or values.dim() != 2:
        raise ValueError("scores [n, m], masks [M, n] and values [M, m] must all be matrices")
    if masks.shape[1] != scores.shape[0] or values.shape != (masks.shape[0], scores.shape[1]):
        raise ValueError(
            f"shapes disagree: scores {tuple(scores.shape)}, masks {tuple(masks.shape)}, values {tuple(values.shape)}"
        )
    pred = masks.double() @ scores.double()
    per = spearman(pred, values.double(), dim=0)
    ok = per[~per.isnan()]
    m = ok.numel()
    mean = float(ok.mean()) if m else float("nan")
    half = 1.96 * float(ok.std()) / math.sqrt(m) if m > 1 else float("nan")
    return LDSResult(mean, mean - half, mean + half, per)


def expand_group_masks(group_masks: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Point masks ``[M, n]`` from group masks ``[M, K]``: a point is in a subset iff its group is."""
    return group_masks[:, groups]
