"""The Lens protocol and the edits of a lens's concept code: a floor every layer may import.

Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control:
Evaluation via Intervention" (arXiv 2411.04430). Every representation method in assay — SAEs and other
dictionaries, probes, steering vectors, logit/tuned lenses, SpLiCE — is an encoder ``z = E(h)`` from
activations to concepts and a decoder ``h = D(z)`` back. An intervention edits the code z → z′ and
continues with

    h′ = h + (D(z′) − D(z))                                                        (1)

— the reconstruction error h − D(E(h)) is kept, so an identity edit (z′ = z) changes nothing and a
lossy lens (SAE, pseudo-inverse of an unembedding) does not corrupt the untouched part of h. Without a
lens (``lens=None``: the identity lens, z = h) equation (1) is h′ = z′, and is computed as such.

The edits, with strength s (the edit's ``strength``, times a per-row multiplier when one is given) on
the concepts c they touch:

    Read     z′ = z                                  (record the code, change nothing)
    Set      z′_c = s·value                          (replace; exactly ``value`` at s = 1)
    Clamp    z′_c = z_c + s·(value − z_c)            (move toward ``value``; partial when s < 1)
    Add      z′_c = z_c + s·amount
    Scale    z′_c = z_c·(1 + s·(factor − 1))
    Ablate   z′_c = (1 − s)·z_c                      (zero at s = 1)

An edit whose ``strength`` is 0 is skipped: h′ *is* h, bitwise (the axiom "strength 0 changes nothing").
Set and Clamp agree at s = 1. Set scales what it puts in: with a direction lens it is ablate-then-add
α v (Arditi et al. 2024), so it is discontinuous at s = 0 by design (skipped at 0, an ablation plus a
small addition just above); Clamp moves continuously from z (s = 0) to ``value`` (s = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Lens", "Concepts", "Read", "Set", "Clamp", "Add", "Scale", "Ablate", "Edit", "check_lens", "apply_edit"]


@runtime_checkable
class Lens(Protocol):
    """Anything with ``encode(h) -> z`` and ``decode(z) -> h`` over the last dimension."""

    def encode(self, h: Tensor) -> Tensor:
        """Activations ``[..., d_model]`` → concept coordinates ``[..., n_concepts]``."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """Concept coordinates ``[..., n_concepts]`` → activations ``[..., d_model]``."""
        ...


def check_lens(lens: Any) -> None:
    """Raise a clear TypeError unless ``lens`` is None (the identity lens) or has encode and decode."""
    if lens is None:
        return
    if not (callable(getattr(lens, "encode", None)) and callable(getattr(lens, "decode", None))):
        raise TypeError(f"{type(lens).__name__} is not a Lens: it needs encode(h) and decode(z) methods "
                        "(or pass None to edit the activations themselves)")


Concepts = int | Sequence[int] | None
Strength = float | Tensor


@dataclass(frozen=True, kw_only=True)
class _EditBase:
    concepts: Concepts = None
    """Concept index or indices the edit touches (None: every concept; for ``lens=None``, every dimension)."""
    strength: float = 1.0
    """Multiplier of the edit; 0 changes nothing (bitwise)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.strength):
            raise ValueError(f"{type(self).__name__}: strength must be a finite number, got {self.strength}")

    @property
    def changes_nothing(self) -> bool:
        """True when the edit leaves h bitwise unchanged whatever h is (strength 0, or a Read)."""
        return self.strength == 0

    def _index(self, n: int) -> Tensor | slice:
        if self.concepts is None:
            return slice(None)
        idx = [self.concepts] if isinstance(self.concepts, int) else list(self.concepts)
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise ValueError(f"{type(self).__name__}: concept index {bad} out of range for a lens with {n} concepts")
        return torch.tensor(idx, dtype=torch.long)

    def _operand(self, name: str, value: float | Tensor, z: Tensor, touched: Tensor) -> Tensor:
        v = torch.as_tensor(value, dtype=z.dtype, device=z.device)
        k = touched.shape[-1]
        if v.dim() > 0 and v.shape[-1] not in (1, k):
            raise ValueError(
                f"{type(self).__name__}: {name} has width {v.shape[-1]} but the edit touches {k} of the "
                f"{z.shape[-1]} concepts (without a lens: the activations' width); was it made for another "
                "site, lens or model?"
            )
        return v


@dataclass(frozen=True, kw_only=True)
class Read(_EditBase):
    """Record the concept code; change nothing."""

    @property
    def changes_nothing(self) -> bool:
        return True

    def new_code(self, z: Tensor, s: Strength) -> Tensor:
        return z


@dataclass(frozen=True, kw_only=True)
class Set(_EditBase):
    """z_c ← strength·value: replace the concept (exactly ``value`` at strength 1)."""

    value: float | Tensor

    def new_code(self, z: Tensor, s: Strength) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = s * self._operand("value", self.value, z, z[..., i])
        return out


@dataclass(frozen=True, kw_only=True)
class Clamp(_EditBase):
    """z_c ← z_c + strength·(value − z_c): move the concept to ``value`` (partially when strength < 1)."""

    value: float | Tensor

    def new_code(self, z: Tensor, s: Strength) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] + s * (self._operand("value", self.value, z, z[..., i]) - z[..., i])
        return out


@dataclass(frozen=True, kw_only=True)
class Add(_EditBase):
    """z_c ← z_c + strength·amount."""

    amount: float | Tensor

    def new_code(self, z: Tensor, s: Strength) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] + s * self._operand("amount", self.amount, z, z[..., i])
        return out


@dataclass(frozen=True, kw_only=True)
class Scale(_EditBase):
    """z_c ← z_c·(1 + strength·(factor − 1))."""

    factor: float

    def new_code(self, z: Tensor, s: Strength) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] * (1.0 + s * (self.factor - 1.0))
        return out


@dataclass(frozen=True, kw_only=True)
class Ablate(_EditBase):
    """z_c ← (1 − strength)·z_c (zero the concept at strength 1)."""

    def new_code(self, z: Tensor, s: Strength) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] * (1.0 - s)
        return out


Edit = Read | Set | Clamp | Add | Scale | Ablate


def apply_edit(h: Tensor, lens: Lens | None, edit: Edit, *, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Equation (1) on rows ``h [..., d]``: returns ``(h′, z)`` with ``z`` the code before the edit.

    ``scale`` (broadcast against ``z``, e.g. ``[n, 1]`` per row) multiplies the edit's strength, as a
    schedule over generation steps does. ``h′ is h`` when the edit is a Read or its strength is 0;
    ``lens=None`` edits the activations themselves (z = h, h′ = z′)."""
    z = h if lens is None else lens.encode(h)
    if edit.changes_nothing:
        return h, z
    z_new = edit.new_code(z, edit.strength if scale is None else edit.strength * scale)
    if lens is None:
        return z_new, z
    return h + (lens.decode(z_new) - lens.decode(z)), z
