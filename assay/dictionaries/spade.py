"""SpaDE: sparsemax distance encoder.

Hindupur, Lubana, Fel & Ba 2025, "Projecting Assumptions: The Duality Between Sparse Autoencoders
and Concept Geometry" (NeurIPS 2025, arXiv 2503.01822); repo Sai-Sumedh/SaeConceptDuality-SpaDE.

    dist_i = ‖x − A_e,i‖²,   z = sparsemax(−λ · dist),  λ = softplus(λ_pre) (init 1/(2d)),
    x̂ = z A_d  (A_d init A_eᵀ, not normalised, no biases),
    L = mean_b‖x − x̂‖² + γ · mean_b Σ_i z_i dist_i.

sparsemax(v) = max(v − τ, 0) with τ = (Σ_{j≤k*} u_j − 1)/k*, u sorted descending and
k* = max{k : 1 + k·u_k > Σ_{j≤k} u_j}; its Jacobian on the support is I − 11ᵀ/|S|.
Checks: sparsemax(1, 0.5, −1) = (0.75, 0.25, 0); prototypes (0,0),(1,0),(0,1), x = (0.2, 0.1),
λ = 1/4 → z = (0.45, 0.30, 0.25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig

__all__ = ["SpaDEConfig", "SpaDESAE", "sparsemax"]


@dataclass(frozen=True, kw_only=True)
class SpaDEConfig(SAEConfig):
    """A SpaDE dictionary. Loss: sum over d, mean over tokens, plus γ·distance-weighted L1."""

    gamma: float = 0.1
    """Weight γ of the distance-weighted L1 term."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma < 0:
            raise ConfigError(f"gamma must be >= 0, got {self.gamma}")


def sparsemax(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` onto the probability simplex (Martins & Astudillo 2016)."""
    u, _ = v.sort(dim=-1, descending=True)
    ks = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    support = (1 + ks * u) > u.cumsum(-1)
    k_star = support.sum(-1, keepdim=True)
    tau_sorted = (u.detach().cumsum(-1).gather(-1, k_star - 1) - 1) / k_star
    mask = (v.detach() > tau_sorted).to(v.dtype)  # the support, held constant under autograd
    tau = ((v * mask).sum(-1, keepdim=True) - 1) / mask.sum(-1, keepdim=True)
    return (v - tau).clamp(min=0) * mask


class SpaDESAE(SAE):
    """SpaDE: prototypes A_e (encoder), free decoder A_d, learnable inverse temperature λ."""

    architecture = "spade"
    config_cls = SpaDEConfig
    constrained_decoder = False
    median_init = False
    default_lr = 1e-2
    cfg: SpaDEConfig

    def __init__(self, cfg: SpaDEConfig) -> None:
        super().__init__(cfg)
        g = torch.Generator().manual_seed(cfg.seed)
        a = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        del self.W_enc, self.b_enc, self.W_dec, self.b_dec
        self.A_enc = nn.Parameter(a)
        self.A_dec = nn.Parameter(a.clone())
        lam = 1.0 / (2 * cfg.d_in)
        self.lam_pre = nn.Parameter(torch.tensor(math.log(math.expm1(lam))))

    @property
    def W_dec(self) -> Tensor:  # type: ignore[override]
        return self.A_dec

    def distances(self, x: Tensor) -> Tensor:
        return (x.pow(2).sum(-1, keepdim=True) - 2 * x @ self.A_enc.t() + self.A_enc.pow(2).sum(-1)).clamp(min=0)

    def encode_codes(self, x: Tensor) -> Codes:
        return Codes.from_dense(sparsemax(-F.softplus(self.lam_pre) * self.distances(x)))

    def decode_codes(self, codes: Codes) -> Tensor:
        return codes.dense() @ self.A_dec

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.cfg.gamma * (codes.values * self.distances(x)).sum(-1).mean(), x_hat.new_zeros(())

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        lam = F.softplus(self.lam_pre) * s * s
        self.lam_pre.copy_(torch.log(torch.expm1(lam)))
        self.A_enc.div_(s)
        self.A_dec.div_(s)
