"""Geometry and stability of a dictionary D ``[k, d]`` (rows are atoms), defined once.

After Fel, Lubana et al. 2025, "Archetypal SAE" (arXiv 2502.12892), §4 metrics; coherence and the
Babel function after Tropp 2004, "Greed is Good". Atoms are unit-normalised before every cosine; the
two ranks are taken of D as it is (an RA-SAE's atoms are convex combinations of data points, not unit
vectors, and their norms are part of the dictionary's spectrum).

    stability S(D, D′) = (1/m) max_Π Σ_i |cos(D_i, D′_Π(i))|   (Hungarian, m = min(k, k′))
    (the paper's "signed permutations": a flipped atom matches; ``signed=True`` keeps the sign of cos)
    OOD score = 1 − (1/k) Σ_i max_j cos(D_i, A_j)   over real activations A
    stable rank = ‖D‖_F² / ‖D‖₂²;  effective rank = exp(−Σ p_i log p_i), p = σ/Σσ
    coherence = max_{i≠j} |D_i·D_j|;  Babel μ₁(r) = max_i (sum of the r largest |D_i·D_j|, j ≠ i)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["unit", "hungarian_match", "stability", "ood_score", "stable_rank", "effective_rank", "coherence",
           "babel"]


def unit(D: Tensor) -> Tensor:
    """Rows divided by their norm (zero rows stay zero)."""
    D = D.double()
    return D / D.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def hungarian_match(A: Tensor, B: Tensor, *, signed: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Match rows of A to rows of B maximising the total cosine.

    ``signed=True`` (default) maximises Σ cos, so a row and its negation are opposites (cos = −1):
    right for SAE atoms, whose sign is fixed by non-negative (ReLU) codes. ``signed=False`` maximises
    Σ |cos| (matching up to a sign flip, the A-SAE paper's "signed permutations").
    Returns ``(rows of A, rows of B, cosines of the pairs)`` — min(len A, len B) pairs; the returned
    cosines keep their sign either way.
    """
    from scipy.optimize import linear_sum_assignment

    cos = unit(A) @ unit(B).t()
    score = cos if signed else cos.abs()
    r, c = linear_sum_assignment((1 - score).cpu().numpy())
    r, c = torch.as_tensor(r), torch.as_tensor(c)
    return r, c, cos[r, c]


def stability(D1: Tensor, D2: Tensor, *, signed: bool = False) -> float:
    """Hungarian-matched mean |cos| (default, the A-SAE paper's convention) or mean signed cos
    (``signed=True``, a flipped atom counts −1) between two dictionaries.

    Check: D = I₃, D′ rows (0,−1,0), (0.6,0,0.8), (1,0,0) → 0.933333 with |cos|, 0.333333 signed.
    """
    _, _, c = hungarian_match(D1, D2, signed=signed)
    return (c if signed else c.abs()).mean().item()


def ood_score(D: Tensor, activations: Tensor) -> float:
    """1 − mean_i max_j cos(D_i, A_j); lower = atoms closer to real data. Check: A = I₂,
    D = {(1,0),(0.6,0.8)} → 0.1."""
    return 1.0 - (unit(D) @ unit(activations).t()).max(dim=1).values.mean().item()


def stable_rank(D: Tensor) -> float:
    """‖D‖_F² / ‖D‖₂² of D as given. Checks: {(1,0),(0.6,0.8),(0,1)} → 1.5; σ = (3, 1) → 1.111111."""
    s = torch.linalg.svdvals(D.double())
    return (s.pow(2).sum() / s[0].pow(2)).item()


def effective_rank(D: Tensor) -> float:
    """exp of the entropy of the normalised singular values of D as given (Roy & Vetterli 2007).
    Check: σ = (3, 1) → 1.754765."""
    s = torch.linalg.svdvals(D.double())
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()


def coherence(D: Tensor) -> float:
    """max_{i≠j} |cos(D_i, D_j)|."""
    g = (unit(D) @ unit(D).t()).abs()
    g.fill_diagonal_(0)
    return g.max().item()


def babel(D: Tensor, r: int) -> float:
    """Babel function μ₁(r): the largest sum of r absolute cosines between one atom and r others."""
    g = (unit(D) @ unit(D).t()).abs()
    g.fill_diagonal_(-1)
    return g.topk(r, dim=1).values.sum(1).max().item()
