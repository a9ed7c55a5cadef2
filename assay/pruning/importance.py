"""Importance scores for pruning: the gradient-flow measures, SNIP, LAMP and N:M masks.

**Gradient-flow measures** — Lubana & Dick 2021, "A Gradient Flow Framework for Analyzing Network
Pruning" (ICLR 2021; code ``EkdeepSLubana/flowandprune``, ``imp_estimator.py``). With g the mean loss
gradient over the given batches and H the Hessian of the mean loss (both with respect to the weights
of the scored layers together), per weight p and per neuron/filter f (a row of a Linear or Conv weight):

    =====================  =====================  ===============================
    measure                per weight             per neuron f
    =====================  =====================  ===============================
    ``magnitude``          |θ_p|                  ‖θ_f‖₂
    ``loss_preservation``  |θ_p g_p|              Σ_{p∈f} |θ_p g_p|
    ``biased_loss``        |θ_p² g_p|             Σ |θ_p² g_p|  (or Σ |θ_p − θ⁰_p|·|θ_p g_p|)
    ``grasp``              θ_p (Hg)_p  (signed)   Σ θ_p (Hg)_p
    ``grad_preserve``      |θ_p (Hg)_p|           |Σ_{p∈f} θ_p (Hg)_p|
    =====================  =====================  ===============================

Extras of the reference code: ``tfo`` (Taylor first order, Molchanov et al. 2019) |θ_p g_p| per
weight and |Σ_{p∈f} θ_p g_p| per neuron; ``fisher`` θ_p² g_p², summed per neuron; ``l1`` |θ_p|, and
‖θ_f‖₁ per neuron.

In every case the **lowest** score is pruned first (GraSP stays signed: pruning lowest removes the
weights whose removal most reduces gradient flow). Hg is computed without forming H, as in the
reference code: g_base = mean gradient (no graph), then Hg = mean over batches of ∇_θ(g_baseᵀ ∇_θ ℓ_b)
by double backward. The paper divides logits by a temperature (5 for the g-based measures, 200 for
GraSP and gradient-norm preservation): pass ``classification_loss(temperature)``.

**SNIP** — Lee, Ajanthan, Torr 2019, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity": |θ ⊙ g| on one batch at initialisation, normalised to sum 1 over all scored weights.

**LAMP** — Lee, Park, Mo, Ahn, Shin 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning"
(ICLR 2021): within a layer, with weights sorted by |θ| ascending (u = 1..N),
score(u) = θ_u² / Σ_{v ≥ u} θ_v²; pruning globally by this score needs no per-layer tuning, and the
largest weight of every layer scores 1.

**N:M** semi-structured sparsity (e.g. 2:4, as in NVIDIA's sparse tensor cores; Mishra et al. 2021,
"Accelerating Sparse Deep Neural Networks"): in every group of M consecutive weights along the input
dimension keep the N largest |θ| (ties: the lower index is kept).

Scores are computed at the effective weights θ ⊙ M of a masked model (:mod:`assay.pruning.masks`);
differentiation is with respect to the dense shadow θ, whose gradient equals the effective weight's
when the mask lets gradients regrow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from assay.config import check_choice
from assay.pruning.masks import prunable_layers, shadow_weight

__all__ = ["MEASURES", "EXTRA_MEASURES", "LossFn", "classification_loss", "mean_gradient", "hessian_gradient_product",
           "flow_scores", "snip_scores", "lamp_scores", "nm_masks"]

Measure = Literal["magnitude", "loss_preservation", "biased_loss", "grasp", "grad_preserve", "tfo", "fisher", "l1"]
MEASURES: tuple[str, ...] = ("magnitude", "loss_preservation", "biased_loss", "grasp", "grad_preserve")
"""The gradient-flow measures of Lubana & Dick 2021, in the order of their table."""
EXTRA_MEASURES: tuple[str, ...] = ("tfo", "fisher", "l1")
"""The further measures of the reference code (``imp_estimator.py``)."""

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``(model, batch) -> scalar loss``."""


def classification_loss(temperature: float = 1.0) -> LossFn:
    """Cross-entropy of ``model(inputs) / temperature`` against class ids, for ``batch = (inputs, targets)``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs) / temperature, targets)

    return loss


def _layers(model: nn.Module, layers: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(layers) if layers is not None else prunable_layers(model)


def _batches(batches: Iterable[Any]) -> list[Any]:
    out = list(batches)
    if not out:
        raise ValueError("no batches given: gradient-based scores need at least one batch")
    return out


def mean_gradient(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], *, layers: Sequence[str] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Layer name → mean over ``batches`` of ∂ loss / ∂ weight."""
    names = _layers(model, layers)
    params = [shadow_weight(model, n) for n in names]
    batches = _batches(batches)
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for t, g in zip(total, torch.autograd.grad(loss_fn(model, batch), params)):
            t += g
    return {n: t / len(batches) for n, t in zip(names, total)}


