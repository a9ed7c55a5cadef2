"""TRAK: attributing model behaviour through a kernel on projected margin gradients.

Park, Georgiev, Ilyas, Leclerc & Madry 2023, "TRAK: Attributing Model Behavior at Scale" (ICML 2023);
the recipe of ``MadryLab/trak``. Per model (or checkpoint) k:

    Φ_k = Rᵀ∇_θ f(z_i; θ_k)/√P,  Q_k = 1 − p(z_i; θ_k),  F_k = Φ_k Xinv,  Xinv = (Φ_kᵀΦ_k + λI)⁻¹ / mean|·|
    S = (1/K) Σ_k F_k G_kᵀ  ⊙  mean_k Q_k        (G_k: target margin features, same R)

The ``Xinv`` rescale (TRAK's, so an fp16 cast survives) is a constant factor. The same functions
serve group attribution (GGDA) when Φ holds one row per group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from assay.data_attribution.featstore import FeatureStore, featurize_to_store
from assay.data_attribution.featurize import Method, check_inputs, featurize
from assay.data_attribution.grads import margin, out_to_loss, select_parameters
from assay.data_attribution.projection import ProjectionConfig

__all__ = ["TrakCheckpoint", "trak_featurize", "trak_kernel", "trak_finalize", "trak_scores", "trak"]


class TrakCheckpoint(NamedTuple):
    """One model's finalised train-side TRAK state."""

    features: torch.Tensor
    """F = Φ (ΦᵀΦ + λI)⁻¹ / mean|·| ``[n, k]``."""
    out_to_loss: torch.Tensor
    """Q = 1 − p_y per train point (or group mean) ``[n]``."""


def trak_kernel(phi: torch.Tensor, *, block: int = 20_000) -> torch.Tensor:
    """The kernel ΦᵀΦ ``[k, k]`` of train features Φ ``[n, k]``, accumulated in float64 blocks of rows (a sum over
    rows: kernels of disjoint row blocks add up, which is how sharded TRAK reduces it across ranks)."""
    if phi.dim() != 2:
        raise ValueError(f"need Φ [n, k], got {tuple(phi.shape)}")
    xtx = torch.zeros(phi.shape[1], phi.shape[1], dtype=torch.float64)
    for start in range(0, phi.shape[0], block):
        b = phi[start : start + block].double()
        xtx += b.T @ b
    return xtx


def trak_finalize(
    phi: torch.Tensor,
    out_to_loss: torch.Tensor,
    *,
    lambda_reg: float = 0.0,
    block: int = 20_000,
    kernel: torch.Tensor | None = None,
) -> TrakCheckpoint:
    """F = Φ Xinv from train features Φ ``[n, k]`` (already divided by √P); XᵀX accumulated in float64
    blocks, or ``kernel`` (float64 ``[k, k]``) when given: ΦᵀΦ over *all* train rows when Φ is one rank's
    block of them."""
    if phi.dim() != 2 or out_to_loss.shape != (phi.shape[0],):
        raise ValueError(f"need Φ [n, k] and Q [n]; got {tuple(phi.shape)} and {tuple(out_to_loss.shape)}")
    if lambda_reg < 0:
        raise ValueError(f"lambda_reg must be ≥ 0, got {lambda_reg}")
    k = phi.shape[1]
    if kernel is not None and (kernel.shape != (k, k) or kernel.dtype != torch.float64):
        raise ValueError(f"kernel must be float64 [{k}, {k}], got {kernel.dtype} {tuple(kernel.shape)}")
    xtx = trak_kernel(phi, block=block) if kernel is None else kernel.clone()
    xtx += lambda_reg * torch.eye(k, dtype=torch.float64)
    xinv = torch.linalg.inv(xtx)
    xinv /= xinv.abs().mean()
    return TrakCheckpoint((phi.double() @ xinv).to(phi.dtype), out_to_loss)


def trak_scores(
    checkpoints: Sequence[TrakCheckpoint], target_features: Sequence[torch.Tensor], *, block: int = 8192
) -> torch.Tensor:
    """S ``[n, m]`` = mean_k F_k G_kᵀ ⊙ mean_k Q_k, accumulated blockwise over train rows."""
    if len(checkpoints) != len(target_features) or not checkpoints:
        raise ValueError(
            f"need one target feature matrix per checkpoint: {len(checkpoints)} checkpoints, "
            f"{len(target_features)} target matrices"
        )
    n, m = checkpoints[0].features.shape[0], target_features[0].shape[0]
    scores = torch.zeros(n, m, dtype=checkpoints[0].features.dtype)
    for ck, g in zip(checkpoints, target_features):
        if ck.features.shape[1] != g.shape[1]:
            raise ValueError(f"train features have {ck.features.shape[1]} dims, target features {g.shape[1]}")
        for start in range(0, n, block):
            scores[start : start + block] += ck.features[start : start + block] @ g.T
    q = torch.stack([ck.out_to_loss for ck in checkpoints]).mean(0)
    return scores / len(checkpoints) * q[:, None]


def trak_featurize(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    projection: ProjectionConfig,
    params: Sequence[str] | None = None,
    method: Method = "auto",
    batch_size: int = 256,
    store: FeatureStore | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Φ ``[n, k]`` = projected margin gradients / √P, Q ``[n]`` = 1 − p_y) for one model.

    With ``store`` (a :class:`~assay.data_attribution.featstore.FeatureStore` of shape ``[n, k]`` whose
    identity names this model, data and projection), batches are written to the memory-mapped store as
    they finish and batches already there are skipped, so an interrupted featurisation resumes. R
    depends only on the projection seed, never on the batching, so resumed features equal a fresh run."""
    sel = select_parameters(model, params)
    root_p = math.sqrt(sel.numel)

    def compute(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = inputs[start:stop], targets[start:stop]
        phi = featurize(model, x, y, projection=projection, out_fn=margin, params=sel, method=method,
                        batch_size=batch_size)
        with torch.no_grad():
            q = torch.cat([out_to_loss(model(x[s : s + batch_size]), y[s : s + batch_size])
                           for s in range(0, x.shape[0], batch_size)])
        return phi / root_p, q

    if store is None:
        return compute(0, inputs.shape[0])
    width = projection.dim if projection.dim is not None else sel.numel
    if tuple(store.features.shape) != (inputs.shape[0], width):
        raise ValueError(f"store holds [{store.features.shape[0]}, {store.features.shape[1]}] features, this "
                         f"featurisation makes [{inputs.shape[0]}, {width}]; use a store of that shape")
    featurize_to_store(store, compute, batch_size=batch_size)
    return store.read()


def trak(
    models: Sequence[nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    projection: ProjectionConfig,
    params: Sequence[str] | None = None,
    lambda_reg: float = 0.0,
    method: Method = "auto",
    batch_size: int = 256,
) -> torch.Tensor:
    """TRAK scores ``[n, m]`` of ``target`` on ``train`` over an ensemble of ``models`` (the full recipe)."""
    check_inputs(target[0], tuple(train[0].shape[1:]), "target inputs")
    cks, gs = [], []
    for model in models:
        phi, q = trak_featurize(model, *train, projection=projection, params=params, method=method, batch_size=batch_size)
        cks.append(trak_finalize(phi, q, lambda_reg=lambda_reg))
        gs.append(trak_featurize(model, *target, projection=projection, params=params, method=method,
                                 batch_size=batch_size)[0])
    return trak_scores(cks, gs)
