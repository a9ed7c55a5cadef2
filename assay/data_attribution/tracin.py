"""TracIn: attribution by tracing gradient descent over saved checkpoints.

Pruthi, Liu, Kale & Sundararajan 2020, "Estimating Training Data Influence by Tracing Gradient
Descent" (NeurIPS 2020). TracInCP over checkpoints θ_1..θ_K saved during training, with η_k the
learning rate of the update that produced θ_k:

    S[i, t] = Σ_k η_k ∇ℓ(z_i; θ_k) · ∇ℓ(z′_t; θ_k)

Grad-Dot is one checkpoint (the final model) with η = 1; Grad-Cos uses unit-normalised gradients.
With projected gradients (TracIn-CP-fast / random projection) the dot products are JL estimates.
S > 0: a gradient step on z_i lowers the loss on z′_t (z_i helps, the library-wide sign convention).
The derivation assumes SGD; with Adam-type optimisers the learning rate is the usual stand-in for
the (per-parameter) step size.

:func:`tracin_cp` computes the gradients itself, one checkpoint at a time and the train side in
blocks (never all train gradients at once); :func:`tracin_scores` takes features already computed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from assay.data_attribution.featurize import featurize
from assay.data_attribution.grads import OutputFn, cross_entropy, select_parameters
from assay.data_attribution.projection import ProjectionConfig

__all__ = ["TracInCheckpoint", "tracin_cp", "tracin_scores"]


class TracInCheckpoint(NamedTuple):
    """One saved training checkpoint."""

    state: dict[str, torch.Tensor]
    """The model's ``state_dict`` at the checkpoint."""
    lr: float
    """η_k: the learning rate of the update that produced it."""


def tracin_cp(
    model: nn.Module,
    checkpoints: Sequence[TracInCheckpoint],
    train: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    out_fn: OutputFn = cross_entropy,
    projection: ProjectionConfig | None = None,
    params: Sequence[str] | None = None,
    cosine: bool = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """TracInCP scores ``[n, m]`` of ``target`` on ``train`` over ``checkpoints`` (module docstring).

    ``model`` gives the architecture (a copy is loaded with each checkpoint's state; ``model`` itself
    is left alone); ``out_fn`` is the loss ℓ (cross-entropy for classifiers,
    :func:`~assay.data_attribution.grads.next_token_loss` for sequences); ``projection`` None uses the
    exact gradients. Train gradients are formed ``batch_size`` rows at a time."""
    if not checkpoints:
        raise ValueError("TracInCP needs at least one checkpoint (for Grad-Dot pass the final state with lr=1)")
    proj = projection if projection is not None else ProjectionConfig(dim=None)
    work = copy.deepcopy(model)
    sel = select_parameters(work, params)
    (x, y), (xt, yt) = train, target
    scores = torch.zeros(x.shape[0], xt.shape[0], dtype=next(work.parameters()).dtype)

    def feats(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        f = featurize(work, a, b, projection=proj, out_fn=out_fn, params=sel, batch_size=batch_size)
        return torch.nn.functional.normalize(f, dim=1) if cosine else f

    for ck in checkpoints:
        work.load_state_dict(ck.state)
        g_t = feats(xt, yt)
        for start in range(0, x.shape[0], batch_size):
            stop = start + batch_size
            scores[start:stop] += ck.lr * (feats(x[start:stop], y[start:stop]) @ g_t.T)
    return scores


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
