"""Agreement of attributions with ground truth (or with each other), and localisation on masks.

OpenXAI's agreement metrics (Krishna, Han, Gu, Pombra, Jabbari, Wu & Lakkaraju 2022, "The
Disagreement Problem in Explainable Machine Learning"; Agarwal et al. 2022, "OpenXAI"), with T_k(·)
the top-k features by |value|:

    FA = |T_k(e) ∩ T_k(g)|/k                     RA  = fraction of the k ranks holding the same feature
    SA = |{i ∈ T_k(e) ∩ T_k(g): sign e_i = sign g_i}|/k   SRA = same feature and same sign per rank
    RC = Spearman correlation of |e| and |g|      PRA = fraction of feature pairs ordered alike by |e|, |g|

Localisation on a known signal mask (Arras, Osman & Samek 2022, "CLEVR-XAI" relevance mass; Zhang
et al. 2018 pointing game): the share of |attribution| inside the mask, against the mask's area; and,
for a binary mask, top-k precision (the share of the k most important features inside the mask: FA
with the mask as the ground-truth set — FA itself would take an arbitrary k of the mask's features), and
the mask IoU of DiET (Bhalla, Srinivas & Lakkaraju 2023, "Discriminative Feature Attributions", §6): the
intersection over union of the binarised attribution (its top k features, k = the mask's area by default)
with the true signal mask.
:func:`importance_map` turns an attribution into one non-negative importance per feature (Σ_c |φ_c|
per pixel of an image).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from assay.stats import spearman

__all__ = ["Agreement", "agreement", "rank_correlation", "importance_map", "relevance_mass", "pointing_game",
           "top_k_precision", "mask_iou"]


class Agreement(NamedTuple):
    """The six OpenXAI agreement scores, each ``[B]``."""

    fa: torch.Tensor
    """Feature agreement."""
    ra: torch.Tensor
    """Rank agreement."""
    sa: torch.Tensor
    """Sign agreement."""
    sra: torch.Tensor
    """Signed rank agreement."""
    rc: torch.Tensor
    """Rank correlation (Spearman of |e| and |g|; NaN where either is constant)."""
    pra: torch.Tensor
    """Pairwise rank agreement."""


def agreement(e: torch.Tensor, g: torch.Tensor, k: int) -> Agreement:
    """FA, RA, SA, SRA, RC, PRA between explanations ``e`` and ground truth ``g`` (``[B, ...]``)."""
    e, g = e.flatten(1).double(), g.flatten(1).double()
    if e.shape != g.shape:
        raise ValueError(f"explanations {tuple(e.shape)} and ground truth {tuple(g.shape)} differ in shape")
    d = e.shape[1]
    if not 1 <= k <= d:
        raise ValueError(f"k must lie in 1..{d}, got {k}")
    te = e.abs().argsort(dim=-1, descending=True, stable=True)[:, :k]
    tg = g.abs().argsort(dim=-1, descending=True, stable=True)[:, :k]
    in_e = torch.zeros_like(e, dtype=torch.bool).scatter_(1, te, True)
    in_g = torch.zeros_like(g, dtype=torch.bool).scatter_(1, tg, True)
    both = in_e & in_g
    same_sign = torch.sign(e) == torch.sign(g)
    fa = both.sum(1) / k
    sa = (both & same_sign).sum(1) / k
    same_rank = te == tg
    ra = same_rank.sum(1) / k
    sra = (same_rank & torch.gather(same_sign, 1, te)).sum(1) / k
    rc = rank_correlation(e, g)
    ae, ag = e.abs(), g.abs()
    iu = torch.triu_indices(d, d, 1)
    de = torch.sign(ae[:, iu[0]] - ae[:, iu[1]])
    dg = torch.sign(ag[:, iu[0]] - ag[:, iu[1]])
    pra = (de == dg).double().mean(1)
    return Agreement(fa.double(), ra.double(), sa.double(), sra.double(), rc, pra)


def rank_correlation(e: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """OpenXAI's RC: Spearman correlation of |e| and |g| over the features of each example (ties
    averaged; NaN where either is constant), ``[B]``."""
    e, g = e.flatten(1).double(), g.flatten(1).double()
    if e.shape != g.shape:
        raise ValueError(f"explanations {tuple(e.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return spearman(e.abs(), g.abs())


def importance_map(attributions: torch.Tensor) -> torch.Tensor:
    """One importance per feature: Σ_c |φ_c| for images ``[B, C, H, W]`` (a pixel map ``[B, H, W]``),
    |φ| for anything else (maps ``[B, H, W]``, tabular ``[B, d]``)."""
    return attributions.abs().sum(1) if attributions.dim() == 4 else attributions.abs()


def _localisation_map(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    a = attributions.double()
    if a.dim() == mask.dim() + 1:
        a = a.abs().sum(1)
    if a.shape != mask.shape:
        raise ValueError(f"attribution map {tuple(a.shape)} does not match mask {tuple(mask.shape)}")
    return a


def relevance_mass(attributions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of |attribution| inside ``mask`` and the mask's area share (chance level), both ``[B]``.

    ``attributions`` ``[B, C, H, W]`` (summed over channels) or ``[B, H, W]``; ``mask`` bool ``[B, H, W]``.
    """
    a = _localisation_map(attributions, mask).abs()
    m = mask.to(a.device).bool()
    mass = (a * m).flatten(1).sum(1) / a.flatten(1).sum(1).clamp_min(1e-300)
    return mass, m.flatten(1).double().mean(1)


def pointing_game(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whether the maximum of the (channel-summed) attribution falls inside ``mask``, ``[B]`` bool."""
    a = attributions.double()
    if a.dim() == mask.dim() + 1:
        a = a.sum(1)
    idx = a.flatten(1).argmax(1)
    return mask.flatten(1).to(a.device).bool().gather(1, idx[:, None])[:, 0]


def top_k_precision(attributions: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the ``k`` features of largest attribution that lie inside ``mask``, ``[B]`` (ties broken
    by position). Chance level: the mask's area share.

    ``attributions`` ``[B, C, H, W]`` (Σ_c |φ_c|) or shaped like ``mask`` (ranked by value: pass
    importances, e.g. :func:`importance_map`); ``mask`` bool ``[B, ...]``.
    """
    a = _localisation_map(attributions, mask).flatten(1)
    if not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must lie in 1..{a.shape[1]}, got {k}")
    top = a.argsort(dim=1, descending=True, stable=True)[:, :k]
    return mask.flatten(1).to(a.device).bool().gather(1, top).double().mean(1)


def mask_iou(attributions: torch.Tensor, mask: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """IoU of the top-``k`` features of the attribution (ties broken by position) with ``mask``, ``[B]``;
    ``k`` None: each example's mask area (then IoU = o/(2|m| − o) with o the overlap). Inputs as
    :func:`top_k_precision`."""
    a = _localisation_map(attributions, mask).flatten(1)
    m = mask.flatten(1).to(a.device).bool()
    area = m.sum(1)
    ks = area if k is None else torch.full_like(area, k)
    if bool((ks < 1).any() | (ks > a.shape[1]).any()):
        raise ValueError(f"k must lie in 1..{a.shape[1]} (an empty mask needs an explicit k), got {ks.tolist()}")
    rank = torch.empty_like(m, dtype=torch.long).scatter_(
        1, a.argsort(dim=1, descending=True, stable=True), torch.arange(a.shape[1], device=a.device).expand_as(a))
    top = rank < ks[:, None]
    return (top & m).sum(1).double() / (top | m).sum(1).double()