def hessian_gradient_product(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], *,
                             layers: Sequence[str] | None = None,
                             gradient: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Layer name → (H v)ₗ with H the Hessian of the mean loss over the weights of all ``layers`` jointly
    and v = ``gradient`` (default: the mean gradient, so this is Hg), by double backward per batch."""
    names = _layers(model, layers)
    batches = _batches(batches)
    v = dict(gradient) if gradient is not None else mean_gradient(model, loss_fn, batches, layers=names)
    params = [shadow_weight(model, n) for n in names]
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
        dot = sum((g * v[n].detach()).sum() for n, g in zip(names, grads))
        for t, h in zip(total, torch.autograd.grad(dot, params)):
            t += h
    return {n: t / len(batches) for n, t in zip(names, total)}


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def flow_scores(
    model: nn.Module, measure: Measure, loss_fn: LossFn | None = None, batches: Iterable[Any] | None = None, *,
    layers: Sequence[str] | None = None, unit: Literal["weight", "neuron"] = "neuron",
    initial: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Layer name → importance of each weight (``unit="weight"``, shaped like the weight) or of each
    output neuron/filter (``unit="neuron"``, one score per row), by a gradient-flow ``measure`` or an
    extra (module docstring). ``magnitude`` and ``l1`` need no data; the others need ``loss_fn`` and
    ``batches``.
    ``initial`` (layer → θ⁰) switches ``biased_loss`` to its |θ − θ⁰|·|θ g| form."""
    check_choice("measure", measure, MEASURES + EXTRA_MEASURES)
    check_choice("unit", unit, ("weight", "neuron"))
    names = _layers(model, layers)
    theta = {n: model.get_submodule(n).weight.detach() for n in names}
    if measure in ("magnitude", "l1"):
        norm = 2 if measure == "magnitude" else 1
        return {n: (t.abs() if unit == "weight" else _rows(t).norm(p=norm, dim=1)) for n, t in theta.items()}
    if loss_fn is None or batches is None:
        raise ValueError(f"measure {measure!r} needs loss_fn and batches (it uses the loss gradient)")
    batches = _batches(batches)
    g = mean_gradient(model, loss_fn, batches, layers=names)
    if measure == "tfo":
        return {n: ((theta[n] * g[n]).abs() if unit == "weight" else _rows(theta[n] * g[n]).sum(dim=1).abs())
                for n in names}
    if measure == "fisher":
        per = {n: theta[n] ** 2 * g[n] ** 2 for n in names}
        return per if unit == "weight" else {n: _rows(p).sum(dim=1) for n, p in per.items()}
    if measure in ("loss_preservation", "biased_loss"):
        if measure == "loss_preservation":
            per = {n: (theta[n] * g[n]).abs() for n in names}
        elif initial is None:
            per = {n: (theta[n] ** 2 * g[n]).abs() for n in names}
        else:
            per = {n: (theta[n] - initial[n].to(theta[n])).abs() * (theta[n] * g[n]).abs() for n in names}
        return per if unit == "weight" else {n: _rows(p).sum(dim=1) for n, p in per.items()}
    hg = hessian_gradient_product(model, loss_fn, batches, layers=names, gradient=g)
    signed = {n: theta[n] * hg[n] for n in names}
    if measure == "grasp":
        return signed if unit == "weight" else {n: _rows(p).sum(dim=1) for n, p in signed.items()}
    return {n: (p.abs() if unit == "weight" else _rows(p).sum(dim=1).abs()) for n, p in signed.items()}


def snip_scores(model: nn.Module, loss_fn: LossFn, batch: Any, *, layers: Sequence[str] | None = None
                ) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity |θ ⊙ g| on one batch, normalised to sum 1 over all scored weights."""
    raw = flow_scores(model, "loss_preservation", loss_fn, [batch], layers=layers, unit="weight")
    total = sum(t.sum() for t in raw.values())
    if not total > 0:
        raise ValueError("SNIP scores are all zero (the loss gradient vanishes at every weight); cannot normalise")
    return {n: t / total for n, t in raw.items()}


def lamp_scores(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layer name → LAMP score of each weight, shaped like it (ties in |θ| ordered by index)."""
    out = {}
    for name, w in weights.items():
        sq = w.detach().reshape(-1).to(torch.float64) ** 2
        order = torch.sort(sq, stable=True).indices
        suffix = sq[order].flip(0).cumsum(0).flip(0)  # Σ_{v ≥ u} θ_v² in sorted order
        scores = torch.empty_like(sq)
        scores[order] = torch.where(suffix > 0, sq[order] / suffix.clamp_min(torch.finfo(sq.dtype).tiny),
                                    torch.zeros_like(suffix))
        out[name] = scores.reshape(w.shape).to(w.dtype)
    return out


def nm_masks(weights: Mapping[str, torch.Tensor], n: int, m: int) -> dict[str, torch.Tensor]:
    """Keep-masks with exactly ``n`` of every ``m`` consecutive weights along the input dimension (dim 1
    of a Linear ``[out, in]`` or Conv ``[out, in, *kernel]`` weight, at each kernel position) kept:
    the ``n`` largest |θ|, ties to the lower index."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"N:M sparsity needs integers 0 < N <= M, got N={n!r}, M={m!r}")
    out = {}
    for name, w in weights.items():
        if w.dim() < 2 or w.shape[1] % m:
            raise ValueError(f"layer {name!r}: N:M groups run along the input dimension (dim 1), which must be a "
                             f"multiple of M={m}; its weight has shape {tuple(w.shape)}")
        moved = w.detach().movedim(1, -1)  # [out, *kernel, in]
        groups = moved.abs().reshape(*moved.shape[:-1], -1, m)
        top = torch.sort(groups.to(torch.float64), dim=-1, descending=True, stable=True).indices[..., :n]
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        out[name] = keep.reshape(moved.shape).movedim(-1, 1)
    return out
