"""DiET: distractor-erasure tuning — masks that are verifiable attributions of a tuned model.

Bhalla, Srinivas & Lakkaraju (2023), "Discriminative Feature Attributions: Bridging Post Hoc
Explainability and Inherent Interpretability" (NeurIPS 2023). Black boxes are not robust to erasing
distractors, so post hoc attributions of them are unfaithful. DiET fine-tunes a copy f_s of the
black box f_b to be robust to erasing everything outside a per-image signal mask m, while distilling
f_b, and learns the masks with it. With p = softmax outputs, q a random colour per image and
x_s = up(m) ⊙ x + (1 − up(m)) ⊙ q (bilinear upsampling from H/ups × W/ups):

    for k in 0..R−1:  λ_k = 1 − 0.9k/R,  r_k = 0.4 − 0.4k/R
        SGD on masks (clamped to [0, 1]) of
            L_m = [λ_k ‖up(m)‖₁/(HW) + ‖p_b(x) − p_s(x)‖₁ + ‖p_s(x) − p_s(x_s)‖₁] / B
        until |L_m / L_m(two epochs ago) − 1| ≤ tol;   then m ← round(m + r_k)  (progressive binarisation)
        Adam on f_s of  L_θ = [‖p_b(x) − p_s(x)‖₁ + ‖p_s(x) − p_s(x_s)‖₁] / B
        until L_θ < 0.025 or L_θ ∈ [0.97, 1.005]·L_θ(two epochs ago)

Implemented from the paper's description (the reference repository ships no licence). Epoch loops
are capped (``max_epochs``) so a run always ends. :func:`diet_masks` finds test-time masks for a
fixed tuned model (λ‖m‖₁/(HW) + ‖p_s(x) − p_s(x_s)‖₁, one round).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from assay.config import ConfigError

__all__ = ["DietConfig", "DietResult", "diet", "diet_masks", "erase", "random_colour"]


@dataclass(frozen=True, kw_only=True)
class DietConfig:
    """Distractor-erasure tuning."""

    rounds: int = 5
    """Rounds R of (mask optimisation, binarisation step, model tuning)."""
    upsample: int = 4
    """Mask resolution is H/upsample × W/upsample (the paper: 8; 4 for MNIST-sized images)."""
    mask_lr: float = 300.0
    """SGD learning rate of the masks."""
    model_lr: float = 1e-4
    """Adam learning rate of the tuned model."""
    batch_size: int = 64
    """Images per step."""
    mask_tol: float = 0.005
    """Relative change of the mask loss over two epochs that ends a mask phase."""
    max_epochs: int = 30
    """Cap on the epochs of each mask or model phase."""
    colour_mean: tuple[float, ...] = (0.527, 0.447, 0.403)
    """Mean of the random erasure colour per channel."""
    colour_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    """Standard deviation of the random erasure colour per channel."""
    seed: int = 0
    """Seed of the colours and the batch order when no generator is passed."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.upsample < 1 or self.batch_size < 1 or self.max_epochs < 1:
            raise ConfigError("rounds, upsample, batch_size and max_epochs must be ≥ 1")
        if not (self.mask_lr > 0 and self.model_lr > 0 and self.mask_tol > 0):
            raise ConfigError("mask_lr, model_lr and mask_tol must be positive")
        if len(self.colour_mean) != len(self.colour_std):
            raise ConfigError("colour_mean and colour_std need one entry per channel")


class DietResult(NamedTuple):
    """Masks and the tuned model."""

    masks: torch.Tensor
    """Binary masks ``[N, 1, H/ups, W/ups]`` (1 = signal kept)."""
    model: nn.Module
    """The tuned model f_s (a copy; the black box is not modified), in eval mode."""
    mask_loss: list[float]
    """L_m at the end of each round."""
    model_loss: list[float]
    """L_θ at the end of each round."""


def random_colour(n: int, config: DietConfig, generator: torch.Generator, *, scale: float = 1.0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-image colours ``[n, C, 1, 1]`` ~ N(mean, (scale·std)²) clipped to [0, 1]."""
    mean = torch.tensor(config.colour_mean, dtype=dtype)
    std = torch.tensor(config.colour_std, dtype=dtype) * scale
    q = mean + std * torch.randn(n, len(mean), generator=generator, dtype=dtype)
    return q.clamp(0, 1)[:, :, None, None]


def erase(x: torch.Tensor, m: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_s = up(m) ⊙ x + (1 − up(m)) ⊙ q with m ``[B, 1, h, w]`` upsampled bilinearly to x's size."""
    up = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up * x + (1 - up) * q


def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).softmax(-1)


