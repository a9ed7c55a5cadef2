"""The cascade monitor: a cheap probe scores everything, the least certain share goes to an expensive monitor.

McKenzie, Pawar, Blandfort, Bankes, Krueger, Lubana & Krasheninnikov 2025, "Detecting High-Stakes
Interactions with Activation Probes" (arXiv 2506.10805): the probe scores every example; the fraction p of
examples whose probe score lies closest to the decision boundary is sent to an expensive monitor (an LLM
judge), and for those the final score is the average of the two monitors' probabilities. The rest keep the
probe's probability. p trades compute (the number of expensive calls, exactly ⌈p·N⌉) for accuracy.

    p_probe = σ(probe logit);   escalated = the ⌈p·N⌉ smallest |probe logit| (ties: lower index first)
    final   = (p_probe + p_expensive) / 2 on escalated examples, p_probe elsewhere
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CascadeResult", "escalation_order", "cascade_scores"]


class CascadeResult(NamedTuple):
    """What :func:`cascade_scores` returns."""

    scores: Tensor
    """Final probabilities ``[N]`` (float64)."""
    escalated: Tensor
    """Bool ``[N]``: the examples the expensive monitor saw."""
    n_calls: int
    """Examples sent to the expensive monitor (= ⌈fraction·N⌉)."""


def escalation_order(probe_logits: Tensor) -> Tensor:
    """Indices from least to most certain: ascending |logit|, ties broken by the lower index."""
    u = torch.as_tensor(probe_logits).double().flatten().abs()
    return torch.sort(u, stable=True).indices


def cascade_scores(probe_logits: Tensor, expensive: Callable[[Tensor], Tensor], *, fraction: float) -> CascadeResult:
    """Combine a probe with an expensive monitor on the ``fraction`` of examples the probe is least sure of.

    ``probe_logits [N]``: the probe's logits (0 is its decision boundary). ``expensive(indices) -> [n]``: the
    expensive monitor's probabilities in [0, 1] for those examples (called once, only when n > 0).
    """
    logits = torch.as_tensor(probe_logits).double().flatten()
    if not torch.isfinite(logits).all():
        raise ValueError("probe logits contain NaN or inf")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction (the share of examples sent to the expensive monitor) must lie in [0, 1], "
                         f"got {fraction}")
    n = math.ceil(fraction * logits.numel() - 1e-9)
    scores = torch.sigmoid(logits)
    escalated = torch.zeros(logits.numel(), dtype=torch.bool)
    if n:
        idx = escalation_order(logits)[:n]
        p = torch.as_tensor(expensive(idx)).double().flatten()
        if p.numel() != n:
            raise ValueError(f"the expensive monitor returned {p.numel()} scores for {n} examples")
        if not ((p >= 0) & (p <= 1)).all():
            raise ValueError("the expensive monitor must return probabilities in [0, 1]")
        scores[idx] = (scores[idx] + p) / 2
        escalated[idx] = True
    return CascadeResult(scores, escalated, n)
