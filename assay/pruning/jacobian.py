"""Jacobian-matching distillation: match a teacher's outputs and its input gradients.

Srinivas & Fleuret 2018, "Knowledge Transfer with Jacobian Matching" (ICML 2018, arXiv 1803.00443).
Matching input-Jacobians is distillation with input noise: for ξ ~ N(0, σ²I),

    E_ξ ‖T(x + ξ) − S(x + ξ)‖² = ‖T(x) − S(x)‖² + σ²·‖J_T(x) − J_S(x)‖²_F + O(σ⁴)   (exact for affine T, S).

The loss (dynamics spec §4) for a teacher t and student s with outputs (logits) z:

    L = [CE(y, s(x))] + α·output_match(t(x), s(x)) + β·jacobian_term
    output_match = τ²·KL(softmax(t/τ) ‖ softmax(s/τ))  ("kd")  or  ‖t(x) − s(x)‖²  ("mse")
    normalised:    jacobian_term = (1/|O|) Σ_{o∈O} ‖ĵ_t^o − ĵ_s^o‖²,  ĵ^o = ∇_x z_o / ‖∇_x z_o‖₂  (= 2 − 2cos)
    unnormalised:  jacobian_term = Σ_{o∈O} ‖∇_x t_o − ∇_x s_o‖²

averaged over the batch. O is, per example: the teacher's arg-max output (the paper's practical
choice), its top k, the true label, every output (the full Jacobian, for few outputs), or random
projections z·v with v ~ N(0, I), for which the unnormalised term is an unbiased estimate of
‖J_t − J_s‖²_F. With O = all outputs, ``normalise=False``, ``output_loss="mse"`` and β = σ², L is the
small-noise equivalent of MSE distillation under Gaussian input noise.

Input gradients are taken with ``torch.autograd.grad`` on separate leaf copies of x for teacher and
student (``create_graph=True`` for the student only, so the loss is differentiable in the student's
parameters); per-example outputs are picked with ``gather``-style weights, never by column. Examples
must not interact in the forward pass (no batch-norm in training mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["JacobianMatchingConfig", "JacobianMatchingLoss", "input_gradients", "jacobian_matching_loss"]


@dataclass(frozen=True, kw_only=True)
class JacobianMatchingConfig:
    """The terms of the Jacobian-matching distillation loss and which output gradients are matched."""

    jacobian_weight: float = 1.0
    """β, the weight of the Jacobian term."""
    outputs: Literal["teacher_top", "top_k", "label", "all", "projection"] = "teacher_top"
    """Which output gradients to match per example: the teacher's arg-max, its top ``k``, the true label,
    every output (the full Jacobian), or ``n_projections`` random Gaussian projections of the outputs."""
    k: int = 1
    """How many of the teacher's top outputs ``"top_k"`` matches."""
    n_projections: int = 1
    """How many random projections ``"projection"`` draws per example."""
    normalise: bool = True
    """Match unit-norm input gradients (the paper's choice); False: raw gradients, summed over outputs."""
    output_loss: Literal["kd", "mse", "none"] = "kd"
    """How outputs are matched: τ²·KL of softened softmaxes, squared error summed over outputs, or not at all."""
    output_weight: float = 1.0
    """α, the weight of the output-matching term."""
    temperature: float = 4.0
    """τ of the ``"kd"`` output loss."""

    def __post_init__(self) -> None:
        if self.jacobian_weight < 0 or self.output_weight < 0:
            raise ValueError(f"weights must be >= 0, got jacobian_weight={self.jacobian_weight}, "
                             f"output_weight={self.output_weight}")
        if self.k < 1 or self.n_projections < 1:
            raise ValueError(f"k and n_projections must be >= 1, got k={self.k}, n_projections={self.n_projections}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class JacobianMatchingLoss(NamedTuple):
    """The loss and its parts (each a scalar tensor, differentiable in the student's parameters)."""

    total: torch.Tensor
    """ce + output_weight·output + jacobian_weight·jacobian."""
    ce: torch.Tensor
    """Cross-entropy of the student against the labels (0 when no labels are given)."""
    output: torch.Tensor
    """The unweighted output-matching term."""
    jacobian: torch.Tensor
    """The unweighted Jacobian term."""


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh leaf copy of x and the model's outputs on it, with the graph kept."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(leaf)
    if z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"Jacobian matching needs outputs of shape [batch, n_out]; the model returned "
                         f"{tuple(z.shape)} for a batch of {x.shape[0]}")
    return leaf, z


