"""The cost of running a model: parameters, multiply-accumulates (dense and non-zero), measured latency.

What a pruned model is reported with (spec ``pruning.md`` §1, §8; the reporting of Blalock, Gonzalez
Ortiz, Frankle, Guttag 2020, "What is the State of Neural Network Pruning?": parameters, FLOPs and
measured speed, not sparsity alone). MACs are counted from one forward pass with forward hooks on
every ``nn.Linear`` and ``nn.Conv{1,2,3}d``: a linear layer costs in_features · out_features per output
row, a convolution (in_channels / groups) · prod(kernel) per output element. ``nonzero_macs`` counts
only the weights that are not zero (what a sparse kernel would pay; dense kernels pay ``macs`` whatever
the sparsity — Torch-Pruning users report "no speed-up" from unstructured masks, its issues #149, #33),
so latency is measured, not inferred: the median wall time of ``runs`` calls after ``warmup`` calls.
"""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["MacCount", "count_macs", "count_parameters", "measure_latency"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MacCount(NamedTuple):
    """Multiply-accumulates of one forward pass, summed over the linear and convolution layers."""

    macs: int
    """Dense MACs: every weight counted."""
    nonzero_macs: int
    """MACs of the non-zero weights only."""
    per_layer: dict[str, int]
    """Layer name → its dense MACs."""


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (a tied parameter once)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: torch.Tensor, **kwargs) -> MacCount:
    """MACs of ``model(*inputs, **kwargs)`` (one forward pass at those inputs' batch size)."""
    dense: dict[str, int] = {}
    nonzero: dict[str, int] = {}

    def make(name: str):
        def hook(module: nn.Module, args, output) -> None:
            weight = module.weight  # [out, in/groups, *kernel]: one output row/position costs weight.numel()
            rows = output.numel() // weight.shape[0]  # batch × positions
            dense[name] = dense.get(name, 0) + rows * weight.numel()
            nonzero[name] = nonzero.get(name, 0) + rows * int((weight != 0).sum())
        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    try:
        model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return MacCount(sum(dense.values()), sum(nonzero.values()), dense)


@torch.no_grad()
def measure_latency(model: nn.Module, *inputs: torch.Tensor, runs: int = 20, warmup: int = 5) -> float:
    """Median wall time in seconds of ``model(*inputs)`` over ``runs`` calls after ``warmup`` calls."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        model(*inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(*inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
