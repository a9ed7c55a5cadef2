"""Matryoshka (BatchTopK) sparse autoencoder: nested prefixes of latents each reconstruct x.

Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with Matryoshka Sparse
Autoencoders" (arXiv 2503.17547); Nabeshima 2024; repos noanabeshima/matryoshka-saes,
saprmarks/dictionary_learning (``MatryoshkaBatchTopKTrainer``), SAELens (``matryoshka_batchtopk``).

With cumulative group ends m_1 < … < m_G = n and codes z from one BatchTopK over all n latents,

    x̂^(g) = b_dec + Σ_{i < m_g} z_i W_dec,i,    L = Σ_g w_g · mean_b‖x − x̂^(g)‖² + α·L_aux(full residual).

Groups are nested prefixes, not disjoint. G = 1 with w = 1 is exactly BatchTopK.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from assay.config import ConfigError
from assay.dictionaries.base import SAEOutput, detach_codes, rec_loss
from assay.dictionaries.batchtopk import BatchTopKConfig, BatchTopKSAE

__all__ = ["MatryoshkaConfig", "MatryoshkaSAE", "group_ends"]


@dataclass(frozen=True, kw_only=True)
class MatryoshkaConfig(BatchTopKConfig):
    """A Matryoshka BatchTopK SAE. Loss: sum over d, mean over tokens, weighted over prefixes."""

    group_fractions: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32)
    """Fraction of latents in each group (sums to 1); prefix g uses groups 1..g."""
    group_weights: tuple[float, ...] | None = None
    """Loss weight of each prefix (None: uniform 1/G)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if abs(sum(self.group_fractions) - 1.0) > 1e-6 or any(f <= 0 for f in self.group_fractions):
            raise ConfigError(f"group_fractions must be positive and sum to 1, got {self.group_fractions}")
        if self.group_weights is not None and len(self.group_weights) != len(self.group_fractions):
            raise ConfigError("group_weights must have one entry per group_fractions entry")
        ends = group_ends(self.d_sae, self.group_fractions)
        if len(set(ends)) != len(ends) or ends[0] == 0:
            raise ConfigError(f"d_sae={self.d_sae} is too small for {len(ends)} non-empty groups")


def group_ends(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Cumulative group ends m_1 < … < m_G = n."""
    ends, acc = [], 0.0
    for f in fractions[:-1]:
        acc += f
        ends.append(round(acc * n))
    return [*ends, n]


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka SAE over BatchTopK codes."""

    architecture = "matryoshka"
    config_cls = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def forward(self, x: Tensor, *, target: Tensor | None = None, dead: Tensor | None = None,
                sparsity_scale: float = 1.0) -> SAEOutput:
        if target is not None:
            raise ValueError("a Matryoshka SAE reconstructs its input; it takes no separate target")
        x = self._flat(x, self.d_in, "activations")
        codes = self.train_codes(x)
        z = codes.values
        ends = group_ends(self.d_sae, self.cfg.group_fractions)
        weights = self.cfg.group_weights or tuple(1.0 / len(ends) for _ in ends)
        x_hat = self.b_dec.expand_as(x)
        start, loss = 0, x.new_zeros(())
        for end, w in zip(ends, weights):
            x_hat = x_hat + z[:, start:end] @ self.W_dec[start:end]
            loss = loss + w * rec_loss(x, x_hat)
            start = end
        _, aux = self.loss_terms(x, codes, x_hat, dead)
        return SAEOutput(x_hat, detach_codes(codes), loss + aux, rec_loss(x, x_hat).detach(),
                         x.new_zeros(()), aux.detach())
