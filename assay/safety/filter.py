"""The safety-filter protocol: batched token-id sequences → probability that each is harmful.

Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial
Prompting" (arXiv 2309.02705): erase-and-check certifies any filter F; here F takes token ids in its
own tokenizer's space (erased sequences are never decoded back to text) and its verdict on a sequence
x is harmful iff F(x) > threshold. Implementations: :mod:`assay.safety.classifier` (MiniLM + head),
:mod:`assay.safety.prompted` (a prompted causal LM scored on answer-token logits) and
:mod:`assay.safety.probe_filter` (an activation probe on a causal LM, one pass for all prefixes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

__all__ = ["SafetyFilter", "DifferentiableFilter", "check_prompt"]


@runtime_checkable
class SafetyFilter(Protocol):
    """A batched safety filter over token ids."""

    name: str
    """A short identifier recorded in certificates."""
    context_length: int | None
    """The longest sequence (in tokens) it accepts, or None for no limit."""

    def harmful_probability(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """P(harmful) ``[n]`` for ``n`` token-id sequences of any lengths (the empty one included)."""
        ...


@runtime_checkable
class DifferentiableFilter(SafetyFilter, Protocol):
    """A filter that can also score a soft erase mask (used by GradEC)."""

    def soft_logit(self, tokens: Sequence[int], keep: torch.Tensor) -> torch.Tensor:
        """The harmful logit (0-d, differentiable in ``keep``) of ``tokens`` with token ``t``'s input
        weighted by ``keep[t]`` ∈ [0, 1]; ``keep`` all ones is the unerased prompt."""
        ...


def check_prompt(tokens: Sequence[int], flt: SafetyFilter) -> tuple[int, ...]:
    """The prompt as a tuple of ints; raises ``ValueError`` if it is empty or longer than the filter's context."""
    toks = tuple(int(t) for t in tokens)
    if not toks:
        raise ValueError("the prompt is empty (0 tokens); erase-and-check needs at least one token to check")
    if flt.context_length is not None and len(toks) > flt.context_length:
        raise ValueError(f"the prompt has {len(toks)} tokens but filter {flt.name!r} accepts at most "
                         f"{flt.context_length}; shorten the prompt or use a filter with a longer context")
    return toks
