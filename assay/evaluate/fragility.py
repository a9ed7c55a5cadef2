"""Metrics of SAE fragility: how far an input change moved a sparse dictionary's code.

Li, Srinivas, Bhalla & Lakkaraju 2025/2026, "Interpretability Illusions with Sparse Autoencoders:
Evaluating Robustness of Concept Representations" (arXiv 2505.16004) score an attack by the overlap of
active sets, |S(x′) ∩ S(x)|/|S(x)| with S = the latents that fire (untargeted: it should fall), and by
whether a chosen latent j was switched on or off. :func:`latent_change` is the continuous version of the
latter: z_j(x′) − z_j(x), divided by a per-latent scale (e.g. :func:`typical_activation`, the latent's
mean value where it fires) so that changes of different latents and SAEs are in comparable units.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["active_set_overlap", "latent_change", "typical_activation"]


def active_set_overlap(codes: Tensor, reference: Tensor) -> Tensor:
    """|S(codes) ∩ S(reference)|/|S(reference)| per row, S = nonzero latents (1 when S(reference) = ∅)."""
    a, r = codes != 0, reference != 0
    return (a & r).sum(-1).to(torch.float32) / r.sum(-1).clamp_min(1).to(torch.float32) + (r.sum(-1) == 0)


def latent_change(before: Tensor, after: Tensor, latent: Tensor, scale: Tensor | None = None) -> Tensor:
    """(after[b, j_b] − before[b, j_b]) / scale[j_b] per row ``[B]`` for latents ``latent [B]`` of codes or
    pre-activations ``[B, L]`` (scale None: no division)."""
    if before.shape != after.shape or before.ndim != 2 or latent.shape != before.shape[:1]:
        raise ValueError(f"need before and after [B, L] and latent [B], got {tuple(before.shape)}, "
                         f"{tuple(after.shape)}, {tuple(latent.shape)}")
    idx = latent.long()[:, None]
    delta = (after.gather(1, idx) - before.gather(1, idx)).squeeze(1)
    return delta if scale is None else delta / scale[latent.long()]


def typical_activation(codes: Tensor) -> Tensor:
    """Per latent, the mean of its nonzero values over rows ``codes [N, L]`` (1 for a latent that never fires)."""
    on = codes != 0
    n = on.sum(0)
    mean = torch.where(on, codes, torch.zeros_like(codes)).sum(0) / n.clamp_min(1)
    return torch.where(n > 0, mean.abs(), torch.ones_like(mean))
