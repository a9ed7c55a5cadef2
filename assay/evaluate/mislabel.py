"""Mislabel detection: area under the ROC curve of suspicion scores against planted label noise.

Koh & Liang 2017; Pruthi et al. 2020: rank training points by self-influence and check the flipped
ones first. AUROC = P(score of a random noisy point > score of a random clean point), ties counting
½ (the Mann–Whitney U statistic over n_noisy · n_clean). This module never imports a method.
"""

from __future__ import annotations

import torch

__all__ = ["auroc", "plant_label_noise"]


def auroc(scores: torch.Tensor, is_positive: torch.Tensor) -> float:
    """AUROC of ``scores [n]`` (higher = more suspicious) against bool ``is_positive [n]``."""
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    pos = torch.as_tensor(is_positive).reshape(-1).bool()
    if scores.shape != pos.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(pos.shape)} differ in shape")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative example")
    vals, inv = torch.unique(scores, return_inverse=True)
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inv, ranks)
    counts = torch.bincount(inv, minlength=len(vals)).double()
    ranks = (sums / counts)[inv]
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def plant_label_noise(
    targets: torch.Tensor, fraction: float, n_classes: int, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip a random ``fraction`` of labels to a different random class; return (noisy targets, flip mask)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"noise fraction must be strictly between 0 and 1, got {fraction}")
    n = targets.shape[0]
    flip = torch.zeros(n, dtype=torch.bool)
    flip[torch.randperm(n, generator=generator)[: max(1, round(fraction * n))]] = True
    shift = torch.randint(1, n_classes, (n,), generator=generator)
    noisy = torch.where(flip, (targets + shift) % n_classes, targets)
    return noisy, flip
