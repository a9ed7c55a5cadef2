"""Dirichlet energy of node representations on a graph, defined once.

Park, Lee, Lubana, Yang, Okawa, Nishi, Wattenberg, Tanaka 2025, "ICLR: In-Context Learning of
Representations" (ICLR 2025, arXiv 2501.00070): as context grows, token representations reorganise
towards the context's graph and their Dirichlet energy falls. With adjacency A (symmetric) and
Laplacian L = D − A, for node vectors X [N, d]::

    E_G(X) = Σ_{i,j} A_ij ‖x_i − x_j‖² = 2 tr(Xᵀ L X)          (each edge counted twice)
    Ê_G(X) = tr(X̃ᵀ L X̃) / tr(X̃ᵀ X̃),   X̃ = X − mean            (scale-free, in [λ₂, λ_max])

E is minimised by collapsing every x_i to one point, so Ê is the default (assay's choice;
the paper's normalisation is unverified). Check values: 3-node path, x = (0, 1, 3): E = 10,
Ê = 1.071429; the 4×4 grid's true coordinates: Ê = 0.6; isotropic random vectors: E[Ê] ≈ tr L / (N − 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["laplacian", "dirichlet_energy", "normalized_dirichlet_energy", "mixed_random_energy"]


def laplacian(adjacency: Tensor) -> Tensor:
    """L = D − A of a symmetric adjacency [N, N] (float64)."""
    A = adjacency.double()
    if A.ndim != 2 or A.shape[0] != A.shape[1] or not torch.allclose(A, A.T):
        raise ValueError(f"adjacency must be a symmetric [N, N] matrix, got shape {tuple(A.shape)}")
    return torch.diag(A.sum(1)) - A


def _check(X: Tensor, adjacency: Tensor) -> None:
    if X.ndim != 2 or X.shape[0] != adjacency.shape[0]:
        raise ValueError(f"X must be [N, d] with N = {adjacency.shape[0]} nodes, got shape {tuple(X.shape)}")


def dirichlet_energy(X: Tensor, adjacency: Tensor) -> float:
    """E_G(X) = Σ_ij A_ij ‖x_i − x_j‖² for node vectors ``X`` [N, d]."""
    _check(X, adjacency)
    X = X.double()
    return float(2 * torch.trace(X.T @ laplacian(adjacency) @ X))


def normalized_dirichlet_energy(X: Tensor, adjacency: Tensor) -> float:
    """Ê_G(X) = tr(X̃ᵀ L X̃) / tr(X̃ᵀ X̃) with X̃ the centred ``X`` [N, d]; NaN when every x_i is equal."""
    _check(X, adjacency)
    Xc = X.double() - X.double().mean(0)
    denom = float((Xc**2).sum())
    return float(torch.trace(Xc.T @ laplacian(adjacency) @ Xc)) / denom if denom > 0 else float("nan")


def mixed_random_energy(mixing: Tensor, adjacency: Tensor) -> float:
    """The limit (d → ∞) of Ê_G(M U) for U [N, d] with i.i.d. isotropic rows and ``mixing`` M [N, N]:
    tr(Mᵀ C L C M) / tr(Mᵀ C M) with C = I − 11ᵀ/N the centring; NaN when C M = 0."""
    _check(mixing, adjacency)
    if mixing.shape[1] != mixing.shape[0]:
        raise ValueError(f"mixing must be a square [N, N] matrix, got shape {tuple(mixing.shape)}")
    N = adjacency.shape[0]
    X = (torch.eye(N, dtype=torch.float64) - 1.0 / N) @ mixing.double()
    denom = float((X**2).sum())
    return float(torch.trace(X.T @ laplacian(adjacency) @ X)) / denom if denom > 0 else float("nan")
