"""Analytic-density worlds: a Gaussian mixture with its exact score, and data on a known subspace.

Design from ``worlds.md`` §12, for the off-manifold robustness and score-alignment checks of
Srinivas*, Bordt* & Lakkaraju 2023, "Which Models have Perceptually-Aligned Gradients? An
Explanation via Off-Manifold Robustness" (NeurIPS 2023), where the density, its score and the
tangent space must be known exactly.

Gaussian mixture: p(x) = Σ_k π_k N(x; μ_k, σ_k² I), class = component; the score is

    ∇log p(x) = Σ_k r_k(x)(μ_k − x)/σ_k²,   r_k(x) = π_k N(x; μ_k, σ_k²I)/p(x).

Subspace manifold: x = A s + ε, A ∈ ℝ^{d×r} orthonormal, s ∼ N(0, I_r), ε ∼ N(0, σ²I_d); tangent
space span(A) everywhere; x ∼ N(0, AAᵀ + σ²I), so ∇log p(x) = −(AAᵀ/(1 + σ²) + (I − AAᵀ)/σ²) x.
Class: the angular sector of (s₁, s₂) among ``n_classes`` equal sectors (r ≥ 2), or sign(s₁) when r = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch, make_generator

__all__ = ["GaussianMixtureConfig", "GaussianMixtureWorld", "SubspaceManifoldConfig", "SubspaceManifoldWorld"]


@dataclass(frozen=True, kw_only=True)
class GaussianMixtureConfig:
    """An isotropic Gaussian mixture in ℝ^d; each component is a class."""

    d: int = 8
    """Dimension of x."""
    n_components: int = 3
    """Number of components (= classes)."""
    separation: float = 3.0
    """Scale of the component means (means ∼ separation·N(0, I/d)·√d / √2, i.e. typical distance ≈ separation)."""
    std: float = 1.0
    """Standard deviation σ_k of every component."""
    seed: int = 0
    """Seed of the static structure (means)."""

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_components < 2:
            raise ConfigError(f"need d >= 1 and n_components >= 2, got {self.d}, {self.n_components}")
        if not self.std > 0 or self.separation < 0:
            raise ConfigError(f"need std > 0 and separation >= 0, got {self.std}, {self.separation}")


class GaussianMixtureWorld:
    """Samples x with class = component; labels ``score`` (exact ∇log p(x)) and ``log_density``."""

    def __init__(self, config: GaussianMixtureConfig) -> None:
        self.config = config
        g = make_generator(config.seed)
        self.means = config.separation / math.sqrt(2) * torch.randn(config.n_components, config.d, generator=g)
        """Component means μ_k ``[K, d]``."""
        self.weights = torch.full((config.n_components,), 1.0 / config.n_components)
        """Mixture weights π_k ``[K]``."""

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        s2 = self.config.std**2
        d = x.shape[1]
        sq = torch.cdist(x, self.means.to(x)).pow(2)
        return self.weights.to(x).log() - sq / (2 * s2) - 0.5 * d * math.log(2 * math.pi * s2)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) ``[n]``."""
        return torch.logsumexp(self._log_joint(x), 1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ∇_x log p(x) ``[n, d]``."""
        r = self._log_joint(x).softmax(1)  # responsibilities
        return (r @ self.means.to(x) - x) / self.config.std**2

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.means[k] + self.config.std * torch.randn(n, self.config.d, generator=generator)
        return Batch(inputs=x, targets=k, labels={"score": self.score(x), "log_density": self.log_density(x),
                                                  "component": k})


@dataclass(frozen=True, kw_only=True)
class SubspaceManifoldConfig:
    """Data near an r-dimensional linear subspace of ℝ^d, with a class rule on the latent s."""

    d: int = 16
    """Ambient dimension."""
    r: int = 2
    """Manifold (latent) dimension, r < d."""
    noise_std: float = 0.05
    """Off-manifold noise σ."""
    n_classes: int = 4
    """Number of classes (angular sectors of (s₁, s₂); 2 when r = 1)."""
    seed: int = 0
    """Seed of the static structure (the basis A)."""

    def __post_init__(self) -> None:
        if not 1 <= self.r < self.d:
            raise ConfigError(f"need 1 <= r < d, got r={self.r}, d={self.d}")
        if not self.noise_std > 0:
            raise ConfigError(f"noise_std must be > 0 (the density needs it), got {self.noise_std}")
        if self.n_classes < 2 or (self.r == 1 and self.n_classes != 2):
            raise ConfigError(f"n_classes must be >= 2 (exactly 2 when r = 1), got {self.n_classes}")


class SubspaceManifoldWorld:
    """x = A s + ε; labels ``latent`` (s), ``score`` (exact), and the static ``basis`` A (the tangent space)."""

    def __init__(self, config: SubspaceManifoldConfig) -> None:
        self.config = config
        g = make_generator(config.seed)
        q, _ = torch.linalg.qr(torch.randn(config.d, config.r, generator=g))
        self.basis = q
        """Orthonormal tangent basis A ``[d, r]``."""

    def tangent(self, x: torch.Tensor) -> torch.Tensor:
        """Tangent basis at each point ``[n, d, r]`` (the same subspace everywhere)."""
        return self.basis.to(x).expand(x.shape[0], -1, -1)

    def classify(self, s: torch.Tensor) -> torch.Tensor:
        """The class rule on latents ``s [n, r]``."""
        if self.config.r == 1:
            return (s[:, 0] > 0).long()
        angle = torch.atan2(s[:, 1], s[:, 0]) % (2 * math.pi)
        return (angle / (2 * math.pi / self.config.n_classes)).long().clamp(max=self.config.n_classes - 1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ∇log p(x) = −(AAᵀ/(1 + σ²) + (I − AAᵀ)/σ²) x ``[n, d]``."""
        A = self.basis.to(x)
        s2 = self.config.noise_std**2
        on = (x @ A) @ A.T
        return -(on / (1 + s2) + (x - on) / s2)

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        s = torch.randn(n, self.config.r, generator=generator)
        x = s @ self.basis.T + self.config.noise_std * torch.randn(n, self.config.d, generator=generator)
        return Batch(inputs=x, targets=self.classify(s), labels={"latent": s, "score": self.score(x)})
