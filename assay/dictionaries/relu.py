"""ReLU sparse autoencoder with the decoder-norm-weighted L1 penalty.

Bricken et al. 2023, "Towards Monosemanticity" (transformer-circuits.pub); Anthropic, "Circuits
Updates — April 2024" (the unconstrained-decoder form used here); repos
saprmarks/dictionary_learning (``StandardTrainerAprilUpdate``), SAELens (``standard``).

    z = ReLU(x W_enc + b_enc),   x̂ = z W_dec + b_dec,
    L = mean_b‖x − x̂‖² + λ · mean_b Σ_i z_i ‖W_dec,i‖₂

The penalty makes L invariant to z_i → c·z_i, W_dec,i → W_dec,i/c, so the decoder needs no norm
constraint. Init: atoms of norm 0.1, W_enc = W_decᵀ, biases 0; b_dec is not subtracted before the
encoder (as in dictionary_learning). Check: z = (1, 0, 2), atom norms (5, 1, 0.5) → penalty 6.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig

__all__ = ["ReLUConfig", "ReLUSAE", "norm_weighted_l1"]


@dataclass(frozen=True, kw_only=True)
class ReLUConfig(SAEConfig):
    """A ReLU SAE with decoder-norm-weighted L1 (April 2024 update). Loss: sum over d, mean over tokens."""

    l1_coef: float = 5.0
    """Sparsity coefficient λ (April update value; sweep it to reach a target L0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coef < 0:
            raise ConfigError(f"l1_coef must be >= 0, got {self.l1_coef}")


def norm_weighted_l1(z: Tensor, W_dec: Tensor) -> Tensor:
    """mean_b Σ_i |z_bi| ‖W_dec,i‖₂."""
    return (z.abs() * W_dec.norm(dim=-1)).sum(-1).mean()


class ReLUSAE(SAE):
    """ReLU SAE, unconstrained decoder, norm-weighted L1."""

    architecture = "relu"
    config_cls = ReLUConfig
    constrained_decoder = False
    median_init = False
    default_lr = 5e-5
    cfg: ReLUConfig

    def __init__(self, cfg: ReLUConfig) -> None:
        super().__init__(cfg, atom_norm=0.1)

    def encode_codes(self, x: Tensor) -> Codes:
        return Codes.from_dense((x @ self.W_enc + self.b_enc).relu())

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.cfg.l1_coef * norm_weighted_l1(codes.values, self.W_dec), x_hat.new_zeros(())
