"""Matching-Pursuit sparse autoencoder (MP-SAE): an unrolled greedy encoder over the decoder's atoms.

Costa, Fel, Lubana, Tolooshams & Ba 2025, "From Flat to Hierarchical: Extracting Sparse
Representations with Matching Pursuit" (NeurIPS 2025, arXiv 2506.03093); repos
KempnerInstitute/overcomplete (``MpSAE``), SAELens (``matching_pursuit``).

    r ← x − b_dec; z ← 0; repeat k times: c = r W_decᵀ; j = argmax_j c_j; z_j += c_j; r −= c_j W_dec,j
    x̂ = z W_dec + b_dec

Each new residual is orthogonal to the atom just used, so ‖r‖ never grows with k and k can be
raised at inference (``encode_codes(x, k=...)``). The argmax is constant under backprop; the loss is
L_rec only, atoms are renormalised after every step. Check: atoms (1,0),(0.6,0.8), x = (1,1) →
z = (0.16, 1.4) after 2 steps, ‖r‖² = 0.0144.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig

__all__ = ["MatchingPursuitConfig", "MatchingPursuitSAE", "matching_pursuit"]


@dataclass(frozen=True, kw_only=True)
class MatchingPursuitConfig(SAEConfig):
    """A matching-pursuit SAE. Loss: sum over d, mean over tokens (no sparsity penalty)."""

    k: int = 16
    """Greedy steps T (at most T active latents)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in 1..d_sae={self.d_sae}, got k={self.k}")


def matching_pursuit(r: Tensor, atoms: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Run k greedy steps on residuals ``r [B, d]`` over unit ``atoms [n, d]``; returns (z [B, n], r)."""
    z = r.new_zeros(r.shape[0], atoms.shape[0])
    for _ in range(k):
        c = r @ atoms.t()
        j = c.detach().argmax(-1, keepdim=True)
        cj = c.gather(-1, j).to(r.dtype)  # c is in the low dtype under autocast
        z = z.scatter_add(-1, j, cj)
        r = r - cj * atoms[j.squeeze(-1)]
    return z, r


class MatchingPursuitSAE(SAE):
    """MP-SAE: encoder = k matching-pursuit steps over W_dec (no W_enc)."""

    architecture = "mp"
    config_cls = MatchingPursuitConfig
    default_lr = 1e-3
    cfg: MatchingPursuitConfig

    def __init__(self, cfg: MatchingPursuitConfig) -> None:
        super().__init__(cfg)
        del self.W_enc, self.b_enc
        self.register_buffer("input_scale", torch.tensor(1.0))

    def encode_codes(self, x: Tensor, k: int | None = None) -> Codes:
        z, _ = matching_pursuit(x * self.input_scale - self.b_dec, self.W_dec, k or self.cfg.k)
        return Codes.from_dense(z)

    def decode_codes(self, codes: Codes) -> Tensor:
        return (codes.dense() @ self.W_dec + self.b_dec) / self.input_scale

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        self.input_scale.mul_(s)
