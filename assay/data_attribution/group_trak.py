"""Group attribution (GGDA) for TRAK and TracIn: one feature per group of training points.

Ley, Srinivas, Zhang, Rusak & Lakkaraju 2024, "Generalized Group Data Attribution" (arXiv
2410.09940). Gradient features are linear in per-example gradients, so a group's feature is
φ_G = Rᵀ Σ_{i∈G} ∇f(z_i) = Rᵀ ∇ Σ_{i∈G} f(z_i): on the generic path one batched backward pass per
group replaces |G| per-example gradients, and the dense projection runs on K rows instead of n.
(On the factored path per-example features are already cheap; there φ_G = Σ_{i∈G} φ_i exactly.)

- Group TracIn: τ(G, t) = Σ_k η_k φ_G(θ_k)·g_t(θ_k) — exactly the sum of pointwise TracIn scores.
- Group TRAK: τ(G, t) = Q̄_G φ_Gᵀ (K̂ + λI)⁻¹ g_t, with TRAK's kernel ΦᵀΦ (a sum over *points*)
  estimated as (n / n_s) Φ_sᵀΦ_s from per-example features of a random subsample of n_s points,
  and Q̄_G the group's mean out-to-loss weight. With n_s = n this is the pointwise TRAK score
  summed over the group (up to averaging Q within it). The group-level kernel Φ_GᵀΦ_G, the
  literal substitution, is not used: it has rank ≤ K and mixes cross terms between group members.
  [design; GGDA publishes no code for its TRAK aggregation]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from assay.data_attribution.featurize import Method, featurize, resolve_method
from assay.data_attribution.grads import (
    OutputFn,
    group_grads,
    margin,
    out_to_loss,
    select_parameters,
)
from assay.data_attribution.groups import check_groups, group_sum
from assay.data_attribution.projection import ProjectionConfig, project_dense
from assay.data_attribution.trak import TrakCheckpoint, trak_scores

__all__ = ["group_features", "group_trak_checkpoint", "group_trak"]


def group_features(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    *,
    projection: ProjectionConfig,
    out_fn: OutputFn = margin,
    params: Sequence[str] | None = None,
    method: Method = "dense",
    batch_size: int = 512,
) -> torch.Tensor:
    """Projected group gradients ``[K, k]``: summed per-example factored features on the factored path,
    else one backward pass per group and a dense projection of the K rows."""
    sel = select_parameters(model, params)
    groups, k = check_groups(groups, inputs.shape[0])
    if resolve_method(model, sel, projection, method) is not None:
        phi = featurize(model, inputs, targets, projection=projection, out_fn=out_fn, params=sel,
                        method="factored", batch_size=batch_size)
        return group_sum(phi, groups, k)
    g = group_grads(model, inputs, targets, groups, n_groups=k, out_fn=out_fn, params=sel)
    return project_dense(g, projection)


def group_trak_checkpoint(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    *,
    projection: ProjectionConfig,
    kernel_points: int,
    generator: torch.Generator,
    lambda_reg: float = 0.0,
    params: Sequence[str] | None = None,
    method: Method = "dense",
    batch_size: int = 512,
) -> TrakCheckpoint:
    """Group TRAK state for one model: F_G = φ_G Xinv with the kernel estimated from ``kernel_points``
    random training points; ``lambda_reg`` is relative to the mean kernel eigenvalue."""
    n = inputs.shape[0]
    if not 1 <= kernel_points <= n:
        raise ValueError(f"kernel_points must be in 1..{n}, got {kernel_points}")
    sel = select_parameters(model, params)
    groups, k = check_groups(groups, n)
    root_p = math.sqrt(sel.numel)
    phi_g = group_features(model, inputs, targets, groups, projection=projection, params=params, method=method,
                           batch_size=batch_size) / root_p
    idx = torch.randperm(n, generator=generator)[:kernel_points]
    phi_s = featurize(model, inputs[idx], targets[idx], projection=projection, out_fn=margin, params=sel,
                      method=method, batch_size=batch_size).double() / root_p
    xtx = phi_s.T @ phi_s * (n / kernel_points)
    xtx += lambda_reg * float(xtx.diagonal().mean()) * torch.eye(xtx.shape[0], dtype=torch.float64)
    xinv = torch.linalg.inv(xtx)
    xinv /= xinv.abs().mean()
    with torch.no_grad():
        q = torch.cat([out_to_loss(model(inputs[s : s + batch_size]), targets[s : s + batch_size])
                       for s in range(0, n, batch_size)])
    q_mean = group_sum(q[:, None], groups, k)[:, 0] / torch.bincount(groups, minlength=k)
    return TrakCheckpoint((phi_g.double() @ xinv).to(phi_g.dtype), q_mean)


def group_trak(
    models: Sequence[nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    groups: torch.Tensor,
    *,
    projection: ProjectionConfig,
    kernel_points: int,
    generator: torch.Generator,
    lambda_reg: float = 0.0,
    params: Sequence[str] | None = None,
    method: Method = "dense",
    batch_size: int = 512,
) -> torch.Tensor:
    """Group TRAK scores ``[K, m]`` over an ensemble of models."""
    cks, gs = [], []
    for model in models:
        cks.append(group_trak_checkpoint(model, *train, groups, projection=projection, kernel_points=kernel_points,
                                         generator=generator, lambda_reg=lambda_reg, params=params, method=method,
                                         batch_size=batch_size))
        sel = select_parameters(model, params)
        g = featurize(model, *target, projection=projection, out_fn=margin, params=sel, method=method,
                      batch_size=batch_size)
        gs.append(g / math.sqrt(sel.numel))
    return trak_scores(cks, gs)
