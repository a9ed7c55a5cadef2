"""A plain multilayer perceptron for tabular and flattened-image worlds.

Sites: ``fc{i}`` (pre-activation of hidden layer i), ``act{i}`` (after the nonlinearity) and
``out`` (logits). Every nonlinearity is its own module and none is in-place, so hooks and
gradient-based attribution (FullGrad's bias gradients included) see each layer separately.
Weights start at PyTorch's default initialisation, drawn from ``generator`` (see
:mod:`assay.models.init`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from assay.models.init import materialise

__all__ = ["MLP"]


class MLP(nn.Module):
    """``d_in → hidden[0] → … → n_out`` with ReLU (or GELU/Tanh/Softplus) between layers."""

    def __init__(
        self, d_in: int, hidden: Sequence[int] = (64, 64), n_out: int = 2, *, activation: str = "relu",
        flatten: bool = True, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if d_in <= 0 or n_out <= 0 or any(h <= 0 for h in hidden):
            raise ValueError(f"MLP sizes must be positive: d_in={d_in}, hidden={tuple(hidden)}, n_out={n_out}")
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        self.flatten = flatten
        widths = [d_in, *hidden]
        with torch.device("meta"):  # allocates and draws nothing; materialise draws from generator
            for i, (a, b) in enumerate(zip(widths, widths[1:])):
                self.add_module(f"fc{i}", nn.Linear(a, b))
                self.add_module(f"act{i}", acts[activation]())
            self.out = nn.Linear(widths[-1], n_out)
        self.n_hidden = len(hidden)
        materialise(self, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            x = x.flatten(1)
        for i in range(self.n_hidden):
            x = getattr(self, f"act{i}")(getattr(self, f"fc{i}")(x))
        return self.out(x)
