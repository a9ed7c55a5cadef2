"""Mode connectivity: paths between two trained models and the loss barrier along them.

Lubana, Bigelow, Dick, Krueger, Tanaka 2023, "Mechanistic Mode Connectivity" (ICML 2023); Garipov,
Izmailov, Podoprikhin, Vetrov, Wilson 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling
of DNNs" (the quadratic Bézier path); Frankle, Dziugaite, Roy, Carbin 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis"; Entezari, Sedghi, Saukh, Neyshabur 2022 (the barrier
against the chord); Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin" (the barrier against the mean).

Paths (α = 0 is model A, always — MMC's ``lmc`` has the reverse orientation)::

    linear    θ(α) = (1 − α)·θ_A + α·θ_B
    Bézier    θ(α) = (1 − α)²·θ_A + 2α(1 − α)·θ_M + α²·θ_B

Every floating-point parameter and buffer is interpolated; integer buffers are copied from A. With
L(α) the loss at θ(α) on a fixed batch (``loss_fn(model)``), the barriers are::

    B_lin = max(0, max_α [L(α) − ((1 − α)·L(0) + α·L(1))])     (assay's default: 0 for any convex loss)
    B_mid = max_α L(α) − ½·(L(0) + L(1))                        (Git Re-Basin; |L_A − L_B|/2 on a convex path)

The Bézier control point θ_M is trained with α ∼ U[0, 1] per step and
∂L/∂θ_M = 2α(1 − α)·∇L(θ(α)) (MMC scales the learning rate by the same factor: the same update).
Models with BatchNorm are refused: their statistics would have to be recomputed at every α.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["State", "check_same_architecture", "interpolate", "barriers", "LossPath", "loss_path",
           "fit_bezier", "DEFAULT_ALPHAS"]

State = Mapping[str, Tensor]
"""A model's ``state_dict()``: parameter and buffer name → tensor."""
LossFn = Callable[[nn.Module], Tensor]
"""``model -> scalar loss`` on a fixed batch (a tensor, differentiable for :func:`fit_bezier`)."""

DEFAULT_ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
"""The spec's α grid, linspace(0, 1, 11)."""


def check_same_architecture(a: State, b: State, *, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise a ValueError naming the first parameter where ``a`` and ``b`` differ (missing, shape or dtype)."""
    na, nb = names
    for key in a:
        if key not in b:
            raise ValueError(f"models {na} and {nb} have different architectures: parameter {key!r} of {na} is "
                             f"missing from {nb}; interpolate only between models built from the same config")
        if a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
            raise ValueError(f"models {na} and {nb} have different architectures: parameter {key!r} is "
                             f"{tuple(a[key].shape)} {a[key].dtype} in {na} but {tuple(b[key].shape)} {b[key].dtype} "
                             f"in {nb}; interpolate only between models built from the same config")
    extra = [k for k in b if k not in a]
    if extra:
        raise ValueError(f"models {na} and {nb} have different architectures: parameter {extra[0]!r} of {nb} is "
                         f"missing from {na}; interpolate only between models built from the same config")


def interpolate(a: State, b: State, alpha: float, *, mid: State | None = None) -> dict[str, Tensor]:
    """θ(α) on the linear path (``mid=None``) or the quadratic Bézier path through control point ``mid``."""
    check_same_architecture(a, b)
    if mid is not None:
        check_same_architecture(a, mid, names=("A", "the control point"))
    out = {}
    for k, ta in a.items():
        if not torch.is_floating_point(ta):
            out[k] = ta.clone()
        elif mid is None:
            out[k] = (1 - alpha) * ta + alpha * b[k]
        else:
            out[k] = (1 - alpha) ** 2 * ta + 2 * alpha * (1 - alpha) * mid[k] + alpha**2 * b[k]
    return out


def barriers(alphas: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """``(B_lin, B_mid)`` of a loss curve whose first and last points are the two end models."""
    if len(alphas) != len(losses) or len(alphas) < 2 or alphas[0] != 0 or alphas[-1] != 1:
        raise ValueError("a loss path needs matching alphas and losses that start at α = 0 and end at α = 1")
    la, lb = float(losses[0]), float(losses[-1])
    b_lin = max(0.0, max(float(lo) - ((1 - al) * la + al * lb) for al, lo in zip(alphas, losses)))
    b_mid = max(float(lo) for lo in losses) - 0.5 * (la + lb)
    return b_lin, b_mid


class LossPath(NamedTuple):
    """The loss along a path between models A (α = 0) and B (α = 1)."""

    alphas: tuple[float, ...]
    """The α grid."""
    losses: tuple[float, ...]
    """L(θ(α)) at each α."""
    barrier: float
    """B_lin: the largest excess of the loss over the chord between the end losses (≥ 0)."""
    barrier_mid: float
    """B_mid: the largest loss on the path minus the mean of the end losses (Git Re-Basin)."""


def _refuse_batchnorm(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"model has BatchNorm at {name!r}; its running statistics would have to be recomputed at "
                             "every α, which mode connectivity here does not do — use a model without BatchNorm")


@torch.no_grad()
def loss_path(
    model: nn.Module, a: State, b: State, loss_fn: LossFn, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
    mid: State | None = None,
) -> LossPath:
    """Evaluate ``loss_fn`` along the path from state ``a`` to ``b`` (Bézier through ``mid`` if given).

    ``model`` is a module of the right architecture used as the vessel: each θ(α) is loaded into it
    (its own weights are restored afterwards), in eval mode.
    """
    _refuse_batchnorm(model)
    check_same_architecture(dict(model.state_dict()), a, names=("the vessel model", "A"))
    keep = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()
    try:
        losses = []
        for al in alphas:
            model.load_state_dict(interpolate(a, b, float(al), mid=mid))
            losses.append(float(loss_fn(model)))
    finally:
        model.load_state_dict(keep)
        model.train(was_training)
    alphas = tuple(float(x) for x in alphas)
    return LossPath(alphas, tuple(losses), *barriers(alphas, losses))


def fit_bezier(
    model: nn.Module, a: State, b: State, loss_fn: LossFn, *, steps: int = 500, lr: float = 0.05,
    momentum: float = 0.9, generator: torch.Generator,
) -> dict[str, Tensor]:
    """Train the Bézier control point θ_M (started at the midpoint (θ_A + θ_B)/2, where the curve is the
    linear path) by SGD with α ∼ U[0, 1] per step; returns θ_M. ``model`` is the vessel (restored after)."""
    if steps < 1 or not lr > 0:
        raise ValueError(f"fit_bezier needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    _refuse_batchnorm(model)
    check_same_architecture(dict(model.state_dict()), a, names=("the vessel model", "A"))
    mid = interpolate(a, b, 0.5)
    floats = [k for k, v in mid.items() if torch.is_floating_point(v) and k in dict(model.named_parameters())]
    velocity = {k: torch.zeros_like(mid[k]) for k in floats}
    keep = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            alpha = float(torch.rand((), generator=generator))
            with torch.no_grad():
                model.load_state_dict(interpolate(a, b, alpha, mid=mid))
            model.zero_grad(set_to_none=True)
            loss_fn(model).backward()
            with torch.no_grad():
                for k in floats:
                    g = params[k].grad
                    if g is None:
                        continue
                    velocity[k].mul_(momentum).add_(2 * alpha * (1 - alpha) * g)
                    mid[k] -= lr * velocity[k]
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.load_state_dict(keep)
        model.train(was_training)
    return mid
