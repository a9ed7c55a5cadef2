"""Archetypal / Relaxed Archetypal SAE (A-SAE / RA-SAE): atoms in the relaxed convex hull of data
centroids, with a TopK encoder.

Fel, Lubana et al. 2025, "Archetypal SAE: Adaptive and Stable Dictionary Learning for Concept
Extraction in Large Vision Models" (ICML 2025, arXiv 2502.12892); repo KempnerInstitute/overcomplete
(``RelaxedArchetypalDictionary``, ``RATopKSAE``).

    D = (W C + Λ) · exp(m),   C ∈ ℝ^{n'×d} frozen centroids, W ∈ ℝ^{n×n'} row-stochastic, ‖Λ_i‖ ≤ δ
    after each step (no grad): W ← ReLU(W); W ← W / (W.sum(row) + 1e-8); Λ_i ← Λ_i · min(1, δ/‖Λ_i‖)

Init W = eye(n, n') (atom i starts at centroid i), Λ = 0, m = 0; δ = 0 gives A-SAE. Requires n' ≥ n
(rows of eye beyond n' would stay dead). Centroids: K-means on the first training batch, or
``set_centroids``. Checks: W row (0.5, −0.2, 0.7) → (0.416667, 0, 0.583333); Λ row (3, 4), δ = 1 →
(0.6, 0.8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.topk import TopKConfig, TopKSAE

__all__ = ["ArchetypalConfig", "ArchetypalSAE", "project_archetypal", "kmeans"]


@dataclass(frozen=True, kw_only=True)
class ArchetypalConfig(TopKConfig):
    """A relaxed archetypal TopK SAE (RA-SAE). Loss: sum over d, mean over tokens."""

    n_centroids: int | None = None
    """Number of centroids n' (None: d_sae); must be >= d_sae."""
    delta: float = 1.0
    """Relaxation radius δ of each atom around the hull (0: A-SAE)."""
    kmeans_iters: int = 20
    """Lloyd iterations of the centroid K-means."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_centroids is not None and self.n_centroids < self.d_sae:
            raise ConfigError(f"n_centroids={self.n_centroids} < d_sae={self.d_sae}: atoms beyond it stay dead")
        if self.delta < 0:
            raise ConfigError(f"delta must be >= 0, got {self.delta}")


@torch.no_grad()
def project_archetypal(W: Tensor, Lam: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """Project W onto row-stochastic matrices (ReLU, row-normalise) and clip each Λ row to norm δ."""
    W = W.relu()
    W = W / (W.sum(-1, keepdim=True) + 1e-8)
    norms = Lam.norm(dim=-1, keepdim=True)
    Lam = Lam * torch.clamp(delta / (norms + 1e-12), max=1.0)
    return W, Lam


@torch.no_grad()
def kmeans(x: Tensor, k: int, *, iters: int, generator: torch.Generator) -> Tensor:
    """Plain Lloyd K-means (init: k distinct random points); empty clusters keep their centre."""
    if x.shape[0] < k:
        raise ValueError(f"K-means needs at least {k} points for {k} centroids, got {x.shape[0]}; "
                         "use a larger first batch or call set_centroids()")
    c = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c


class ArchetypalSAE(TopKSAE):
    """RA-SAE: a TopK encoder with the dictionary D = (W C + Λ)·exp(m) as decoder."""

    architecture = "archetypal"
    config_cls = ArchetypalConfig
    constrained_decoder = False
    cfg: ArchetypalConfig

    def __init__(self, cfg: ArchetypalConfig) -> None:
        super().__init__(cfg)
        n, d = cfg.d_sae, cfg.d_in
        n_c = cfg.n_centroids or n
        del self.W_dec
        self.register_buffer("centroids", torch.zeros(n_c, d))
        self.register_buffer("has_centroids", torch.tensor(False))
        self.W_arch = nn.Parameter(torch.eye(n, n_c))
        self.Lam = nn.Parameter(torch.zeros(n, d))
        self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        return (self.W_arch @ self.centroids + self.Lam) * self.log_scale.exp()

    @torch.no_grad()
    def set_centroids(self, c: Tensor) -> None:
        """Set the frozen centroids C ``[n', d]`` and re-tie W_enc = Dᵀ."""
        if tuple(c.shape) != tuple(self.centroids.shape):
            raise ValueError(f"centroids must have shape {tuple(self.centroids.shape)}, got {tuple(c.shape)}")
        self.centroids.copy_(c)
        self.has_centroids.fill_(True)
        self.W_enc.copy_(self.W_dec.t() / (self.W_dec.norm(dim=-1) + 1e-8))

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, target: Tensor | None = None) -> None:
        super().init_from_batch(x, target)
        if not bool(self.has_centroids):
            g = torch.Generator().manual_seed(self.cfg.seed)
            self.set_centroids(kmeans(x.float(), self.centroids.shape[0], iters=self.cfg.kmeans_iters, generator=g))

    @torch.no_grad()
    def after_step(self) -> None:
        W, Lam = project_archetypal(self.W_arch, self.Lam, self.cfg.delta)
        self.W_arch.copy_(W)
        self.Lam.copy_(Lam)

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        self.W_enc.mul_(s)
        self.b_dec.div_(s)
        self.centroids.div_(s)
        self.Lam.div_(s)
