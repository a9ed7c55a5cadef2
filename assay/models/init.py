"""PyTorch's default parameter initialisation, drawn from a given generator instead of the global one.

A module built inside ``with torch.device("meta"):`` allocates nothing and draws nothing;
:func:`materialise` then allocates it and draws each layer's parameters exactly as the layer's own
``reset_parameters`` would, from ``generator`` (``None``: the global generator, as PyTorch does), in
module order. So ``MLP(..., generator=torch.Generator().manual_seed(s))`` has the weights a plain
``torch.manual_seed(s)`` would have given, without seeding or even reading the global state.

The rules (``torch.nn`` ``reset_parameters``; He et al. 2015, "Delving Deep into Rectifiers"):
Linear and convolution weights are Kaiming-uniform with ``a = √5``, i.e. U(−1/√fan_in, 1/√fan_in),
and their biases U(−1/√fan_in, 1/√fan_in); embeddings are N(0, 1) (the padding row zero); norm layers
start at weight 1, bias 0 and fresh running statistics.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

__all__ = ["materialise"]

M = TypeVar("M", bound=nn.Module)

_DETERMINISTIC = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@torch.no_grad()
def _reset(module: nn.Module, generator: torch.Generator | None) -> None:
    if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, generator=generator)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, _DETERMINISTIC):
        module.reset_parameters()  # constants only: draws nothing
    elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        raise TypeError(
            f"materialise does not know how to initialise a {type(module).__name__}; build it outside the "
            "meta-device block and initialise it with its own generator"
        )


def materialise(module: M, *, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> M:
    """Allocate ``module`` (built on the meta device) on ``device`` (default: PyTorch's default device)
    and draw its parameters as PyTorch's default initialisation does, from ``generator``.

    Raises TypeError for a submodule with parameters or buffers whose initialisation is not one of
    the rules in the module docstring. Returns ``module``.
    """
    module.to_empty(device=device if device is not None else torch.get_default_device())
    for m in module.modules():
        _reset(m, generator)
    return module
