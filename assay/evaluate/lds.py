"""Linear datamodeling score (LDS): do attribution scores predict retraining outcomes?

Park, Georgiev, Ilyas, Leclerc & Madry 2023, "TRAK: Attributing Model Behavior at Scale". For
subsets S_1..S_M of the training set and target values v_j(t) of models retrained on S_j (−loss, so
larger = better, matching the attribution sign convention), the predicted value is
u_j(t) = Σ_{i∈S_j} S[i, t] and

    LDS(t) = Spearman_j(u_j(t), v_j(t)),   LDS = mean_t LDS(t).

Group LDS (Ley et al. 2024, GGDA) is the same with subsets formed as unions of groups and one score
per group. This module never imports a method: it takes score matrices and retraining results.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["LDSResult", "spearman", "lds", "expand_group_masks"]


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


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along dim 0 (ties share their mean rank)."""
    n = x.shape[0]
    order = torch.argsort(x, dim=0, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ar = torch.arange(n, dtype=torch.float64)[:, None].expand(n, x.shape[1]).contiguous()
    ranks.scatter_(0, order, ar)
    # average ties column by column
    for c in range(x.shape[1]):
        col = x[:, c]
        vals, inv, counts = torch.unique(col, return_inverse=True, return_counts=True)
        if counts.max() > 1:
            sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inv, ranks[:, c])
            ranks[:, c] = (sums / counts)[inv]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Column-wise Spearman correlation of ``a, b [M, m]`` → ``[m]``."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"need two [M, m] matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = _rank(a.double()), _rank(b.double())
    ra = ra - ra.mean(0)
    rb = rb - rb.mean(0)
    den = (ra.norm(dim=0) * rb.norm(dim=0))
    out = (ra * rb).sum(0) / den
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


def lds(scores: torch.Tensor, masks: torch.Tensor, values: torch.Tensor) -> LDSResult:
    """LDS of ``scores [n, m]`` against retraining ground truth: ``masks [M, n]`` (bool) and ``values [M, m]``."""
    if scores.dim() != 2 or masks.dim() != 2 or values.dim() != 2:
        raise ValueError("scores [n, m], masks [M, n] and values [M, m] must all be matrices")
    if masks.shape[1] != scores.shape[0] or values.shape != (masks.shape[0], scores.shape[1]):
        raise ValueError(
            f"shapes disagree: scores {tuple(scores.shape)}, masks {tuple(masks.shape)}, values {tuple(values.shape)}"
        )
    pred = masks.double() @ scores.double()
    per = spearman(pred, values.double())
    ok = per[~per.isnan()]
    m = ok.numel()
    mean = float(ok.mean()) if m else float("nan")
    half = 1.96 * float(ok.std()) / math.sqrt(m) if m > 1 else float("nan")
    return LDSResult(mean, mean - half, mean + half, per)


def expand_group_masks(group_masks: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Point masks ``[M, n]`` from group masks ``[M, K]``: a point is in a subset iff its group is."""
    return group_masks[:, groups]
