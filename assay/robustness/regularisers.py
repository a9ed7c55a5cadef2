"""Gradient-norm, score-matching and anti-score-matching regularisers for input-gradient quality.

Srinivas & Fleuret 2021, "Rethinking the Role of Gradient-based Attribution Methods for Model
Interpretability" (ICLR 2021); reference code ``idiap/rethinking-saliency``. Viewing f_y(x) as an
unnormalised class-conditional log-density, its input gradients are interpretable when they match
the data score; score matching (Hyvärinen 2005) penalises tr ∇²f + ½‖∇f‖² per example:

    s = Σ_b out[b, y_b],  g = ∇_x s,  trH_b = (2/σ²)·mean_n (out(x + v_n) − out(x))[b, y_b]
    R_sm   = mean_b trH_b + ½‖g‖²_F/B + τ·mean_b trH_b²        (defaults N = 1, σ = 0.01, τ = 1e-3)
    R_anti = −mean_b min(trH_b, 1e4)                          (N = 1, σ = 0.001)
    R_gn   = ½‖g‖²_F/B

Training loss = CE(out, y) + λ·R (λ = 1e-5 in the paper). All penalties are differentiable in the
model parameters (the gradient uses ``create_graph=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from assay.robustness.curvature import taylor_trace
from assay.robustness.validate import check_positive, classifier_logits

__all__ = ["gradient_norm_penalty", "score_matching_penalty", "anti_score_matching_penalty"]

Model = Callable[[torch.Tensor], torch.Tensor]


def _selected(model: Model, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(z: torch.Tensor) -> torch.Tensor:
        return classifier_logits(model, z).gather(1, y[:, None]).squeeze(1)

    return fn


def _grad_sq(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    s = _selected(model, y)(x).sum()
    (g,) = torch.autograd.grad(s, x, create_graph=True)
    return g.pow(2).sum() / x.shape[0]


def gradient_norm_penalty(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R_gn = ½‖∇_x Σ_b out[b, y_b]‖²/B."""
    return 0.5 * _grad_sq(model, x, y)


def score_matching_penalty(model: Model, x: torch.Tensor, y: torch.Tensor, *, sigma: float = 0.01,
                           n_samples: int = 1, tau: float = 1e-3,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """R_sm = mean trH + ½‖g‖²/B + τ·mean trH² (Hessian trace by the Taylor estimator)."""
    sigma = check_positive("sigma", sigma)
    tr = taylor_trace(_selected(model, y), x, sigma, n_samples=n_samples, generator=generator)
    return tr.mean() + 0.5 * _grad_sq(model, x, y) + tau * tr.pow(2).mean()


def anti_score_matching_penalty(model: Model, x: torch.Tensor, y: torch.Tensor, *, sigma: float = 0.001,
                                n_samples: int = 1, clip: float = 1e4,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """R_anti = −mean min(trH, clip): rewards positive curvature (makes gradients less interpretable)."""
    sigma = check_positive("sigma", sigma)
    tr = taylor_trace(_selected(model, y), x, sigma, n_samples=n_samples, generator=generator)
    return -tr.clamp(max=clip).mean()
