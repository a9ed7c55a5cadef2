"""Tabular signal world: Gaussian clusters where only masked features carry the label.

Agarwal, Krishna, Saxena, Pawelczyk, Johnson, Puri, Zitnik & Lakkaraju 2022, "OpenXAI: Towards a
Transparent Evaluation of Model Explanations" — the synthetic Gaussian DGP
(`openxai/dgp_synthetic.py::generate_gaussians`) [code: AI4LIFE-GROUP/OpenXAI].

Each of ``n_clusters`` clusters c has a centre μ_c (at distance ``centre_distance`` from the origin)
and a Bernoulli(1 − sparsity) feature mask m_c; one weight vector w ~ U(−1, 1)^d is shared. A point
of cluster c is x ~ N(μ_c, I) with label

    y = 1[σ(x · (m_c ⊙ w)) > τ],

τ being the median score (a 50/50 split). Ground truth per point: ``gt_attribution`` = m_c ⊙ w,
``signal_mask`` = m_c, and the cluster id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch, make_generator

__all__ = ["TabularConfig", "TabularSignalWorld"]


@dataclass(frozen=True, kw_only=True)
class TabularConfig:
    """OpenXAI-style Gaussian clusters with sparse signal features."""

    d: int = 20
    """Number of features."""
    n_clusters: int = 20
    """Number of Gaussian clusters (OpenXAI uses 100)."""
    centre_distance: float = 5.0
    """Distance of each cluster centre from the origin."""
    sparsity: float = 0.5
    """Probability that a feature is masked out (carries no signal) in a cluster."""
    seed: int = 567
    """Seed of the static structure: centres, masks, weights and the threshold τ."""

    def __post_init__(self) -> None:
        if self.d <= 0 or self.n_clusters <= 0:
            raise ConfigError(f"d and n_clusters must be positive, got d={self.d}, n_clusters={self.n_clusters}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.centre_distance < 0:
            raise ConfigError(f"centre_distance must be >= 0, got {self.centre_distance}")


class TabularSignalWorld:
    """Samples labelled points with their true per-feature attributions."""

    def __init__(self, config: TabularConfig | None = None) -> None:
        self.config = cfg = config or TabularConfig()
        g = make_generator(cfg.seed)
        dirs = torch.randn(cfg.n_clusters, cfg.d, generator=g)
        self.centres = cfg.centre_distance * dirs / dirs.norm(dim=1, keepdim=True)
        """Cluster centres ``[n_clusters, d]``."""
        masks = torch.rand(cfg.n_clusters, cfg.d, generator=g) >= cfg.sparsity
        empty = ~masks.any(dim=1)  # every cluster keeps at least one signal feature
        masks[empty, torch.randint(0, cfg.d, (int(empty.sum()),), generator=g)] = True
        self.masks = masks
        """Signal-feature masks ``[n_clusters, d]``."""
        self.weights = torch.rand(cfg.d, generator=g) * 2 - 1
        """Shared weights w ``[d]``."""
        reference = self._draw(20_000, g)
        self.threshold = float(torch.sigmoid(self._logit(*reference)).median())
        """τ: the median score, so classes are balanced."""

    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cluster = torch.randint(0, self.config.n_clusters, (n,), generator=generator)
        x = self.centres[cluster] + torch.randn(n, self.config.d, generator=generator)
        return x, cluster

    def _logit(self, x: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        return (x * self.masks[cluster] * self.weights).sum(dim=1)

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """Draw ``n`` points; ``targets`` are 0/1 labels."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        x, cluster = self._draw(n, generator)
        y = (torch.sigmoid(self._logit(x, cluster)) > self.threshold).long()
        mask = self.masks[cluster]
        return Batch(
            inputs=x,
            targets=y,
            labels={"gt_attribution": mask * self.weights, "signal_mask": mask, "cluster": cluster},
        )
