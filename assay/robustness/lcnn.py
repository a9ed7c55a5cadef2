"""A low-curvature CNN and its training recipe (LCNN).

Srinivas*, Matoba*, Lakkaraju & Fleuret 2022, "Efficient Training of Low-Curvature Neural
Networks" (NeurIPS 2022). The network swaps ReLU for the centred softplus, BatchNorm for the
γ-Lipschitz BatchNorm and normalises the final Linear spectrally (spectral conv normalisation is
optional: it caps the logit scale hard and costs accuracy on small CPU runs); training adds

    loss = CE + λ_β Σ_ℓ β_ℓ + λ_γ Σ_ℓ |log L_ℓ| + λ_g·1e5·‖∇_x CE‖²/B

with λ_β = λ_γ = 1e-2 and λ_g = 1e-4 (the paper uses λ_g = 1e-3; the "minimal recipe" is centred
softplus + penalty on β + gradient norm). L_ℓ = min(1/s, γ) is each BatchNorm's Lipschitz bound.
γ starts at 5: γ = 1 rescales every channel by the smallest channel standard deviation s, which
starves the net of signal (0.11 accuracy on the digits world even with all λ = 0), and γ = ∞ gives
γ no gradient. Tuning on the digits world (5,000 composites × 4 epochs, stages (16, 32, 64)) is
recorded in ``docs/benchmarks.md`` (robustness section). Layout per stage: ``conv{i}`` →
``bn{i}`` → ``act{i}`` → ``pool{i}`` (2×2 average), then ``fc`` — the same site names as
:class:`assay.models.cnn.SmallCNN`. Conv and Linear weights start at PyTorch's default
initialisation and, with the spectral power iteration's start vector, draw from ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from assay.models.init import materialise
from assay.robustness.lcnn_layers import (
    CentredSoftplus,
    LipschitzBatchNorm,
    curvature_penalty,
    spectral_norm_conv,
    spectral_norm_linear,
)

__all__ = ["LowCurvatureCNN", "fit_low_curvature"]


class LowCurvatureCNN(nn.Module):
    """Conv → γ-Lipschitz BN → centred softplus → 2×2 average pool per stage, then a (spectral) Linear."""

    def __init__(self, in_channels: int = 3, n_classes: int = 10, channels: Sequence[int] = (16, 32, 64),
                 image_size: int = 32, *, beta: float = 5.0, lipschitz: float = 5.0,
                 spectral_conv: bool = False, spectral_fc: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if image_size % (2 ** len(channels)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(channels)}")
        widths = [in_channels, *channels]
        side = image_size
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            with torch.device("meta"):  # allocates and draws nothing; materialise draws from generator
                conv = nn.Conv2d(a, b, 3, padding=1)
            materialise(conv, generator=generator)
            if spectral_conv:
                spectral_norm_conv(conv, (a, side, side), generator=generator)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", LipschitzBatchNorm(b, lipschitz=lipschitz))
            self.add_module(f"act{i}", CentredSoftplus(beta))
            self.add_module(f"pool{i}", nn.AvgPool2d(2))
            side //= 2
        self.n_stages = len(channels)
        with torch.device("meta"):
            fc = nn.Linear(widths[-1] * side * side, n_classes)
        materialise(fc, generator=generator)
        self.fc = spectral_norm_linear(fc, generator=generator) if spectral_fc else fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_stages):
            for part in ("conv", "bn", "act", "pool"):
                x = getattr(self, f"{part}{i}")(x)
        return self.fc(x.flatten(1))


def fit_low_curvature(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, epochs: int = 5,
                      batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4,
                      lambda_beta: float = 1e-2, lambda_gamma: float = 1e-2, lambda_grad: float = 1e-4,
                      seed: int = 0) -> nn.Module:
    """Train with CE + curvature penalties + gradient-norm penalty (AdamW; no weight decay on β, γ).

    Seeded shuffling; returns the model in eval mode. With all λ = 0 this is plain training."""
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs have {inputs.shape[0]} rows but targets {targets.shape[0]}")
    if min(lambda_beta, lambda_gamma, lambda_grad) < 0:
        raise ValueError("the lambdas must be >= 0")
    g = torch.Generator().manual_seed(seed)
    special = [p for n, p in model.named_parameters() if n.endswith(("log_beta", "log_lipschitz"))]
    ids = {id(p) for p in special}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": rest, "weight_decay": weight_decay},
                             {"params": special, "weight_decay": 0.0}], lr=lr)
    model.train()
    n = inputs.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            xb = inputs[idx].detach().requires_grad_(lambda_grad > 0)
            ce = F.cross_entropy(model(xb), targets[idx])
            loss = ce + curvature_penalty(model, lambda_beta=lambda_beta, lambda_gamma=lambda_gamma)
            if lambda_grad > 0:
                (gx,) = torch.autograd.grad(ce, xb, create_graph=True)  # of the batch-mean CE, as in LCNN
                loss = loss + lambda_grad * 1e5 * gx.pow(2).sum() / xb.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
