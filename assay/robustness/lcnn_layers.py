"""Layers for low-curvature networks: centred softplus, γ-Lipschitz BatchNorm, spectral-normalised conv.

Srinivas*, Matoba*, Lakkaraju & Fleuret 2022, "Efficient Training of Low-Curvature Neural
Networks" (NeurIPS 2022). Curvature of a composition decomposes into layer curvatures and slopes
(roughly C(f∘g) ≤ C_f·L_g² + L_f·C_g), so bounding each layer's slope and curvature bounds the net's.

    centred softplus  csp_β(x) = (softplus(β′x) − log 2)/β′,  β′ = exp(log β) + 1e-3
                      csp(0) = 0, csp′(0) = ½, sup csp″ = β′/4, Lipschitz ≤ 1, → x/2 as β → 0
    γ-Lipschitz BN    y = BN(x)·s·min(1/s, γ),  s = min_c √(running_var_c + eps),  BN without affine
    spectral conv     W / ‖W‖_op with the exact operator norm of the convolution on the layer's
                      input size, by power iteration with the convolution and its adjoint
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["CentredSoftplus", "LipschitzBatchNorm", "ConvSpectralNorm", "spectral_norm_conv",
           "spectral_norm_linear", "conv_operator_norm", "curvature_penalty"]


class CentredSoftplus(nn.Module):
    """csp_β(x) = (softplus(β′x) − log 2)/β′ with learnable β (init 5); softplus threshold 20."""

    def __init__(self, beta: float = 5.0, *, learnable: bool = True, offset: float = 1e-3) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        log_beta = torch.tensor(math.log(beta))
        self.log_beta = nn.Parameter(log_beta) if learnable else nn.Buffer(log_beta)
        self.offset = float(offset)

    @property
    def beta(self) -> torch.Tensor:
        """β′ = exp(log β) + offset (the curvature bound is β′/4)."""
        return self.log_beta.exp() + self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.beta.to(x.dtype)
        return (F.softplus(b * x, threshold=20.0) - math.log(2.0)) / b


class LipschitzBatchNorm(nn.Module):
    """BatchNorm (no affine) rescaled so its Lipschitz constant is min(1/s, γ), γ = exp(log_lipschitz).

    ``lipschitz`` is the initial γ (default +∞: starts as plain BatchNorm). Works for [B, C] and
    [B, C, ...] inputs (BatchNorm1d/2d/3d statistics over all but the channel dimension)."""

    def __init__(self, num_features: int, *, lipschitz: float = math.inf, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.log_lipschitz = nn.Parameter(torch.tensor(math.log(lipschitz) if lipschitz < math.inf else math.inf))

    def slope(self) -> torch.Tensor:
        """s = min_c √(running_var_c + eps)."""
        return torch.sqrt(self.running_var + self.eps).min()

    def lipschitz_bound(self) -> torch.Tensor:
        """The layer's Lipschitz constant in eval mode, min(1/s, γ) (finite even while γ = ∞)."""
        inv_s = 1.0 / self.slope()
        if not torch.isfinite(self.log_lipschitz):  # γ = ∞: no gradient to log γ (avoids 0·∞ = NaN)
            return inv_s + 0.0 * self.log_lipschitz.clamp(max=0.0)
        return torch.minimum(inv_s, self.log_lipschitz.exp())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum, self.eps)
        return y * self.slope() * self.lipschitz_bound()


