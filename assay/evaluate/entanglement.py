"""Entanglement: how many ground-truth concepts a latent responds to, how many latents a concept spreads over.

The association of latent i with concept c is the Pearson correlation r_ic between the latent's code
and the concept's value (an indicator or a true coefficient) over N tokens; only positive responses
count, w_ic = max(r_ic, 0)². The spread of a row or column of w is its participation ratio

    PR(w) = (Σ_j w_j)² / Σ_j w_j²   (1 when one entry carries everything, J when J entries share it equally)

after Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of Disentangled
Representations" (disentanglement and completeness as 1 − normalised entropy; the participation
ratio is the same idea as an effective count). Per latent: ``concepts_per_latent`` = PR of its row;
per concept: ``latents_per_concept`` = PR of its column. Thresholded counts (#{r ≥ τ}) are reported
too. A perfect dictionary scores 1 and 1; a latent independent of every concept has r ≈ 0 and is
left out of the means (``responsive``: max_c r_ic ≥ τ).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from assay.evaluate.geometry import unit

__all__ = ["EntanglementMetrics", "association", "participation_ratio", "entanglement"]


def association(z: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of every latent ``z [N, n]`` with every concept ``y [N, C]``: ``[n, C]``
    (0 for a constant column)."""
    if z.ndim != 2 or y.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"codes [N, n] and concepts [N, C] must share N, got {tuple(z.shape)}, {tuple(y.shape)}")
    a = z.detach().double().cpu()
    b = y.detach().double().cpu()
    return unit((a - a.mean(0)).t()) @ unit((b - b.mean(0)).t()).t()


def participation_ratio(w: Tensor, dim: int) -> Tensor:
    """(Σ w)² / Σ w² along ``dim`` (NaN where all w are 0). Check: (1, 0, 0) → 1; (1, 1, 1, 1) → 4."""
    s, s2 = w.sum(dim), w.pow(2).sum(dim)
    return torch.where(s2 > 0, s.pow(2) / s2.clamp(min=1e-300), torch.full_like(s, float("nan")))


class EntanglementMetrics(NamedTuple):
    """Entanglement between latents and ground-truth concepts."""

    association: Tensor
    """Pearson correlations ``[n, C]``."""
    concepts_per_latent: Tensor
    """Per latent: participation ratio of its positive squared correlations ``[n]``."""
    latents_per_concept: Tensor
    """Per concept: participation ratio over latents ``[C]``."""
    responsive: Tensor
    """Per latent: max_c r_ic ≥ threshold ``[n]`` (bool)."""
    mean_concepts_per_latent: float
    """Mean concepts_per_latent over responsive latents (NaN if none)."""
    mean_latents_per_concept: float
    """Mean latents_per_concept over concepts (NaNs skipped)."""
    count_concepts_per_latent: float
    """Mean #{c : r_ic ≥ threshold} over responsive latents."""
    count_latents_per_concept: float
    """Mean #{i : r_ic ≥ threshold} over concepts."""


def entanglement(z: Tensor, y: Tensor, *, threshold: float = 0.2) -> EntanglementMetrics:
    """Entanglement of codes ``z [N, n]`` with concepts ``y [N, C]`` (module docstring)."""
    r = association(z, y)
    w = r.clamp(min=0).pow(2)
    cpl = participation_ratio(w, 1)
    lpc = participation_ratio(w, 0)
    resp = r.max(1).values >= threshold
    above = r >= threshold
    nan = float("nan")
    return EntanglementMetrics(
        r, cpl, lpc, resp,
        cpl[resp].mean().item() if resp.any() else nan,
        lpc.nanmean().item(),
        above[resp].sum(1).double().mean().item() if resp.any() else nan,
        above.sum(0).double().mean().item(),
    )
