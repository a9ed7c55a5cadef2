"""The ReLU-output toy model of superposition and its training on sparse features.

Elhage, Hume, Olsson, Schiefer, Henighan, Kravec, Hatfield-Dodds, Lasenby, Drain, Chen, Grosse,
McCandlish, Kaplan, Amodei, Wattenberg, Olah 2022, "Toy Models of Superposition"
(transformer-circuits.pub/2022/toy_model). n features x ∈ [0, 1]ⁿ are squeezed into m < n
dimensions and read back::

    h = W x ∈ ℝᵐ,   x̂ = ReLU(Wᵀ h + b),   W ∈ ℝ^{m×n},   loss = E_x Σ_i I_i (x_i − x̂_i)²

with importance I_i = r^i (i = 0..n−1). Each x_i is 0 with probability S (the sparsity), else
U[0, 1]; the data come from :class:`assay.worlds.superposition.SuperpositionWorld` (its true
coefficients ``acts``, constant firing probability 1 − S).

Readouts: ``‖W_i‖`` (column i; the paper counts feature i as represented when it is near 1; this
module uses ``‖W_i‖ > 0.5``) and the feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)².
The paper's phenomenon: at S = 0 only the m most important features are represented (orthogonally);
as S → 1 more than m features are represented, in superposition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from assay.config import ConfigError
from assay.worlds.base import make_generator
from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

__all__ = ["ToySuperpositionConfig", "ToySuperposition", "fit_toy_superposition", "feature_dimensionality",
           "n_represented"]


@dataclass(frozen=True, kw_only=True)
class ToySuperpositionConfig:
    """A toy model of superposition and how it is trained."""

    n_features: int = 20
    """Number of input features n."""
    d_hidden: int = 5
    """Hidden width m (m < n for superposition)."""
    sparsity: float = 0.0
    """Probability S that a feature is 0 in a sample (0 ≤ S < 1)."""
    importance_decay: float = 0.7
    """r in the importance I_i = r^i."""
    steps: int = 3000
    """Adam updates."""
    batch_size: int = 1024
    """Samples per update."""
    lr: float = 1e-2
    """Adam learning rate (constant)."""
    seed: int = 0
    """Seed of the initial weights (Xavier-normal W, b = 0) and of the data stream."""

    def __post_init__(self) -> None:
        for name in ("n_features", "d_hidden", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ToySuperpositionConfig.{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"ToySuperpositionConfig.sparsity must lie in [0, 1) (S = 1 means every feature is "
                              f"always 0: nothing to learn), got {self.sparsity}")
        if not 0.0 < self.importance_decay <= 1.0:
            raise ConfigError(f"ToySuperpositionConfig.importance_decay must lie in (0, 1], got {self.importance_decay}")
        if not self.lr > 0:
            raise ConfigError(f"ToySuperpositionConfig.lr must be > 0, got {self.lr}")


class ToySuperposition(nn.Module):
    """x → ReLU(WᵀWx + b): weights ``W`` [d_hidden, n_features], bias ``b`` [n_features]."""

    def __init__(self, n_features: int, d_hidden: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        W = torch.empty(d_hidden, n_features)
        nn.init.xavier_normal_(W, generator=generator)
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(torch.zeros(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x̂ = ReLU(Wᵀ W x + b) of features ``x`` [batch, n_features]."""
        return torch.relu((x @ self.W.T) @ self.W + self.b)


def fit_toy_superposition(cfg: ToySuperpositionConfig) -> ToySuperposition:
    """Train a :class:`ToySuperposition` on the superposition world's sparse features (module docstring)."""
    n = cfg.n_features
    # the model reads the true coefficients, so the world's embedding (d_model) plays no part: d_model = n
    world = SuperpositionWorld(SuperpositionConfig(n_features=n, d_model=n, profile="constant", p_max=1.0 - cfg.sparsity,
                                                   seed=cfg.seed))
    model = ToySuperposition(n, cfg.d_hidden, generator=make_generator(cfg.seed))
    importance = cfg.importance_decay ** torch.arange(n, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = make_generator(cfg.seed + 1)
    for _ in range(cfg.steps):
        x = world.sample(cfg.batch_size, generator=g).labels["acts"]
        loss = (importance * (x - model(x)) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² for the columns W_i of ``W`` [m, n] → [n] (0 for a zero column)."""
    norms = W.norm(dim=0)
    unit = W / norms.clamp_min(1e-12)
    overlap = ((unit.T @ W) ** 2).sum(1)
    return torch.where(norms > 1e-12, norms**2 / overlap.clamp_min(1e-30), torch.zeros_like(norms))


def n_represented(W: torch.Tensor, threshold: float = 0.5) -> int:
    """Number of features whose column norm ‖W_i‖ exceeds ``threshold``."""
    return int((W.norm(dim=0) > threshold).sum())
