"""Reconstruction metrics of an encoder–decoder (SAE or any Lens), defined once, streamed as sums.

Definitions (SAEBench, Karvonen et al. 2025). Over N tokens with the
global per-dimension mean μ = (1/N) Σ_b x_b:

    MSE = (1/N) Σ_b ‖x_b − x̂_b‖²                    (sum over d, mean over tokens)
    FVU = Σ_b ‖x_b − x̂_b‖² / Σ_b ‖x_b − μ‖²          (a ratio of sums; 1 − FVU = explained variance)
    cosine = mean_b cos(x_b, x̂_b);  L2 ratio = mean_b ‖x̂_b‖/‖x_b‖;
    relative reconstruction bias = E‖x̂‖² / E[x·x̂]  (Rajamanoharan et al. 2024, "Improving Dictionary
    Learning with Gated Sparse Autoencoders", Eq. 10)

Streaming keeps Σx, Σ‖x‖², Σ‖x − x̂‖² and N; Σ‖x − μ‖² = Σ‖x‖² − N‖μ‖² (accumulated in float64).
Known peer bugs this avoids: variance about zero (SAELens#665), mean of per-token ratios (#443),
ignoring a constant bias in the residual (dictionary_learning ``frac_variance_explained``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ReconstructionMetrics", "ReconstructionAccumulator", "reconstruction_metrics", "fvu"]


class ReconstructionMetrics(NamedTuple):
    """Reconstruction quality over a set of tokens."""

    mse: float
    """(1/N) Σ_b ‖x_b − x̂_b‖²."""
    fvu: float
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − μ‖²."""
    explained_variance: float
    """1 − FVU."""
    cosine: float
    """mean_b cos(x_b, x̂_b)."""
    l2_ratio: float
    """mean_b ‖x̂_b‖/‖x_b‖ (shrinkage below 1)."""
    relative_bias: float
    """E‖x̂‖² / E[x·x̂] (1 = unbiased scale)."""
    n_tokens: int
    """N."""


class ReconstructionAccumulator:
    """Streaming sums for :class:`ReconstructionMetrics`; ``update`` per batch, ``result`` at the end."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_x: Tensor | None = None
        self.sum_sq = 0.0
        self.sum_res = 0.0
        self.sum_cos = 0.0
        self.sum_ratio = 0.0
        self.sum_xhat_sq = 0.0
        self.sum_dot = 0.0

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor) -> None:
        if x.shape != x_hat.shape:
            raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
        x = x.reshape(-1, x.shape[-1]).double()
        x_hat = x_hat.reshape(-1, x.shape[-1]).double()
        sx = x.sum(0)
        self.sum_x = sx if self.sum_x is None else self.sum_x + sx
        self.n += x.shape[0]
        self.sum_sq += x.pow(2).sum().item()
        self.sum_res += (x - x_hat).pow(2).sum().item()
        nx, nh = x.norm(dim=-1), x_hat.norm(dim=-1)
        dot = (x * x_hat).sum(-1)
        self.sum_cos += (dot / (nx * nh).clamp(min=1e-12)).sum().item()
        self.sum_ratio += (nh / nx.clamp(min=1e-12)).sum().item()
        self.sum_xhat_sq += nh.pow(2).sum().item()
        self.sum_dot += dot.sum().item()

    def result(self) -> ReconstructionMetrics:
        if self.n == 0 or self.sum_x is None:
            raise ValueError("no tokens were accumulated")
        mu = self.sum_x / self.n
        total = self.sum_sq - self.n * mu.pow(2).sum().item()
        f = self.sum_res / total if total > 0 else float("nan")
        return ReconstructionMetrics(
            mse=self.sum_res / self.n,
            fvu=f,
            explained_variance=1.0 - f,
            cosine=self.sum_cos / self.n,
            l2_ratio=self.sum_ratio / self.n,
            relative_bias=self.sum_xhat_sq / self.sum_dot if self.sum_dot != 0 else float("nan"),
            n_tokens=self.n,
        )


def reconstruction_metrics(x: Tensor, x_hat: Tensor) -> ReconstructionMetrics:
    """All reconstruction metrics of one batch ``x, x_hat [..., d]``."""
    acc = ReconstructionAccumulator()
    acc.update(x, x_hat)
    return acc.result()


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Differentiable FVU of one batch: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (a tensor, for losses and logging)."""
    x = x.reshape(-1, x.shape[-1])
    x_hat = x_hat.reshape(-1, x.shape[-1])
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
