"""A small convolutional classifier for the image worlds (signal–distractor digits).

``conv{i}`` (3×3, padding 1) → optional ``bn{i}`` → ``act{i}`` (ReLU, not in-place) → ``pool{i}``
(2×2 max) per stage, then ``fc`` to the logits. Each named submodule is a site for
``assay.hooks``; the last stage's activation ``act{n-1}`` is the usual Grad-CAM layer. Weights start
at PyTorch's default initialisation, drawn from ``generator`` (see :mod:`assay.models.init`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from assay.models.init import materialise

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Conv stages of the given channel widths, then a linear classifier."""

    def __init__(
        self, in_channels: int = 3, n_classes: int = 10, channels: Sequence[int] = (16, 32), image_size: int = 32,
        *, batch_norm: bool = False, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if image_size % (2 ** len(channels)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(channels)} (one pool per stage)")
        widths = [in_channels, *channels]
        side = image_size // 2 ** len(channels)
        with torch.device("meta"):  # allocates and draws nothing; materialise draws from generator
            for i, (a, b) in enumerate(zip(widths, widths[1:])):
                self.add_module(f"conv{i}", nn.Conv2d(a, b, 3, padding=1))
                if batch_norm:
                    self.add_module(f"bn{i}", nn.BatchNorm2d(b))
                self.add_module(f"act{i}", nn.ReLU())
                self.add_module(f"pool{i}", nn.MaxPool2d(2))
            self.fc = nn.Linear(widths[-1] * side * side, n_classes)
        self.n_stages = len(channels)
        self.batch_norm = batch_norm
        materialise(self, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_stages):
            x = getattr(self, f"conv{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x)
            x = getattr(self, f"pool{i}")(getattr(self, f"act{i}")(x))
        return self.fc(x.flatten(1))
