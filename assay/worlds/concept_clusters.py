"""Concept-geometry clusters: Gaussian concepts whose geometry ReLU/TopK receptive fields cannot carve out.

Hindupur, Lubana, Fel & Ba 2025, "Projecting Assumptions: The Duality Between Sparse Autoencoders and
Concept Geometry" (NeurIPS 2025, arXiv 2503.01822); repo Sai-Sumedh/SaeConceptDuality-SpaDE. Each concept
is one Gaussian cluster, drawn with equal probability; the label is the cluster id.

- ``separability`` (ℝ²): 6 clusters with centres r_i (cos 2πi/6, sin 2πi/6), radii r = (3, 1, 3, 1, 3, 1)/2,
  isotropic variance 2^{−4.5}/2 + 1e-6. The three radius-½ clusters lie inside the triangle spanned by
  the three radius-3/2 centres (its inradius is ¾ > ½), so no half-space — a ReLU latent's receptive
  field — holds an inner cluster without also holding part of an outer one's direction; a distance-based
  encoder (SpaDE) can isolate each.
- ``heterogeneity`` (ℝ¹²⁸): 5 clusters of intrinsic dimension 6, 14, 30, 62, 126: cluster k varies only
  on its first dim_k coordinates, each with variance (1/50)/dim_k (so every cluster has total variance
  1/50); centres (300·(1/50)/128)·U[0, 1]¹²⁸ drawn from the structure seed.

With ``standardise`` (the paper's preprocessing) x is centred by the exact population mean and scaled so
E‖x‖² = d, both computed in closed form from the centres and variances (the paper uses the training
set's statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch, make_generator

__all__ = ["ConceptClustersConfig", "ConceptClustersWorld", "GEOMETRIES"]

GEOMETRIES = ("separability", "heterogeneity")
"""The cluster geometries of the paper's two synthetic experiments."""

HETERO_DIMS = (6, 14, 30, 62, 126)
"""Intrinsic dimensions of the heterogeneity clusters."""
HETERO_D = 128
"""Ambient dimension of the heterogeneity world."""


@dataclass(frozen=True, kw_only=True)
class ConceptClustersConfig:
    """Which cluster geometry, and how its data are presented."""

    geometry: str = "separability"
    """``separability`` (6 clusters in ℝ², three inside the others' hull) or ``heterogeneity`` (5 clusters
    in ℝ¹²⁸ of intrinsic dimensions 6 to 126)."""
    standardise: bool = True
    """Centre by the population mean and scale to E‖x‖² = d (the paper's preprocessing)."""
    seed: int = 0
    """Seed of the static structure (the heterogeneity centres; the separability centres are fixed)."""

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")


class ConceptClustersWorld:
    """Samples x with ``targets`` = ``labels["cluster"]`` = the cluster id; static ``centres`` and ``stds``."""

    def __init__(self, config: ConceptClustersConfig) -> None:
        self.config = config
        if config.geometry == "separability":
            k = torch.arange(6, dtype=torch.float64)
            radii = torch.tensor([3.0, 1.0, 3.0, 1.0, 3.0, 1.0], dtype=torch.float64) / 2
            angle = 2 * math.pi * k / 6
            centres = radii[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
            stds = torch.full((6, 2), math.sqrt(2**-4.5 / 2 + 1e-6), dtype=torch.float64)
        else:
            g = make_generator(config.seed)
            centres = (300 * (1 / 50) / HETERO_D) * torch.rand(len(HETERO_DIMS), HETERO_D, generator=g,
                                                               dtype=torch.float64)
            stds = torch.zeros(len(HETERO_DIMS), HETERO_D, dtype=torch.float64)
            for i, dim in enumerate(HETERO_DIMS):
                stds[i, :dim] = math.sqrt((1 / 50) / dim)
        mean = centres.mean(0)
        second = ((centres - mean).pow(2).sum(1) + stds.pow(2).sum(1)).mean()  # E‖x − μ‖², equal weights
        shift, scale = (mean, math.sqrt(centres.shape[1] / second.item())) if config.standardise else (0.0, 1.0)
        self.centres = ((centres - shift) * scale).float()
        """Cluster centres in the presented coordinates ``[K, d]``."""
        self.stds = (stds * scale).float()
        """Per-coordinate standard deviation of each cluster ``[K, d]`` (0 outside its intrinsic subspace)."""
        self.intrinsic_dims = tuple(int(d) for d in (self.stds > 0).sum(1).tolist())
        """Intrinsic dimension of each cluster."""

    @property
    def d(self) -> int:
        """Ambient dimension."""
        return self.centres.shape[1]

    @property
    def n_clusters(self) -> int:
        """Number of clusters (= concepts)."""
        return self.centres.shape[0]

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        k = torch.randint(0, self.n_clusters, (n,), generator=generator)
        x = self.centres[k] + self.stds[k] * torch.randn(n, self.d, generator=generator)
        return Batch(inputs=x, targets=k, labels={"cluster": k})
