"""Mislabel detection: plant label noise whose flipped points a data-attribution method should find.

Koh & Liang 2017; Pruthi et al. 2020: rank training points by self-influence and check the flipped
ones first. The score is the AUROC of the suspicion scores against the flip mask,
P(score of a random noisy point > score of a random clean point) with ties counting ½
(:func:`assay.stats.auroc`). This module never imports a method.
"""

from __future__ import annotations

import torch

__all__ = ["plant_label_noise"]


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
