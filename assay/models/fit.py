"""Fit a classifier on in-memory tensors: a small, seeded AdamW loop with cross-entropy.

For the image/tabular worlds and for tests; the sequence-world trainer (with checkpoints and exact
resume) is ``assay.models.train``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fit_classifier", "accuracy"]


def fit_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    input_noise: float = 0.0,
    penalty: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place to predict ``targets`` (class ids) from ``inputs``; return it in eval mode.

    Regularisers (both off by default): ``input_noise`` σ trains on x + N(0, σ²I) drawn afresh for
    every batch (Gaussian noise augmentation); ``penalty(x, y)`` is added to each batch's
    cross-entropy (e.g. ``lambda x, y: λ·gradient_norm_penalty(model, x, y)``).

    Shuffling and the noise draw from a generator seeded with ``seed``, so the same call gives the
    same weights.
    """
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs have {inputs.shape[0]} rows but targets {targets.shape[0]}")
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if not input_noise >= 0:
        raise ValueError(f"input_noise must be >= 0, got {input_noise}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = inputs.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = inputs[idx], targets[idx]
            if input_noise > 0:
                x = x + input_noise * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
            loss = F.cross_entropy(model(x), y)
            if penalty is not None:
                loss = loss + penalty(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 512) -> float:
    """Fraction of ``inputs`` whose argmax logit equals the target."""
    correct = 0
    for start in range(0, inputs.shape[0], batch_size):
        logits = model(inputs[start : start + batch_size])
        correct += int((logits.argmax(-1) == targets[start : start + batch_size]).sum())
    return correct / max(1, inputs.shape[0])
