"""Uses of a score matrix: proponents/opponents, mislabel ranking, dataset pruning.

Scores follow the library sign convention (S[i, t] > 0: training point i helps target t).
- Proponents/opponents (Pruthi et al. 2020): the top/bottom-k rows of S[:, t].
- Mislabel detection (Koh & Liang 2017; Pruthi et al. 2020): self-influence S[i, i] — a point whose
  own loss depends most on itself is suspicious; higher = more likely mislabelled.
- Pruning: drop the training points with the lowest total attribution to a validation set
  Σ_t S[i, t] (those that help least or hurt), as in Yang et al. 2023, "Dataset Pruning: Reducing
  Training Data by Examining Generalization Influence".
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Ranked", "proponents", "opponents", "self_influence_ranking", "prune_by_attribution"]


class Ranked(NamedTuple):
    """Training indices ranked per target."""

    indices: torch.Tensor
    """``[m, k]`` training indices, best first."""
    scores: torch.Tensor
    """``[m, k]`` their scores."""


def _topk(scores: torch.Tensor, k: int, largest: bool) -> Ranked:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [n_train, n_targets], got {tuple(scores.shape)}")
    if not 1 <= k <= scores.shape[0]:
        raise ValueError(f"k must be in 1..{scores.shape[0]}, got {k}")
    vals, idx = scores.T.topk(k, dim=1, largest=largest)
    return Ranked(idx, vals)


def proponents(scores: torch.Tensor, k: int = 5) -> Ranked:
    """The k training points that help each target most (largest S[:, t])."""
    return _topk(scores, k, True)


def opponents(scores: torch.Tensor, k: int = 5) -> Ranked:
    """The k training points that hurt each target most (smallest S[:, t])."""
    return _topk(scores, k, False)


def self_influence_ranking(self_scores: torch.Tensor) -> torch.Tensor:
    """Training indices ordered most-suspicious first (descending self-influence S[i, i])."""
    return torch.argsort(self_scores, descending=True)


def prune_by_attribution(scores: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """Indices of the training points to keep: the ``keep_fraction`` with the largest Σ_t S[i, t]."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    total = scores.sum(1)
    n_keep = max(1, round(keep_fraction * scores.shape[0]))
    return torch.sort(torch.argsort(total, descending=True)[:n_keep]).values
