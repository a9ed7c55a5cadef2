"""Integrated Gradients, with a choice of quadrature and any baseline.

Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks":

    IG_i(x) = (x_i − b_i) · ∫₀¹ ∂f_t(b + α(x − b))/∂x_i dα  ≈  (x_i − b_i) · Σ_s q_s ∂f_t(b + α_s(x − b))/∂x_i

with nodes α_s and weights q_s from :func:`assay.attribution.neighbourhoods.quadrature`
(Gauss–Legendre by default, as Captum; Riemann left/right/middle/trapezoid; Captum's trapezoid). In the LFA view (Han,
Srinivas & Lakkaraju 2022) it is gradient matching on the neighbourhood x' = b + α(x − b).
Completeness: Σ_i IG_i = f_t(x) − f_t(b) up to the quadrature error, reported as
``Attribution.completeness_gap``. All B × steps rows run as one chunked batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from assay.attribution import engine
from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.neighbourhoods import Quadrature, quadrature
from assay.config import ConfigError

__all__ = ["IntegratedGradientsConfig", "integrated_gradients"]


@dataclass(frozen=True, kw_only=True)
class IntegratedGradientsConfig(EngineConfig):
    """Integrated Gradients along the straight path from a baseline to the input."""

    name: ClassVar[str] = "integrated_gradients"
    uses_baseline: ClassVar[bool] = True
    complete: ClassVar[bool] = True
    budget_field: ClassVar[str | None] = "steps"

    steps: int = 50
    """Number of quadrature nodes on the path."""
    quadrature: Quadrature = "gauss_legendre"
    """Quadrature rule: gauss_legendre, riemann_left, riemann_right, riemann_middle, riemann_trapezoid
    (the textbook rule: weights 1/(n − 1), halved at both ends, summing to 1) or captum_trapezoid
    (Captum's ``method="riemann_trapezoid"``: weights 1/n, halved at both ends, summing to (n − 1)/n,
    so its IG is the textbook one times (n − 1)/n and misses completeness by that factor)."""
    multiply_by_inputs: bool = True
    """Multiply the path-averaged gradient by (x − baseline) (False gives OpenXAI's variant)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {self.steps}")
        quadrature(self.quadrature, max(2, self.steps))  # validates the rule name


def integrated_gradients(
    model, x: torch.Tensor, target=None, *,
    config: IntegratedGradientsConfig = IntegratedGradientsConfig(),
    baseline: float | torch.Tensor | None = None,
) -> Attribution:
    """IG of f_t at ``x`` from ``baseline`` (0 by default; a scalar, ``[*x]`` or ``[B, *x]``)."""
    engine._check_float(x)
    b = engine.expand_baseline(x, baseline)
    t, out, single, per_row, base_out = engine.probe(model, x, target, config.output, b)
    alphas, weights = quadrature(config.quadrature, config.steps)
    alphas = alphas.to(device=x.device, dtype=x.dtype)
    delta = x - b
    shape = (1, -1) + (1,) * (x.dim() - 1)

    def rows(exs, ss):
        return torch.addcmul(b[exs, None], alphas[ss].view(shape), delta[exs, None])

    chunk = engine.chunk_rows(per_row, config.memory_budget_mb, backward=True, n_rows=x.shape[0] * config.steps)
    g = engine.mean_gradient(model, x, t, rows, weights, output=config.output, chunk=chunk)
    vals = g * delta[:, None] if config.multiply_by_inputs else g
    return engine.finish(vals, t, out, single, "integrated_gradients", baseline_output=base_out)
