"""Error of a per-example estimate against a reference value (an estimator scored against ground truth).

Han*, Srinivas* & Lakkaraju 2024, "Characterizing Data Point Vulnerability via Average-Case Robustness"
(UAI 2024), score each estimator of p_σ(x) by its mean absolute error against Monte Carlo over a set
of points:

    MAE(p̂, p) = (1/B) Σ_b |p̂_b − p_b|
"""

from __future__ import annotations

import torch

__all__ = ["mean_absolute_error"]


def mean_absolute_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """(1/B) Σ_b |estimate_b − reference_b| over tensors of the same shape (at least one element)."""
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but reference {tuple(reference.shape)}; "
                         "pass one value per example for both")
    if estimate.numel() == 0:
        raise ValueError("mean_absolute_error needs at least one example")
    return float((estimate.double() - reference.double()).abs().mean())
