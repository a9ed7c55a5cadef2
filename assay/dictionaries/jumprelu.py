"""JumpReLU sparse autoencoder trained with straight-through estimators and an L0 penalty.

Rajamanoharan, Lieberum, Sonnerat, Conmy, Varma, Kramár & Nanda 2024, "Jumping Ahead: Improving
Reconstruction Fidelity with JumpReLU Sparse Autoencoders" (arXiv 2407.14435); repos
saprmarks/dictionary_learning (``JumpReluTrainer``), SAELens (``jumprelu``).

    pre = x W_enc + b_enc  (b_dec not subtracted, DeepMind/DL form),   z_i = pre_i · H(pre_i − θ_i)
    ∂z_i/∂pre_i = H(pre_i − θ_i),   ∂z_i/∂θ_i := −(θ_i/ε) K((pre_i − θ_i)/ε),   K(u) = 1[|u| < ½]
    L = mean_b‖x − x̂‖² + λ · mean_b Σ_i H(pre_i − θ_i),  ∂H/∂θ_i := −(1/ε) K(·),  ∂H/∂pre := 0

θ is a direct (linear) float32 parameter, never log θ (SAELens#718/#494). It is measured in units of the
training inputs' mean norm ν (``input_norm``, set from the first batch): θ = ν·θ_rel, with θ_rel the
trained parameter, and the bandwidth is ε = ν·``bandwidth``. The pre-activations scale with ν, so the
initial θ, θ's Adam step (≈ lr·ν) and the STE window all scale with them; with √d-normalised inputs a
fixed ε = 0.001 rarely saw a pre-activation and θ climbed √d times too slowly (SAELens#494; a JumpReLU
trained for L0 8 ended at L0 83 in the fragility benchmark). ``target_l0`` switches to the
dictionary_learning loss λ·(L0/L0_target − 1)², an explicit L0 controller (SAELens#719).
Check: θ = 0.01, ε = 0.001, pre = (0.0102, 0.009, 0.02) → z = (0.0102, 0, 0.02), dz/dθ = (−10, 0, 0),
dH/dθ = (−1000, 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig

__all__ = ["JumpReLUConfig", "JumpReLUSAE", "jumprelu", "heaviside_step"]


@dataclass(frozen=True, kw_only=True)
class JumpReLUConfig(SAEConfig):
    """A JumpReLU SAE (Rajamanoharan et al. 2024). Loss: sum over d, mean over tokens."""

    l0_coef: float = 1.0
    """Sparsity coefficient λ of the L0 term."""
    target_l0: float | None = None
    """If set, use λ·(L0/target_l0 − 1)² instead of λ·L0 (an explicit L0 controller)."""
    threshold_init: float = 0.001
    """Initial threshold θ, in units of the training inputs' mean norm (θ = threshold_init · mean‖x‖)."""
    bandwidth: float = 0.001
    """STE kernel bandwidth ε in units of the training inputs' mean norm (ε = bandwidth · mean‖x‖)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ConfigError(f"bandwidth and threshold_init must be > 0, got {self.bandwidth}, {self.threshold_init}")
        if self.target_l0 is not None and self.target_l0 <= 0:
            raise ConfigError(f"target_l0 must be positive or None, got {self.target_l0}")


def _kernel(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float):  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_pre = g * (pre > theta)
        grad_theta = -(theta / eps) * _kernel((pre - theta) / eps) * g
        return grad_pre, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float):  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * _kernel((pre - theta) / eps) * g
        return torch.zeros_like(pre), grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


def jumprelu(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """pre·H(pre − θ) with the rectangle-kernel STE for θ."""
    return _JumpReLU.apply(pre, theta, eps)


def heaviside_step(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """H(pre − θ) with pseudo-gradient only to θ."""
    return _Step.apply(pre, theta, eps)


class JumpReLUSAE(SAE):
    """JumpReLU SAE with a learnable per-latent threshold θ (float32)."""

    architecture = "jumprelu"
    config_cls = JumpReLUConfig
    median_init = False
    default_lr = 7e-5
    adam_betas = (0.0, 0.999)
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig) -> None:
        super().__init__(cfg)
        self.rel_threshold = nn.Parameter(torch.full((cfg.d_sae,), float(cfg.threshold_init)))
        """θ / input_norm: the threshold in units of the input norm (the trained parameter)."""
        self.register_buffer("input_norm", torch.ones(()))
        """Mean norm of the training inputs as the SAE sees them (after the trainer's scaling), set from the
        first batch. θ, its Adam step and the STE bandwidth ε all scale with it (SAELens#494)."""

    @property
    def threshold(self) -> Tensor:
        """θ in pre-activation units, ``rel_threshold · input_norm`` ``[n]`` (with gradient)."""
        return self.rel_threshold * self.input_norm

    @torch.no_grad()
    def set_threshold(self, theta: Tensor) -> None:
        """Set θ (pre-activation units) ``[n]``, keeping the input norm."""
        self.rel_threshold.copy_(theta / self.input_norm)

    @property
    def eps(self) -> Tensor:
        """The STE bandwidth in pre-activation units, ε = ``cfg.bandwidth`` · input_norm (a 0-d tensor)."""
        return self.cfg.bandwidth * self.input_norm

    def pre_acts(self, x: Tensor) -> Tensor:
        return x @ self.W_enc + self.b_enc

    def encode_codes(self, x: Tensor) -> Codes:
        return Codes.from_dense(jumprelu(self.pre_acts(x), self.threshold, self.eps))

    def train_codes(self, x: Tensor) -> Codes:
        pre = self.pre_acts(x)
        self._pre = pre  # reused by loss_terms for the L0 term
        return Codes.from_dense(jumprelu(pre, self.threshold, self.eps))

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pre = self.__dict__.pop("_pre", None)
        if pre is None:
            pre = self.pre_acts(x)
        l0 = heaviside_step(pre, self.threshold, self.eps).sum(-1).mean()
        if self.cfg.target_l0 is not None:
            sparsity = self.cfg.l0_coef * (l0 / self.cfg.target_l0 - 1).pow(2)
        else:
            sparsity = self.cfg.l0_coef * l0
        return sparsity, x_hat.new_zeros(())

    @staticmethod
    def upgrade_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Artifacts saved before θ was measured in the input norm hold θ as ``threshold``: read it as
        ``rel_threshold`` = θ with ``input_norm`` = 1 (the same θ, and so the same codes)."""
        if "threshold" in sd and "rel_threshold" not in sd:
            sd = dict(sd)
            theta = sd.pop("threshold")
            sd["rel_threshold"] = theta
            sd["input_norm"] = torch.ones((), dtype=theta.dtype)
        return sd

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, target: Tensor | None = None) -> None:
        """Record the mean input norm of the first (scaled) batch: θ (from ``threshold_init``), its step and
        the bandwidth are measured in it."""
        super().init_from_batch(x, target)
        self.input_norm.fill_(x.float().norm(dim=-1).mean().item())

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        super().fold_input_scale(s)  # pre = (s·W_enc)·x + b_enc is unchanged, so θ stays