def input_gradients(z: torch.Tensor, x: torch.Tensor, directions: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """Input gradients ∇_x (v_bᵀ z_b) of outputs ``z`` [batch, n_out] computed from the leaf ``x``.

    ``directions`` is [batch, n_dir, n_out] (example b, direction k: the output weights v). Returns
    [batch, n_dir, *x.shape[1:]]; per-example gradients as long as examples do not interact.
    """
    with torch.enable_grad():
        grads = [torch.autograd.grad((z * directions[:, k]).sum(), x, create_graph=create_graph,
                                     retain_graph=True)[0] for k in range(directions.shape[1])]
    return torch.stack(grads, dim=1)


def _directions(cfg: JacobianMatchingConfig, t: torch.Tensor, labels: torch.Tensor | None,
                generator: torch.Generator | None) -> torch.Tensor:
    b, c = t.shape
    if cfg.outputs == "projection":
        return torch.randn(b, cfg.n_projections, c, generator=generator, dtype=t.dtype).to(t.device)
    if cfg.outputs == "all":
        idx = torch.arange(c, device=t.device).expand(b, c)
    elif cfg.outputs == "label":
        if labels is None:
            raise ValueError("outputs='label' matches the true class's gradient: pass labels=")
        idx = labels.long().view(b, 1)
    else:
        k = 1 if cfg.outputs == "teacher_top" else cfg.k
        if k > c:
            raise ValueError(f"top_k with k={k} needs at least k outputs, the teacher has {c}")
        idx = t.topk(k, dim=1).indices
    return F.one_hot(idx, c).to(t.dtype)  # [b, |O|, c]: one output per row, picked per example


def jacobian_matching_loss(
    teacher: nn.Module, student: nn.Module, x: torch.Tensor, config: JacobianMatchingConfig | None = None, *,
    labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> JacobianMatchingLoss:
    """The Jacobian-matching distillation loss of ``student`` against ``teacher`` on the batch ``x``.

    ``labels`` (long [batch]) add the cross-entropy term and are needed for ``outputs="label"``;
    ``generator`` draws the projections of ``outputs="projection"``. The teacher's gradients are
    detached; the student's carry a graph, so ``loss.total.backward()`` trains the student.
    """
    cfg = config or JacobianMatchingConfig()
    if labels is not None and labels.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape [batch] = {tuple(x.shape[:1])}, got {tuple(labels.shape)}")
    x_t, t = _forward(teacher, x)
    x_s, s = _forward(student, x)
    if s.shape != t.shape:
        raise ValueError(f"student outputs {tuple(s.shape)} do not match the teacher's {tuple(t.shape)}")
    directions = _directions(cfg, t.detach(), labels, generator)
    g_t = input_gradients(t, x_t, directions, create_graph=False).detach()
    g_s = input_gradients(s, x_s, directions, create_graph=True)
    t = t.detach()

    g_t, g_s = g_t.flatten(2), g_s.flatten(2)
    if cfg.normalise:
        g_t = g_t / g_t.norm(dim=2, keepdim=True).clamp(min=1e-12)
        g_s = g_s / g_s.norm(dim=2, keepdim=True).clamp(min=1e-12)
        jac = (g_t - g_s).pow(2).sum(2).mean(1).mean()
    else:
        per_direction = (g_t - g_s).pow(2).sum(2)
        jac = (per_direction.mean(1) if cfg.outputs == "projection" else per_direction.sum(1)).mean()

    if cfg.output_loss == "kd":
        tau = cfg.temperature
        out = tau**2 * F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), log_target=True,
                                reduction="batchmean")
    elif cfg.output_loss == "mse":
        out = (s - t).pow(2).sum(1).mean()
    else:
        out = s.new_zeros(())
    ce = F.cross_entropy(s, labels.long()) if labels is not None else s.new_zeros(())
    total = ce + cfg.output_weight * out + cfg.jacobian_weight * jac
    return JacobianMatchingLoss(total, ce, out, jac)
