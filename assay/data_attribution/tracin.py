"""TracIn: attribution by tracing gradient descent over saved checkpoints.

Pruthi, Liu, Kale & Sundararajan 2020, "Estimating Training Data Influence by Tracing Gradient
Descent" (NeurIPS 2020). TracInCP over checkpoints θ_1..θ_K with learning rates η_k:

    S[i, t] = Σ_k η_k ∇ℓ(z_i; θ_k) · ∇ℓ(z′_t; θ_k)

Grad-Dot is one checkpoint with η = 1; Grad-Cos uses unit-normalised gradients. With projected
gradients (TracIn-CP-fast / random projection) the dot products are JL estimates. S > 0: a gradient
step on z_i lowers the loss on z′_t (z_i helps, the library-wide sign convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["tracin_scores"]


def tracin_scores(
    train_features: Sequence[torch.Tensor],
    target_features: Sequence[torch.Tensor],
    *,
    lrs: Sequence[float] | None = None,
    cosine: bool = False,
    block: int = 8192,
) -> torch.Tensor:
    """Σ_k η_k Φ_k G_kᵀ ``[n, m]`` from per-checkpoint train features ``[n, k]`` and target features
    ``[m, k]`` (loss gradients, optionally projected); accumulated over train blocks of ``block`` rows."""
    if len(train_features) != len(target_features) or not train_features:
        raise ValueError(
            f"need one train and one target feature matrix per checkpoint, got {len(train_features)} and "
            f"{len(target_features)}"
        )
    lrs = [1.0] * len(train_features) if lrs is None else list(lrs)
    if len(lrs) != len(train_features):
        raise ValueError(f"got {len(lrs)} learning rates for {len(train_features)} checkpoints")
    n, m = train_features[0].shape[0], target_features[0].shape[0]
    scores = torch.zeros(n, m, dtype=train_features[0].dtype)
    for phi, g, lr in zip(train_features, target_features, lrs):
        if phi.shape[1] != g.shape[1]:
            raise ValueError(f"train features have {phi.shape[1]} dims, target features {g.shape[1]}")
        if cosine:
            phi = torch.nn.functional.normalize(phi, dim=1)
            g = torch.nn.functional.normalize(g, dim=1)
        for start in range(0, n, block):
            scores[start : start + block] += lr * (phi[start : start + block] @ g.T)
    return scores
