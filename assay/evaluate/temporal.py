"""Temporal metrics of sequence codes: the predictable share of a reconstruction, and trajectory tortuosity.

The two figures of Lubana, Rager, Hindupur et al. 2025, "Priors in Time: Missing Inductive Biases for
Language Model Interpretability" (arXiv 2511.01836), reported there as "the predictive code carries ~80%
of the reconstruction norm" and "trajectory tortuosity ≈ 2 for the predictive code vs 25–30 for SAE
codes". Over the N masked-in tokens of windows ``[B, T, ·]``:

    predictable share = Σ_t ‖x̂^p_t‖² / (Σ_t ‖x̂^p_t‖² + Σ_t ‖x̂^n_t‖²)
        (x̂^p = z_p D, x̂^n = z_n D, biases left out; the ``rel_energy`` of eslubana/temporalSAEs)
    tortuosity of a window = Σ_t ‖z_{t+1} − z_t‖ / ‖z_last − z_first‖
        (arc length over chord of the code trajectory through the window's document tokens, in order;
        1 for a straight path, large for a path that wanders and comes back)

The paper's exact normalisation of tortuosity was not extracted; the arc–chord ratio above is the
standard definition. Windows with fewer than two document tokens or a zero chord have no tortuosity
(NaN, left out of :func:`mean_tortuosity`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["predictable_share", "tortuosity", "mean_tortuosity"]


def _mask(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be [batch, pos] = {tuple(x.shape[:2])}; got {tuple(mask.shape)}")
    return mask.bool()


def predictable_share(predictable_recon: Tensor, novel_recon: Tensor, mask: Tensor | None = None) -> float:
    """Σ‖x̂^p‖² / (Σ‖x̂^p‖² + Σ‖x̂^n‖²) over the masked-in tokens of ``[B, T, d]`` reconstructions (no bias)."""
    if predictable_recon.shape != novel_recon.shape or predictable_recon.dim() != 3:
        raise ValueError(f"need two [batch, pos, d] reconstructions of one shape; got {tuple(predictable_recon.shape)} "
                         f"and {tuple(novel_recon.shape)}")
    m = _mask(predictable_recon, mask)
    p = predictable_recon[m].double().pow(2).sum()
    n = novel_recon[m].double().pow(2).sum()
    total = p + n
    return float(p / total) if total > 0 else float("nan")


def tortuosity(codes: Tensor, mask: Tensor | None = None) -> Tensor:
    """Arc–chord ratio of each window's code trajectory ``codes [B, T, n]`` over its masked-in tokens → ``[B]``."""
    if codes.dim() != 3:
        raise ValueError(f"codes must be [batch, pos, n]; got {tuple(codes.shape)}")
    m = _mask(codes, mask)
    out = torch.full((codes.shape[0],), float("nan"), dtype=torch.float64)
    for b in range(codes.shape[0]):
        z = codes[b][m[b]].detach().double()
        if z.shape[0] < 2:
            continue
        chord = (z[-1] - z[0]).norm()
        if chord > 0:
            out[b] = (z[1:] - z[:-1]).norm(dim=-1).sum() / chord
    return out


def mean_tortuosity(codes: Tensor, mask: Tensor | None = None) -> float:
    """Mean of :func:`tortuosity` over the windows that have one (NaN when none does)."""
    t = tortuosity(codes, mask)
    t = t[~t.isnan()]
    return float(t.mean()) if t.numel() else float("nan")
