"""Steering vectors: extraction (CAA, PCA of paired differences, probe direction) and application.

Panickssery, Gabrieli, Schulz, Tong, Hubinger & Turner 2023, "Steering Llama 2 via Contrastive
Activation Addition" (arXiv 2312.06681); Zou et al. 2023, "Representation Engineering" (repo
vgel/repeng); Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction".
For paired activations (h⁺_j, h⁻_j) at a site (read at one token, default the last):

    CAA             v = mean_j (h⁺_j − h⁻_j)
    PCA (centred)   v = PC₁ of the rows δ_j = h⁺_j − h⁻_j after subtracting their mean (repeng "pca_diff")
    PCA (center)    v = PC₁ of {h⁺_j − m_j, h⁻_j − m_j}, m_j = (h⁺_j + h⁻_j)/2 (repeng "pca_center")
    PCA (uncentred) v = PC₁ of {δ_j, −δ_j} without centring (steering-vectors' pca_aggregator)
    sign fix        flip v so that mean_j δ_j·v > 0
    probe           v = w of a logistic probe on {h⁺_j} ∪ {h⁻_j} (Bhalla et al. 2024 §4: x̂ = x + α w)

:func:`contrast_direction` names these by ``caa`` / ``pca`` / ``probe``; :func:`rescale` sets a direction
to a given norm (v·r/‖v‖), so that directions of different methods are the same size of edit at equal α.

Operators on the site output h at the selected positions, with v̂ = v/‖v‖ and strength α, each one
edit of :func:`assay.lenses.intervene.intervene` (the one intervention path; Bhalla et al. 2024, Table 1):

    add                 h ← h + α v                      Add(amount=v) on the activations (lens=None)
    ablate              h ← h − (h·v̂) v̂                  Ablate() through DirectionLens(v) (ignores α; idempotent)
    ablate_then_add     h ← h − (h·v̂) v̂ + α v            Set(value=‖v‖) through DirectionLens(v)

optionally followed by norm preservation h′ ← h′·‖h‖/‖h′‖ (repeng ``normalize``). Strength can be
scheduled over generation steps (not ablate's); strength 0 leaves h bitwise unchanged (not ablate's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Literal

import torch
from torch import Tensor, nn

from assay.lens import Ablate, Add, Edit, Set
from assay.lenses.direction import DirectionLens, unit
from assay.lenses.intervene import Intervention, Schedule, Selector, intervene
from assay.lenses.probes import LinearProbe, logistic

__all__ = [
    "caa",
    "pca_direction",
    "probe_direction",
    "Contrast",
    "CONTRASTS",
    "contrast_direction",
    "rescale",
    "Operator",
    "steer",
]

Operator = Literal["add", "ablate", "ablate_then_add"]


def _pairs(pos: Tensor, neg: Tensor) -> Tensor:
    if pos.dim() != 2 or pos.shape != neg.shape:
        raise ValueError(
            f"paired activations must both be [n_pairs, d] of equal shape, got {tuple(pos.shape)} and {tuple(neg.shape)}"
        )
    if pos.shape[0] < 1:
        raise ValueError("need at least one contrastive pair")
    if not (torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise ValueError("paired activations contain NaN or inf")
    return pos - neg


def caa(pos: Tensor, neg: Tensor) -> Tensor:
    """Contrastive activation addition: the mean paired difference ``[d]``."""
    return _pairs(pos, neg).mean(0)


def pca_direction(pos: Tensor, neg: Tensor, *, variant: Literal["diff", "center", "uncentred"] = "diff") -> Tensor:
    """Unit first principal component of paired differences (see the module docstring), sign-fixed so
    that positives project above their negatives on average."""
    deltas = _pairs(pos, neg).double()
    if variant == "diff":
        rows = deltas - deltas.mean(0)
    elif variant == "center":
        m = (pos.double() + neg.double()) / 2
        rows = torch.cat([pos.double() - m, neg.double() - m])
        rows = rows - rows.mean(0)
    elif variant == "uncentred":
        rows = torch.cat([deltas, -deltas])
    else:
        raise ValueError(f"unknown PCA variant {variant!r}; choose diff, center or uncentred")
    if rows.abs().max() == 0:
        raise ValueError("all paired differences are equal after centring; PCA has no direction (use caa)")
    v = torch.linalg.svd(rows, full_matrices=False).Vh[0]
    if (deltas @ v).mean() < 0:
        v = -v
    return v.to(pos.dtype)


def probe_direction(probe: LinearProbe) -> Tensor:
    """A probe's weight as a steering vector (Bhalla et al. 2024 §4: x̂ = x + α w_probe)."""
    return probe.w


