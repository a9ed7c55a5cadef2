"""BatchTopK sparse autoencoder, with a global inference threshold.

Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders" (arXiv 2412.06410); repos
bartbussmann/BatchTopK, saprmarks/dictionary_learning (``BatchTopKTrainer``), SAELens (``batchtopk``).

Training keeps the k·B largest entries of ReLU(pre) over the whole batch (rows get more or fewer
than k). Inference must not depend on the batch: z = a·1[a > θ] with θ an EMA (β = 0.999, from
``threshold_start``) of the minimum positive kept value per batch, initialised with the first
estimate. Same loss (L_rec + α·AuxK), init and unit-norm decoder as TopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from assay.config import ConfigError
from assay.dictionaries.base import Codes
from assay.dictionaries.topk import TopKConfig, TopKSAE

__all__ = ["BatchTopKConfig", "BatchTopKSAE", "batch_topk_codes"]


@dataclass(frozen=True, kw_only=True)
class BatchTopKConfig(TopKConfig):
    """A BatchTopK SAE (Bussmann et al. 2024). Reconstruction loss: sum over d, mean over tokens."""

    threshold_start: int = 1000
    """Training step from which the inference threshold θ is estimated."""
    threshold_beta: float = 0.999
    """EMA decay of θ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.threshold_beta < 1.0:
            raise ConfigError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}")


def batch_topk_codes(pre: Tensor, k: int) -> Tensor:
    """Keep the k·B largest entries of ReLU(pre ``[B, n]``) over the whole batch.

    Check: [[5,4,3,0],[1,0.5,0.2,0.1]], k=2 → [[5,4,3,0],[1,0,0,0]].
    """
    a = pre.relu()
    flat = a.reshape(-1)
    values, indices = flat.topk(min(k * a.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(a)


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE: batch-level TopK in training, a learned global threshold at inference."""

    architecture = "batchtopk"
    config_cls = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.centre(x) @ self.W_enc + self.b_enc

    def train_codes(self, x: Tensor) -> Codes:
        return Codes.from_dense(batch_topk_codes(self.pre_acts(x), self.cfg.k))

    def encode_codes(self, x: Tensor) -> Codes:
        pre = self.pre_acts(x)
        if self.threshold < 0:  # no threshold yet: fall back to per-row TopK (batch-independent)
            values, indices = pre.relu().topk(self.cfg.k, dim=-1)
            return Codes.from_dense(torch.zeros_like(pre).scatter(-1, indices, values))
        return Codes.from_dense(pre * (pre > self.threshold))

    @torch.no_grad()
    def observe(self, codes: Codes, step: int) -> None:
        if step < self.cfg.threshold_start:
            return
        pos = codes.values[codes.values > 0]
        if pos.numel() == 0:
            return
        m = pos.min().to(self.threshold.dtype)
        if self.threshold < 0:
            self.threshold.copy_(m)
        else:
            b = self.cfg.threshold_beta
            self.threshold.copy_(b * self.threshold + (1 - b) * m)

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        super().fold_input_scale(s)  # pre-activations are unchanged, so θ stays
