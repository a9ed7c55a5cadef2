"""Metrics of a model that should compute a known program: exactness against the program's reference
outputs, and the effect of an ablation on its answers.

The acceptance checks A1, A2 and A5 (free interventions) of the circuits ground-truth suite (spec
circuits.md §4.3), after tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for
Interpretability"): a compiled model must give the reference logits (``scale``·reference), its answers
(top-1 where the reference is one-hot, the sign pattern where it is ±1) must be right with a margin, and
zero-ablating a part of it changes the answers (on-circuit) or nothing at all (off-circuit).

Two kinds of reference: ``"top1"`` (rows are one-hot where a single answer is meant; other rows — means,
zeros — are not scored) and ``"sign"`` (rows of ±1: every output is a yes/no, the answer is the sign pattern).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

__all__ = ["ReferenceKind", "reference_kind", "scored_positions", "answers", "ProgramAccuracy", "program_accuracy",
           "AblationEffect", "ablation_effect",
           "intervention_success"]

ReferenceKind = Literal["top1", "sign"]


def reference_kind(reference: torch.Tensor) -> ReferenceKind:
    """``"sign"`` if the reference holds negative entries (±1 rows), else ``"top1"``."""
    return "sign" if bool((reference < 0).any()) else "top1"


def scored_positions(reference: torch.Tensor, kind: ReferenceKind) -> torch.Tensor:
    """Positions with a single intended answer, bool [..., T]: one-hot rows (top1), every row (sign)."""
    if kind == "sign":
        return torch.ones(reference.shape[:-1], dtype=torch.bool)
    return ((reference == 1).sum(-1) == 1) & ((reference == 0) | (reference == 1)).all(-1)


def answers(logits: torch.Tensor, kind: ReferenceKind) -> torch.Tensor:
    """The answer at each position: the top-1 index [..., T] (top1) or the sign pattern [..., T, V] (sign)."""
    return logits.argmax(-1) if kind == "top1" else logits > 0


class ProgramAccuracy(NamedTuple):
    """How exactly logits follow a program's reference (spec A1)."""

    accuracy: float
    """Share of scored positions answered right."""
    min_margin: float
    """Smallest margin over scored positions: the right logit minus the largest other (top1), or the smallest
    reference-signed logit (sign); negative when some answer is wrong."""
    max_error: float
    """Largest |logit − scale·reference| over all positions."""


def program_accuracy(logits: torch.Tensor, reference: torch.Tensor, *, scale: float,
                     kind: ReferenceKind | None = None) -> ProgramAccuracy:
    """Accuracy, minimum margin and maximum error of ``logits`` [..., T, V] against ``reference`` [..., T, V]."""
    if logits.shape != reference.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and reference {tuple(reference.shape)} must have one shape")
    kind = kind or reference_kind(reference)
    ref = reference.to(logits.dtype)
    scored = scored_positions(ref, kind)
    if kind == "top1":
        target = ref.argmax(-1, keepdim=True)
        right = logits.gather(-1, target)[..., 0]
        others = logits.scatter(-1, target, float("-inf")).amax(-1)
        margin, correct = right - others, logits.argmax(-1) == target[..., 0]
    else:
        signed = logits * ref.sign()
        margin, correct = signed.amin(-1), (signed > 0).all(-1)
    return ProgramAccuracy(float(correct[scored].double().mean()), float(margin[scored].min()),
                           float((logits - scale * ref).abs().max()))


class AblationEffect(NamedTuple):
    """What an ablation did to a model's outputs (spec A2)."""

    max_change: float
    """Largest |Δ logit| over inputs and positions."""
    share_changed: float
    """Share of inputs (first axis) whose answer changes at some scored position."""
    share_moved: float
    """Share of inputs with some logit moved by more than ``tol`` (anywhere)."""


def ablation_effect(clean: torch.Tensor, ablated: torch.Tensor, scored: torch.Tensor, *,
                    kind: ReferenceKind, tol: float = 1e-5) -> AblationEffect:
    """Compare ``ablated`` with ``clean`` logits [B, T, V]; ``scored`` [B, T] marks the positions whose answer counts."""
    changed = answers(clean, kind) != answers(ablated, kind)
    if kind == "sign":
        changed = changed.any(-1)
    share = (changed & scored).any(-1).double().mean()
    delta = (ablated - clean).abs()
    moved = (delta > tol).flatten(1).any(-1).double().mean()
    return AblationEffect(float(delta.max()), float(share), float(moved))


def intervention_success(logits: torch.Tensor, expected: torch.Tensor, scored: torch.Tensor, *,
                         kind: ReferenceKind | None = None) -> float:
    """Share of interventions (rows of ``logits`` [B, T, V]) whose answers equal those of the ``expected``
    outputs [B, T, V] at every position marked in ``scored`` [B, T] that has a single intended answer (spec A5)."""
    kind = kind or reference_kind(expected)
    exp = expected.to(logits.dtype)
    mask = scored & scored_positions(exp, kind)
    wrong = answers(logits, kind) != answers(exp, kind)
    if kind == "sign":
        wrong = wrong.any(-1)
    return float((~(wrong & mask).any(-1)).double().mean())
