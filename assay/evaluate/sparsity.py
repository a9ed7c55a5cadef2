"""Sparsity metrics of codes: L0, L1, dead and dense latent fractions (defined once).

Definitions (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"): L0 = mean_b #{i : z_bi ≠ 0}; L1 = mean_b Σ_i |z_bi|; a latent is dead if it fires on
no evaluation token, dense if it fires on more than ``dense_threshold`` of them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SparsityMetrics", "SparsityAccumulator", "sparsity_metrics"]


class SparsityMetrics(NamedTuple):
    """Sparsity of a code matrix over N tokens."""

    l0: float
    """Mean number of non-zero latents per token."""
    l1: float
    """Mean Σ_i |z_i| per token."""
    dead_fraction: float
    """Fraction of latents that never fire."""
    dense_fraction: float
    """Fraction of latents firing on more than ``dense_threshold`` of tokens."""
    firing_rate: Tensor
    """Per-latent firing frequency ``[n]`` (float64)."""
    n_tokens: int
    """N."""


class SparsityAccumulator:
    """Streaming counts for :class:`SparsityMetrics`."""

    def __init__(self, n_latents: int, *, dense_threshold: float = 0.1) -> None:
        self.counts = torch.zeros(n_latents, dtype=torch.float64)
        self.n = 0
        self.sum_l0 = 0.0
        self.sum_l1 = 0.0
        self.dense_threshold = dense_threshold

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """Add dense codes ``z [..., n]``."""
        if z.shape[-1] != self.counts.shape[0]:
            raise ValueError(f"codes have {z.shape[-1]} latents, expected {self.counts.shape[0]}")
        z = z.reshape(-1, z.shape[-1])
        on = z != 0
        self.counts += on.sum(0).to(torch.float64).cpu()
        self.n += z.shape[0]
        self.sum_l0 += on.sum().item()
        self.sum_l1 += z.abs().double().sum().item()

    def result(self) -> SparsityMetrics:
        if self.n == 0:
            raise ValueError("no tokens were accumulated")
        rate = self.counts / self.n
        return SparsityMetrics(
            l0=self.sum_l0 / self.n,
            l1=self.sum_l1 / self.n,
            dead_fraction=(self.counts == 0).double().mean().item(),
            dense_fraction=(rate > self.dense_threshold).double().mean().item(),
            firing_rate=rate,
            n_tokens=self.n,
        )


def sparsity_metrics(z: Tensor, *, dense_threshold: float = 0.1) -> SparsityMetrics:
    """Sparsity metrics of one code matrix ``z [..., n]``."""
    acc = SparsityAccumulator(z.shape[-1], dense_threshold=dense_threshold)
    acc.update(z)
    return acc.result()
