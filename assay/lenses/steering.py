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

Operators on the site output h at the selected positions, with v̂ = v/‖v‖ and strength α:

    add                 h ← h + α v
    ablate              h ← h − (h·v̂) v̂                  (ignores α; idempotent)
    ablate_then_add     h ← h − (h·v̂) v̂ + α v

optionally followed by norm preservation h′ ← h′·‖h‖/‖h′‖ (repeng ``normalize``). Strength can be
scheduled over generation steps; strength 0 leaves h bitwise unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from assay.lenses.direction import unit
from assay.lenses.intervene import AllPositions, CallInfo, Selector, positional_patch, select
from assay.lenses.probes import LinearProbe

__all__ = [
    "caa",
    "pca_direction",
    "probe_direction",
    "add",
    "ablate",
    "ablate_then_add",
    "apply_operator",
    "Schedule",
    "constant",
    "linear_decay",
    "steer",
]

Operator = Literal["add", "ablate", "ablate_then_add"]
Schedule = Callable[[Tensor], Tensor]
"""Maps generation steps ``[T]`` (position − prompt length: negative in the prompt) to strength multipliers."""


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


def add(h: Tensor, v: Tensor, alpha: float | Tensor = 1.0) -> Tensor:
    """h + α v."""
    return h + alpha * v


def ablate(h: Tensor, v: Tensor) -> Tensor:
    """h − (h·v̂) v̂: remove the component along v."""
    v_hat = unit(v).to(h.dtype)
    return h - (h @ v_hat)[..., None] * v_hat


def ablate_then_add(h: Tensor, v: Tensor, alpha: float | Tensor = 1.0) -> Tensor:
    """h − (h·v̂) v̂ + α v."""
    return ablate(h, v) + alpha * v


def apply_operator(h: Tensor, v: Tensor, operator: Operator, alpha: float | Tensor = 1.0, *,
                   normalize: bool = False) -> Tensor:
    """One operator by name on rows ``h [..., d]``; ``alpha`` broadcasts against ``h[..., :1]``."""
    if h.shape[-1] != v.shape[-1]:
        raise ValueError(
            f"steering vector has width {v.shape[-1]} but the activations have width {h.shape[-1]} "
            f"(shape {tuple(h.shape)}); was it extracted at another site or model?"
        )
    v = v.to(h.dtype)
    if operator == "add":
        out = add(h, v, alpha)
    elif operator == "ablate":
        out = ablate(h, v)
    elif operator == "ablate_then_add":
        out = ablate_then_add(h, v, alpha)
    else:
        raise ValueError(f"unknown steering operator {operator!r}; choose add, ablate or ablate_then_add")
    if normalize:
        out = out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return out


def constant(steps: Tensor) -> Tensor:
    """Schedule: 1 everywhere."""
    return torch.ones_like(steps, dtype=torch.float32)


def linear_decay(n_steps: int) -> Schedule:
    """Schedule: 1 on the prompt, then 1 − t/n_steps for generated token t (0 from t = n_steps)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")

    def schedule(steps: Tensor) -> Tensor:
        return (1 - steps.clamp(min=0).float() / n_steps).clamp(min=0)

    return schedule


@contextmanager
def steer(
    model: nn.Module,
    vectors: Mapping[str, Tensor],
    *,
    operator: Operator = "add",
    strength: float = 1.0,
    positions: Selector | None = None,
    schedule: Schedule | None = None,
    normalize: bool = False,
) -> Iterator[list[CallInfo]]:
    """Steer ``model`` with ``{site: vector}`` during every forward pass (and cached generation) in
    the block. ``positions`` (default all) are absolute, as in :func:`assay.lenses.intervene.intervene`;
    ``schedule`` scales the strength per generation step. Ablating one direction at every residual
    site is ``steer(model, {s: v for s in sites}, operator="ablate")`` (Arditi et al. 2024)."""
    if not vectors:
        raise ValueError("steer needs at least one {site: vector}")
    vecs = {}
    for site, v in vectors.items():
        v = torch.as_tensor(v)
        unit(v)  # validates shape, finiteness, non-zero
        vecs[site] = v.detach()
    selector = positions if positions is not None else AllPositions()

    def make(site: str, v: Tensor):
        def fn(h: Tensor, info: CallInfo) -> Tensor:
            if h.shape[-1] != v.shape[0]:
                raise ValueError(
                    f"steering vector for site {site!r} has width {v.shape[0]} but the site's activations "
                    f"have width {h.shape[-1]}; was it extracted at another site or model?"
                )
            if strength == 0 and operator != "ablate":
                return h
            if torch.is_floating_point(h) and not torch.isfinite(h).all():
                raise ValueError(f"non-finite activations (NaN/inf) at site {site!r}; steering cannot proceed")
            sel = select(selector, info)
            if not sel.any():
                return h
            alpha = torch.full(h.shape[:2], float(strength), dtype=h.dtype, device=h.device)
            if schedule is not None:
                alpha = alpha * schedule(info.positions - info.prompt_len).to(h.dtype)[None, :]
            new = apply_operator(h, v.to(h.device), operator, alpha[..., None], normalize=normalize)
            return torch.where(sel[..., None], new, h)

        return fn

    with positional_patch(model, {s: make(s, v) for s, v in vecs.items()}) as calls:
        yield calls