def conv_operator_norm(weight: torch.Tensor, input_shape: tuple[int, ...], *, stride: int | tuple[int, int] = 1,
                       padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, iters: int = 50,
                       u: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """‖conv2d(·, weight)‖₂ as an operator on inputs ``[C_in, H, W]``; returns (norm, last u).

    Power iteration u ← Aᵀ A u/‖·‖ with the adjoint Aᵀ from autograd (exact for any stride/padding)."""
    if u is None:
        u = torch.randn((1, *input_shape), dtype=weight.dtype, device=weight.device, generator=generator)
    w = weight.detach()

    def conv(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, stride=stride, padding=padding, dilation=dilation)

    with torch.enable_grad():
        for _ in range(iters):
            u = (u / u.norm().clamp_min(1e-30)).detach().requires_grad_(True)
            out = conv(u)
            (u,) = torch.autograd.grad(out, u, grad_outputs=out)
    u = (u / u.norm().clamp_min(1e-30)).detach()
    return F.conv2d(u, weight, stride=stride, padding=padding, dilation=dilation).norm(), u


class ConvSpectralNorm(nn.Module):
    """Parametrisation W ↦ W/‖conv_W‖_op for a Conv2d (15 iterations at creation, 1 per training call)."""

    def __init__(self, conv: nn.Conv2d, input_shape: tuple[int, int, int], *, n_init: int = 15,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        _, u = conv_operator_norm(conv.weight, self.input_shape, stride=self.stride, padding=self.padding,
                                  dilation=self.dilation, iters=n_init, generator=generator)
        self.register_buffer("u", u)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            _, u = conv_operator_norm(weight, self.input_shape, stride=self.stride, padding=self.padding,
                                      dilation=self.dilation, iters=1, u=self.u)
            self.u.copy_(u)
        sigma = F.conv2d(self.u, weight, stride=self.stride, padding=self.padding, dilation=self.dilation).norm()
        return weight / sigma


def spectral_norm_conv(conv: nn.Conv2d, input_shape: tuple[int, int, int], *, n_init: int = 15,
                       generator: torch.Generator | None = None) -> nn.Conv2d:
    """Register :class:`ConvSpectralNorm` on ``conv.weight`` (``input_shape`` = (C_in, H, W))."""
    if conv.groups != 1 or not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        raise ValueError("spectral_norm_conv supports Conv2d with groups=1, numeric padding and zero padding mode")
    parametrize.register_parametrization(conv, "weight", ConvSpectralNorm(conv, input_shape, n_init=n_init,
                                                                          generator=generator))
    return conv


def spectral_norm_linear(linear: nn.Linear, *, n_power_iterations: int = 1,
                         generator: torch.Generator | None = None) -> nn.Linear:
    """PyTorch's spectral normalisation of a Linear layer (Miyato et al. 2018), its power iteration's
    start vectors u, v drawn from ``generator`` (PyTorch's ``spectral_norm`` draws them from the global RNG).

    Equal to ``nn.utils.parametrizations.spectral_norm(linear)`` after ``torch.manual_seed(s)`` when
    ``generator`` is seeded with ``s``."""
    from torch.nn.utils.parametrizations import _SpectralNorm  # the class spectral_norm registers

    weight = linear.weight
    sn = _SpectralNorm(torch.empty_like(weight, device="meta"), n_power_iterations)  # draws nothing
    sn.to_empty(device=weight.device)
    with torch.no_grad():
        for buffer in (sn._u, sn._v):
            buffer.copy_(F.normalize(buffer.normal_(0, 1, generator=generator), dim=0, eps=sn.eps))
        sn._power_method(weight.detach(), 15)  # as spectral_norm does at registration
    parametrize.register_parametrization(linear, "weight", sn)
    return linear


def curvature_penalty(model: nn.Module, *, lambda_beta: float = 1e-2, lambda_gamma: float = 1e-2) -> torch.Tensor:
    """λ_β Σ β′ (centred-softplus curvature) + λ_γ Σ |log L| (LipschitzBatchNorm bounds) over ``model``."""
    total = torch.zeros(())
    for m in model.modules():
        if isinstance(m, CentredSoftplus) and isinstance(m.log_beta, nn.Parameter):
            total = total + lambda_beta * m.beta
        elif isinstance(m, LipschitzBatchNorm):
            total = total + lambda_gamma * m.lipschitz_bound().log().abs()
    return total
