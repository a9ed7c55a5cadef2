"""Property-function targets for group attribution: attribute a model property f(θ) to groups.

Ley, Srinivas, Zhang, Rusak & Lakkaraju 2024, "Generalized Group Data Attribution" (arXiv
2410.09940) generalise the attribution target from one test point to any property f(θ) of the model
(e.g. the mean loss over a test set, or the loss on one class). Gradient attributors are linear in the
target gradient, so the target feature is the projected gradient of the property, g_f = Rᵀ∇f(θ),
and a group's score is φ_Gᵀ(…)g_f with the train side unchanged:

- group TRAK: τ(G, f) = u_Gᵀ(Ĥ + λI)⁻¹ g_f (:mod:`assay.data_attribution.group_trak`);
- group TracIn: τ(G, f) = Σ_k η_k φ_G(θ_k)·∇f(θ_k) (projected).

Here f is a weighted sum of per-target outputs, f(θ) = Σ_t w_t out(z′_t; θ) (:class:`Property`): the
mean over a target set, or over one class of it. Its gradient is one backward pass over the targets
(the group gradient of a single group with weights w), not m per-example gradients; by linearity the
property's scores equal the w-weighted sum of the per-target score columns. The target side then costs
one gradient whatever m is — which is what leaves the train side as the only cost group attribution
shrinks. The sign convention is the library's: τ > 0 means the group raises f's TRAK output (margin) /
lowers f's loss (TracIn).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from assay.data_attribution.featurize import Method, check_inputs
from assay.data_attribution.grads import OutputFn, cross_entropy, margin, select_parameters
from assay.data_attribution.group_trak import Kernel, group_features, group_trak_checkpoint
from assay.data_attribution.projection import ProjectionConfig
from assay.data_attribution.tracin import TracInCheckpoint, tracin_scores
from assay.data_attribution.trak import trak_scores

__all__ = ["Property", "mean_property", "property_features", "group_trak_property", "group_tracin_property"]


class Property(NamedTuple):
    """A model property f(θ) = Σ_t w_t · out(z′_t; θ): a weighted sum of per-target outputs."""

    inputs: torch.Tensor
    """Target inputs ``[m, ...]``."""
    targets: torch.Tensor
    """Target labels ``[m]``."""
    weights: torch.Tensor
    """``[m]`` weight w_t of each target's output."""


def mean_property(inputs: torch.Tensor, targets: torch.Tensor, *, subset: torch.Tensor | None = None) -> Property:
    """The mean output over the targets, or over ``subset`` (a bool mask ``[m]``, e.g. ``targets == c`` for the
    loss on one class): weights 1/|subset| on the subset, 0 elsewhere."""
    m = inputs.shape[0]
    if targets.shape[0] != m:
        raise ValueError(f"inputs ({m}) and targets ({targets.shape[0]}) differ in length")
    keep = torch.ones(m, dtype=torch.bool) if subset is None else torch.as_tensor(subset, dtype=torch.bool)
    if keep.shape != (m,) or not bool(keep.any()):
        raise ValueError(f"subset must be a bool mask of shape [{m}] selecting at least one target, got "
                         f"{tuple(keep.shape)} with {int(keep.sum()) if keep.shape == (m,) else '?'} selected")
    return Property(inputs, targets, keep.float() / float(keep.sum()))


def property_features(
    model: nn.Module,
    prop: Property,
    *,
    projection: ProjectionConfig,
    out_fn: OutputFn = margin,
    params: Sequence[str] | None = None,
    method: Method = "dense",
    batch_size: int = 512,
) -> torch.Tensor:
    """g_f = Rᵀ∇f(θ) ``[1, k]`` with the same R as :func:`~assay.data_attribution.featurize.featurize`
    (one backward pass over the targets on the dense path; on the factored path the weighted sum of the
    per-target factored features)."""
    w = torch.as_tensor(prop.weights)
    if w.shape != (prop.inputs.shape[0],):
        raise ValueError(f"property weights must be [m] = [{prop.inputs.shape[0]}], got {tuple(w.shape)}")
    one = torch.zeros(prop.inputs.shape[0], dtype=torch.long)
    return group_features(model, prop.inputs, prop.targets, one, projection=projection, out_fn=out_fn,
                          params=params, weights=w.to(next(model.parameters()).dtype), method=method,
                          batch_size=batch_size)


def group_trak_property(
    models: Sequence[nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    prop: Property,
    groups: torch.Tensor,
    *,
    projection: ProjectionConfig,
    kernel: Kernel = "group",
    sketch_draws: int = 1,
    seed: int = 0,
    lambda_reg: float = 0.0,
    params: Sequence[str] | None = None,
    method: Method = "dense",
    batch_size: int = 512,
) -> torch.Tensor:
    """Group TRAK scores ``[K]`` of the property (module docstring): the train side of
    :func:`~assay.data_attribution.group_trak.group_trak`, the target side one property gradient (of the
    TRAK margin) per model. Equal to ``group_trak(...) @ prop.weights``."""
    check_inputs(prop.inputs, tuple(train[0].shape[1:]), "property inputs")
    cks, gs = [], []
    for i, model in enumerate(models):
        cks.append(group_trak_checkpoint(model, *train, groups, projection=projection, kernel=kernel,
                                         sketch_draws=sketch_draws, seed=seed + i, lambda_reg=lambda_reg,
                                         params=params, method=method, batch_size=batch_size))
        root_p = math.sqrt(select_parameters(model, params).numel)
        gs.append(property_features(model, prop, projection=projection, params=params, method=method,
                                    batch_size=batch_size) / root_p)
    return trak_scores(cks, gs)[:, 0]


def group_tracin_property(
    model: nn.Module,
    checkpoints: Sequence[TracInCheckpoint],
    train: tuple[torch.Tensor, torch.Tensor],
    prop: Property,
    groups: torch.Tensor,
    *,
    projection: ProjectionConfig | None = None,
    out_fn: OutputFn = cross_entropy,
    params: Sequence[str] | None = None,
    method: Method = "dense",
    batch_size: int = 512,
) -> torch.Tensor:
    """Group TracInCP scores ``[K]`` of the property f = Σ_t w_t ℓ(z′_t): Σ_k η_k φ_G(θ_k)·g_f(θ_k), loss
    gradients on both sides; ``projection`` None uses exact gradients. Equal to group TracIn's per-target
    scores ``@ prop.weights``. ``model`` gives the architecture (a copy loads each checkpoint)."""
    if not checkpoints:
        raise ValueError("TracInCP needs at least one checkpoint (for Grad-Dot pass the final state with lr=1)")
    check_inputs(prop.inputs, tuple(train[0].shape[1:]), "property inputs")
    proj = projection if projection is not None else ProjectionConfig(dim=None)
    work = copy.deepcopy(model)
    feats, targets = [], []
    common = {"projection": proj, "out_fn": out_fn, "params": params, "method": method, "batch_size": batch_size}
    for ck in checkpoints:
        work.load_state_dict(ck.state)
        feats.append(group_features(work, *train, groups, **common))
        targets.append(property_features(work, prop, **common))
    return tracin_scores(feats, targets, lrs=[ck.lr for ck in checkpoints])[:, 0]