Contrast = Literal["caa", "pca", "probe"]
CONTRASTS: tuple[Contrast, ...] = ("caa", "pca", "probe")
"""The contrastive directions :func:`contrast_direction` extracts."""


def contrast_direction(name: Contrast, pos: Tensor, neg: Tensor, *, C: float = 1e-3,
                       pca_variant: Literal["diff", "center", "uncentred"] = "diff") -> Tensor:
    """A steering direction ``[d]`` from paired activations ``pos``, ``neg`` ``[n_pairs, d]``: ``caa`` the
    mean paired difference, ``pca`` the sign-fixed first principal component (``pca_variant``), ``probe``
    the weight of a standardised logistic probe (inverse L2 strength ``C`` on the standardised
    activations, ``logistic(..., standardise=True)``) separating the positives from the negatives, in raw
    activation coordinates."""
    if name == "caa":
        return caa(pos, neg)
    if name == "pca":
        return pca_direction(pos, neg, variant=pca_variant)
    if name == "probe":
        _pairs(pos, neg)
        y = torch.cat([torch.ones(pos.shape[0], dtype=torch.long), torch.zeros(neg.shape[0], dtype=torch.long)])
        return probe_direction(logistic(torch.cat([pos, neg]), y, C=C, standardise=True))
    raise ValueError(f"unknown contrastive direction {name!r}; choose from {', '.join(CONTRASTS)}")


def rescale(v: Tensor, norm: float) -> Tensor:
    """``v`` scaled to Euclidean norm ``norm`` (computed in float64, returned in v's dtype)."""
    unit(v)  # validates shape, finiteness, non-zero
    if not (math.isfinite(norm) and norm >= 0):
        raise ValueError(f"the target norm must be a finite number >= 0, got {norm}")
    return (v.double() * (norm / v.double().norm())).to(v.dtype)


def _operator_edit(v: Tensor, operator: Operator, strength: float) -> tuple[DirectionLens | None, Edit]:
    """The ``(lens, edit)`` of a steering operator with vector ``v`` at strength α (module docstring)."""
    if operator == "add":
        return None, Add(amount=v, strength=strength)
    if operator == "ablate":
        return DirectionLens(v), Ablate()
    if operator == "ablate_then_add":
        return DirectionLens(v), Set(value=float(v.norm()), strength=strength)
    raise ValueError(f"unknown steering operator {operator!r}; choose add, ablate or ablate_then_add")


def steer(
    model: nn.Module,
    vectors: Mapping[str, Tensor],
    *,
    operator: Operator = "add",
    strength: float = 1.0,
    positions: Selector | None = None,
    schedule: Schedule | None = None,
    normalize: bool = False,
    check_finite: bool = False,
) -> AbstractContextManager[Intervention]:
    """Steer ``model`` with ``{site: vector}`` during every forward pass (and cached generation) in the
    ``with`` block: :func:`assay.lenses.intervene.intervene` with each operator's edit (module docstring) at each site.
    ``positions`` (default all) are absolute; ``schedule`` scales the strength per generation step.
    Ablating one direction at every residual site is ``steer(model, {s: v for s in sites}, operator="ablate")``
    (Arditi et al. 2024)."""
    if not vectors:
        raise ValueError("steer needs at least one {site: vector}")
    plan: dict[str, tuple[DirectionLens | None, Edit]] = {}
    for site, v in vectors.items():
        v = torch.as_tensor(v).detach()
        unit(v)  # validates shape, finiteness, non-zero
        plan[site] = _operator_edit(v, operator, strength)
    return intervene(model, plan, positions=positions, schedule=None if operator == "ablate" else schedule,
                     normalize=normalize, check_finite=check_finite, record=False)
