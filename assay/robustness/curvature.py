"""Input-space curvature: Hessian spectral norm by power iteration, normalised curvature, Taylor traces.

Srinivas*, Matoba*, Lakkaraju & Fleuret 2022, "Efficient Training of Low-Curvature Neural
Networks" (NeurIPS 2022). For the loss ℓ(x) = NLL(log_softmax(f(x)), y):

    C(x) = ‖∇²_x ℓ‖₂ / (‖∇_x ℓ‖₂ + 1e-6)

‖∇²ℓ‖₂ comes from power iteration on Hessian-vector products (double backward through one
gradient graph): u₀ ∼ N(0, I) normalised per example, u ← Hu/‖Hu‖; the spec's result is |uᵀHu|,
reported here as ‖Hu‖ at the last u, which is never smaller and converges faster (both are lower
bounds on ‖H‖₂; they agree at convergence). Examples must
not interact (BatchNorm in eval mode): the HVP of the summed loss is then per example.

Taylor trace (Srinivas & Fleuret 2021, §6 of the spec): for v ∼ N(0, σ²I),
E[(2/σ²)(f(x + v) − f(x))] = tr ∇²f(x) + O(σ²) (exact for quadratics: the first-order term has mean 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from assay.robustness.validate import check_positive, check_target, classifier_logits

__all__ = ["HessianNorm", "Curvature", "hessian_spectral_norm", "loss_curvature", "normalised_curvature",
           "taylor_trace"]

ScalarFn = Callable[[torch.Tensor], torch.Tensor]


class HessianNorm(NamedTuple):
    """Per-example Hessian spectral norm and gradient norm of a scalar function of the input."""

    hessian_norm: torch.Tensor
    """‖Hu‖ (≥ |uᵀHu|) at the last power-iteration vector ``[B]``: a lower bound on ‖H‖₂."""
    grad_norm: torch.Tensor
    """‖∇_x fn‖₂ ``[B]``."""
    direction: torch.Tensor
    """The top eigenvector estimate u, shaped like the input."""


class Curvature(NamedTuple):
    """Normalised curvature of the loss per example."""

    curvature: torch.Tensor
    """‖H‖₂/(‖∇‖₂ + ε) ``[B]``."""
    hessian_norm: torch.Tensor
    """‖∇²_x ℓ‖₂ ``[B]``."""
    grad_norm: torch.Tensor
    """‖∇_x ℓ‖₂ ``[B]``."""


def _per_example_normalise(t: torch.Tensor) -> torch.Tensor:
    n = t.reshape(t.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    return t / n.reshape(-1, *([1] * (t.ndim - 1)))


def hessian_spectral_norm(fn: ScalarFn, x: torch.Tensor, *, iters: int = 20,
                          generator: torch.Generator | None = None) -> HessianNorm:
    """Power iteration for ‖∇²_x fn‖₂ per example; ``fn`` maps ``x [B, ...]`` to ``[B]``."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0],):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"fn must return one scalar per example, shape [{x.shape[0]}], got {got}")
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        u = _per_example_normalise(torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator))
        hu = None
        for _ in range(iters):
            if hu is not None:
                u = _per_example_normalise(hu)
            (hu,) = torch.autograd.grad(grad, x, grad_outputs=u, retain_graph=True)
            hu = hu.detach()
        rayleigh = (u * hu).reshape(x.shape[0], -1).sum(1).abs()
        # ‖Hu‖ ≥ |uᵀHu| and, for symmetric H, ‖H^k u₀‖/‖H^{k−1}u₀‖ rises monotonically to ‖H‖₂, so
        # ‖Hu‖ is the tighter lower bound (it converges where the Rayleigh quotient of a start mixing
        # eigenvalues of opposite sign still cancels)
        hu_norm = hu.reshape(x.shape[0], -1).norm(dim=1)
    return HessianNorm(torch.maximum(rayleigh, hu_norm).detach(), grad.detach().reshape(x.shape[0], -1).norm(dim=1),
                       u.detach())


def normalised_curvature(hessian_norm: torch.Tensor, grad_norm: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """C = ‖H‖/(‖∇‖ + eps)."""
    return hessian_norm / (grad_norm + eps)


def loss_curvature(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   y: torch.Tensor | None = None, *, iters: int = 20, eps: float = 1e-6,
                   generator: torch.Generator | None = None) -> Curvature:
    """Normalised curvature of the cross-entropy w.r.t. the input (y: labels, default the prediction)."""
    with torch.no_grad():
        y = check_target(y, classifier_logits(model, x))

    def loss(z: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(classifier_logits(model, z), 1), y, reduction="none")

    h = hessian_spectral_norm(loss, x, iters=iters, generator=generator)
    return Curvature(normalised_curvature(h.hessian_norm, h.grad_norm, eps), h.hessian_norm, h.grad_norm)


def taylor_trace(fn: ScalarFn, x: torch.Tensor, sigma: float, *, n_samples: int = 1,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic trace of ∇²fn: mean over v ∼ N(0, σ²I) of (2/σ²)(fn(x + v) − fn(x)), per example.

    Differentiable (used as a training regulariser); unbiased for quadratics."""
    sigma = check_positive("sigma", sigma)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    f0 = fn(x)
    total = torch.zeros_like(f0)
    for _ in range(n_samples):
        v = sigma * torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        total = total + (fn(x + v) - f0)
    return (2.0 / sigma**2) * total / n_samples
