"""Causal tests of a concept edit on a formal-language model: the shift of next-token validity mass, and the
additivity gap of two edits.

Menon, Shrivastava, Krueger & Lubana 2025, "Analyzing (In)Abilities of SAEs via Formal Languages" (NAACL 2025,
arXiv 2410.11767), §5: a latent that *represents* a grammar concept should, when intervened on, move the model's
next-token distribution the way the grammar says the concept moves the set of valid continuations.

With p the model's next-token distribution at a position, V the tokens the grammar allows there (the world's
``valid_next``) and V′ the tokens it would allow if the concept had the edited value, the validity masses are

    m(S) = Σ_{t ∈ S} p_t            newly valid  N = V′ \\ V,   no longer valid  L = V \\ V′

and an edit moving p → p′ has ``gained = m′(N) − m(N)`` (the grammar predicts > 0) and ``lost = m′(L) − m(L)``
(predicted < 0). Check: p = (0.5, 0.3, 0.2) → p′ = (0.2, 0.3, 0.5), V = {0, 1}, V′ = {1, 2}: gained 0.3, lost −0.3.

Additivity (isolation vs entanglement): with Δ_X = ℓ_X − ℓ the change of the next-token logits under edit X,
each logit vector centred on its mean over the vocabulary (logits are defined up to a constant), two edits A and
B are *isolated* when Δ_{A+B} = Δ_A + Δ_B; the gap ‖Δ_{A+B} − (Δ_A + Δ_B)‖₂ per position measures how far they
are entangled, relative to ‖Δ_{A+B}‖₂. (Logits, not log-probabilities: the log-normaliser alone makes
log-probability changes non-additive when the logit changes add.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ValidityShift", "validity_mass", "validity_shift", "additivity_gap"]


class ValidityShift(NamedTuple):
    """Per-position change of validity mass under an edit (each ``[...]``, float64)."""

    gained: Tensor
    """Δ mass on tokens valid after the concept change but not before (V′ \\ V)."""
    lost: Tensor
    """Δ mass on tokens valid before but not after (V \\ V′)."""
    valid_after: Tensor
    """Δ mass on V′ (everything the changed concept allows)."""


def _check(logits: Tensor, valid: Tensor, what: str) -> None:
    if valid.dtype != torch.bool or valid.shape != logits.shape:
        raise ValueError(f"{what} must be a bool mask of the logits' shape {tuple(logits.shape)}, got "
                         f"{valid.dtype} {tuple(valid.shape)}")


def validity_mass(logits: Tensor, valid: Tensor) -> Tensor:
    """Probability the softmax of ``logits [..., V]`` puts on the ``valid`` tokens (bool ``[..., V]``): ``[...]``."""
    _check(logits, valid, "valid")
    return (torch.softmax(logits.double(), -1) * valid).sum(-1)


def validity_shift(before: Tensor, after: Tensor, valid: Tensor, valid_changed: Tensor) -> ValidityShift:
    """The change of validity mass from logits ``before`` to ``after`` (``[..., V]``), with ``valid`` the tokens the
    grammar allows now and ``valid_changed`` those it allows once the concept has the edited value (module docstring)."""
    if before.shape != after.shape:
        raise ValueError(f"before and after logits differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}")
    _check(before, valid, "valid")
    _check(before, valid_changed, "valid_changed")

    def delta(mask: Tensor) -> Tensor:
        return validity_mass(after, mask) - validity_mass(before, mask)

    return ValidityShift(delta(valid_changed & ~valid), delta(valid & ~valid_changed), delta(valid_changed))


def additivity_gap(base: Tensor, a: Tensor, b: Tensor, both: Tensor) -> tuple[Tensor, Tensor]:
    """``(gap, size)`` per position: ‖Δ_{A+B} − Δ_A − Δ_B‖₂ and ‖Δ_{A+B}‖₂ of the centred next-token logits, from
    the logits ``[..., V]`` of the unedited model, edit A, edit B and both edits together."""
    shapes = {tuple(t.shape) for t in (base, a, b, both)}
    if len(shapes) != 1:
        raise ValueError(f"the four logits tensors must share one shape, got {sorted(shapes)}")
    lp = [t.double() - t.double().mean(-1, keepdim=True) for t in (base, a, b, both)]
    d_a, d_b, d_ab = lp[1] - lp[0], lp[2] - lp[0], lp[3] - lp[0]
    return (d_ab - d_a - d_b).norm(dim=-1), d_ab.norm(dim=-1)
