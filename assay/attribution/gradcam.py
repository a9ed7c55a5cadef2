"""Grad-CAM: class activation maps from the gradients at a convolutional layer.

Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017), "Grad-CAM: Visual Explanations from
Deep Networks via Gradient-based Localization": for the feature maps A^k of a layer,

    α_k = (1/HW) Σ_ij ∂f_t/∂A^k_ij,     L = ReLU(Σ_k α_k A^k),

upsampled bilinearly to the input size. The ReLU is applied by default (as in the paper) and
named by ``relu``; Captum's ``LayerGradCam`` defaults to no ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from assay.attribution import engine
from assay.attribution.engine import EngineConfig
from assay.config import ConfigError
from assay.hooks import resolve

__all__ = ["GradCamConfig", "GradCamResult", "gradcam", "gradcam_map"]


@dataclass(frozen=True, kw_only=True)
class GradCamConfig(EngineConfig):
    """Grad-CAM at one layer (a site name)."""

    name: ClassVar[str] = "gradcam"

    layer: str
    """Site of the convolutional layer whose feature maps are weighted (e.g. 'features.3')."""
    relu: bool = True
    """Keep only positive evidence (the paper); False gives Captum's default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layer, str) or not self.layer:
            raise ConfigError(f"GradCamConfig.layer must name a site (e.g. the model's last ReLU or conv block), "
                              f"got {self.layer!r}")


class GradCamResult(NamedTuple):
    """Grad-CAM maps for targets ``[B]``."""

    layer_map: torch.Tensor
    """Σ_k α_k A^k (after the ReLU if enabled) at the layer's resolution, ``[B, h, w]``."""
    values: torch.Tensor
    """The map upsampled bilinearly to the input's spatial size, ``[B, H, W]``."""
    weights: torch.Tensor
    """The channel weights α, ``[B, K]``."""
    target: torch.Tensor
    """The explained class per example, ``[B]``."""


def gradcam_map(activations: torch.Tensor, grads: torch.Tensor, relu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure Grad-CAM from feature maps ``A`` and ``∂f/∂A`` (both ``[B, K, h, w]``): (map, α)."""
    alpha = grads.flatten(2).mean(-1)
    cam = torch.einsum("bk,bk...->b...", alpha, activations)
    return (cam.clamp_min(0) if relu else cam), alpha


def gradcam(model, x: torch.Tensor, target=None, *, config: GradCamConfig) -> GradCamResult:
    """Grad-CAM of f_t at ``config.layer`` for a batch of images ``[B, C, H, W]``."""
    engine._check_float(x)
    t, _, single, _ = engine.target_outputs(model, x, target, config.output)
    if not single:
        raise ValueError("Grad-CAM explains one target per example; pass target as an int or [B] tensor")
    module = resolve(model, config.layer)
    seen: list[torch.Tensor] = []

    def hook(mod, args, out):
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"Grad-CAM needs a layer that returns a tensor; {config.layer!r} returns {type(out).__name__}")
        seen.append(out)
        return out.clone()  # downstream in-place ops (ReLU(inplace=True)) then leave the recorded maps intact

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            y = engine.select_output(model(x), config.output)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(
            f"layer {config.layer!r} ran {len(seen)} times in one forward (a reused module); Grad-CAM weights "
            "the feature maps of one call: choose a site that runs once (e.g. give each use its own module)"
        )
    act = seen[0]
    if act.dim() != 4:
        raise ValueError(f"Grad-CAM needs a layer with [B, K, h, w] outputs; {config.layer!r} gives {tuple(act.shape)}")
    if not act.requires_grad:
        raise RuntimeError(f"layer {config.layer!r} output has no gradient path to the model output")
    (g,) = torch.autograd.grad(y.gather(1, t).sum(), act)
    cam, alpha = gradcam_map(act.detach(), g, config.relu)
    up = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return GradCamResult(cam, up, alpha, t[:, 0])
