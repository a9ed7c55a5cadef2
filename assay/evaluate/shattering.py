"""Representation shattering: how much an edit distorts the geometry of entity representations.

Nishi, Ramesh, Okawa, Khona, Tanaka, Lubana 2025, "Representation Shattering in Transformers: A
Synthetic Study with Knowledge Editing" (ICML 2025, arXiv 2410.17194). With h_e the representation of
entity e (averaged over the same contexts before and after the edit) and D the matrix of pairwise
Euclidean distances ‖h_i − h_j‖ of the entities::

    R(D*) = ‖D* − D∅‖_F / ‖D∅‖_F          (D∅ before the edit, D* after)

Options (spec §5.3): ``keep`` restricts both matrices to a subset of entities (the "far" entities, with
the edited one and its ring neighbours removed, shows the distortion is non-local); ``scale_free``
divides each D by its mean off-diagonal entry first, so a global rescaling of the representations
counts as no shattering. Check: 4 entities at (±1, 0), (0, ±1), entity (1, 0) moved to the origin →
R = 0.289735; unchanged → 0.

:func:`ring_score` says how well a set of representations lies on a known cycle: the circular rank
correlation between each entity's index on the cycle and its angle in the plane of the top two
principal components (assay's choice: the mean resultant length of the rank-angle differences, folded
over both orientations; 1 for a perfect ring in either direction, ≈ 1/√N for a scrambled one).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["pairwise_distances", "shattering", "ring_score"]


def pairwise_distances(H: Tensor) -> Tensor:
    """Euclidean distances [N, N] (float64) between the rows of ``H`` [N, d]."""
    if H.ndim != 2:
        raise ValueError(f"representations must be [N, d], got shape {tuple(H.shape)}")
    H = H.double()
    sq = (H * H).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * H @ H.T).clamp_min(0)
    d2.fill_diagonal_(0)
    return d2.sqrt()


def shattering(before: Tensor, after: Tensor, *, keep: Tensor | None = None, scale_free: bool = False) -> float:
    """R(D*) = ‖D* − D∅‖_F / ‖D∅‖_F between representations ``before`` and ``after`` [N, d] of the same entities.

    ``keep`` (bool [N] or indices) restricts both to a subset of entities; ``scale_free`` divides each
    distance matrix by its mean off-diagonal entry first."""
    if before.shape != after.shape:
        raise ValueError(f"before and after must hold the same entities: shapes {tuple(before.shape)} and "
                         f"{tuple(after.shape)} differ")
    if keep is not None:
        before, after = before[keep], after[keep]
    if before.shape[0] < 2:
        raise ValueError(f"shattering needs at least 2 entities, got {before.shape[0]}")
    D0, D1 = pairwise_distances(before), pairwise_distances(after)
    if scale_free:
        n = D0.shape[0]
        D0, D1 = D0 / (D0.sum() / (n * (n - 1))), D1 / (D1.sum() / (n * (n - 1))).clamp_min(1e-300)
    norm = torch.linalg.matrix_norm(D0)
    if norm == 0:
        raise ValueError("the representations before the edit are all identical (D∅ = 0): R is undefined")
    return float(torch.linalg.matrix_norm(D1 - D0) / norm)


def ring_score(H: Tensor, cycle_index: Tensor) -> float:
    """Circular rank correlation in [0, 1] between ``cycle_index`` [N] (each entity's index on its ring) and
    the angle of ``H`` [N, d] in its top-2 principal-component plane.

    Both circular variables are replaced by their ranks turned into angles 2π·rank/N; the statistic is
    |ρ⁺| or |ρ⁻| (whichever is larger) with ρ^± the mean resultant length of exp(i(θ ∓ φ)): 1 when the
    angle increases monotonically around the cycle (clockwise or anticlockwise), ≈ 1/√N for random order."""
    if H.ndim != 2 or H.shape[0] != len(cycle_index) or H.shape[0] < 3:
        raise ValueError(f"need H [N, d] with N >= 3 and one cycle index per row, got {tuple(H.shape)} and "
                         f"{len(cycle_index)} indices")
    X = H.double() - H.double().mean(0)
    _, _, V = torch.linalg.svd(X, full_matrices=False)
    pcs = X @ V[:2].T if V.shape[0] >= 2 else torch.cat([X @ V[:1].T, torch.zeros(len(X), 1, dtype=X.dtype)], 1)
    angle = torch.atan2(pcs[:, 1], pcs[:, 0])
    n = len(angle)
    phi = 2 * math.pi * angle.argsort().argsort().double() / n
    theta = 2 * math.pi * torch.as_tensor(cycle_index).argsort().argsort().double() / n
    plus = torch.polar(torch.ones(n, dtype=torch.float64), theta - phi).mean().abs()
    minus = torch.polar(torch.ones(n, dtype=torch.float64), theta + phi).mean().abs()
    return float(torch.maximum(plus, minus))