def _mask_phase(fs, x, pb, masks, lam, config, gen, *, lr, tol, distill=True) -> float:
    opt = torch.optim.SGD([masks], lr=lr)
    H, W = x.shape[-2:]
    hist: list[float] = []
    for _ in range(config.max_epochs):
        total = 0.0
        for idx in torch.randperm(x.shape[0], generator=gen).split(config.batch_size):
            xb, mb = x[idx], masks[idx]
            q = random_colour(len(idx), config, gen, dtype=x.dtype).to(x.device)
            ps = _probs(fs, xb)
            loss = lam * F.interpolate(mb, size=(H, W), mode="bilinear", align_corners=False).abs().sum() / (H * W)
            loss = loss + (ps - _probs(fs, erase(xb, mb, q))).abs().sum()
            if distill:
                loss = loss + (pb[idx] - ps).abs().sum()
            loss = loss / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                masks.clamp_(0, 1)
            total += float(loss.detach()) * len(idx) / x.shape[0]
        hist.append(total)
        if len(hist) >= 3 and abs(hist[-1] / hist[-3] - 1) <= tol:
            break
    return hist[-1]


def _model_phase(fs, x, pb, masks, config, gen) -> float:
    opt = torch.optim.Adam(fs.parameters(), lr=config.model_lr)
    hist: list[float] = []
    for _ in range(config.max_epochs):
        total = 0.0
        for idx in torch.randperm(x.shape[0], generator=gen).split(config.batch_size):
            xb = x[idx]
            q = random_colour(len(idx), config, gen, dtype=x.dtype).to(x.device)
            ps = _probs(fs, xb)
            loss = ((pb[idx] - ps).abs().sum() + (ps - _probs(fs, erase(xb, masks[idx], q))).abs().sum()) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx) / x.shape[0]
        hist.append(total)
        if total < 0.025 or (len(hist) >= 3 and 0.97 * hist[-3] <= total <= 1.005 * hist[-3]):
            break
    return hist[-1]


def diet(model: nn.Module, x: torch.Tensor, *, config: DietConfig = DietConfig(),
         generator: torch.Generator | None = None) -> DietResult:
    """Run DiET on images ``x`` ``[N, C, H, W]`` in [0, 1]: returns binary masks and the tuned copy."""
    if x.dim() != 4 or x.shape[1] != len(config.colour_mean):
        raise ValueError(f"DiET needs images [N, {len(config.colour_mean)}, H, W]; got {tuple(x.shape)} "
                         "(set colour_mean/colour_std for other channel counts)")
    H, W = x.shape[-2:]
    if H % config.upsample or W % config.upsample:
        raise ValueError(f"image size {H}×{W} must be divisible by upsample={config.upsample}")
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    fb = model.eval()
    fs = copy.deepcopy(model).eval()  # eval: BatchNorm statistics stay those of the black box
    with torch.no_grad():
        pb = _probs(fb, x)
    masks = torch.ones(x.shape[0], 1, H // config.upsample, W // config.upsample, dtype=x.dtype, device=x.device,
                       requires_grad=True)
    mask_losses, model_losses = [], []
    for k in range(config.rounds):
        lam = 1 - 0.9 * k / config.rounds
        r = 0.4 - 0.4 * k / config.rounds
        for p in fs.parameters():
            p.requires_grad_(False)
        mask_losses.append(_mask_phase(fs, x, pb, masks, lam, config, gen, lr=config.mask_lr, tol=config.mask_tol))
        with torch.no_grad():
            masks.copy_(torch.round(masks + r).clamp(0, 1))
        for p in fs.parameters():
            p.requires_grad_(True)
        model_losses.append(_model_phase(fs, x, pb, masks.detach(), config, gen))
    return DietResult(masks.detach(), fs.eval(), mask_losses, model_losses)


def diet_masks(model_s: nn.Module, x: torch.Tensor, *, config: DietConfig = DietConfig(), lam: float = 1.0,
               lr: float = 100.0, tol: float = 0.002, generator: torch.Generator | None = None) -> torch.Tensor:
    """Test-time masks for a tuned model (fixed): minimise λ‖m‖₁/(HW) + ‖p_s(x) − p_s(x_s)‖₁; binarised."""
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    H, W = x.shape[-2:]
    masks = torch.ones(x.shape[0], 1, H // config.upsample, W // config.upsample, dtype=x.dtype, device=x.device,
                       requires_grad=True)
    for p in model_s.parameters():
        p.requires_grad_(False)
    try:
        _mask_phase(model_s, x, None, masks, lam, config, gen, lr=lr, tol=tol, distill=False)
    finally:
        for p in model_s.parameters():
            p.requires_grad_(True)
    return torch.round(masks.detach()).clamp(0, 1)
