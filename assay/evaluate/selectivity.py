"""Intervention selectivity: editing one latent changes the ground-truth behaviour of its concept only.

After Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and
Control: Evaluation via Intervention" (edit through the Lens ``decode``, score the effect) and the
causal test of Menon et al. 2025 (intervene on a latent, check the change the feature predicts).
For a Lens (encode/decode), activations h ``[N, d]``, a ground-truth ``readout(h) -> [N, C]`` (what
the world says each concept's behaviour is, e.g. the true feature coefficients read off h) and a
latent i assigned to target concept c, the edit keeps the reconstruction error (``Add`` through
:func:`assay.lens.apply_edit`):

    z = encode(h);  z′ = z + δ e_i;  h′ = h + (decode(z′) − decode(z))
    effect_c′ = mean_b |readout(h′)_bc′ − readout(h)_bc′|
    selectivity(i → c) = effect_c / Σ_c′ effect_c′          (1: only c moves; ≈ 1/C: no preference)

δ = ``strength`` × the latent's mean positive code on h (1.0 if it never fires). Because even a
perfect edit along the true direction G_c moves other concepts when they are in superposition, the
same score for the reference edit h′ = h + δ′ G_c (δ′ giving the same ‖Δh‖) is reported and
``relative`` = selectivity / reference selectivity (1 for a perfect dictionary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from assay.lens import Add, Lens, apply_edit

__all__ = ["SelectivityMetrics", "readout_effects", "intervention_selectivity"]


def readout_effects(readout: Callable[[Tensor], Tensor], h: Tensor, h_edit: Tensor) -> Tensor:
    """Mean absolute change of each concept's readout ``[C]``."""
    with torch.no_grad():
        return (readout(h_edit) - readout(h)).abs().double().mean(0).cpu()


class SelectivityMetrics(NamedTuple):
    """Effects of single-latent edits on every concept's ground-truth readout."""

    targets: Tensor
    """Target concept of each edit ``[E]``."""
    latents: Tensor
    """Edited latent ``[E]``."""
    effects: Tensor
    """Mean |Δ readout| per edit and concept ``[E, C]``."""
    selectivity: Tensor
    """effect on the target / total effect ``[E]``."""
    reference: Tensor
    """The same for an equally large edit along the true direction ``[E]`` (NaN without directions)."""
    relative: Tensor
    """selectivity / reference ``[E]``."""
    mean_selectivity: float
    """Mean selectivity over edits."""
    mean_relative: float
    """Mean relative selectivity over edits (NaN without directions)."""


def _share(effect: Tensor, c: int) -> float:
    total = effect.sum().item()
    return effect[c].item() / total if total > 0 else 0.0


def intervention_selectivity(lens: Lens, h: Tensor, assignment: Sequence[tuple[int, int]],
                             readout: Callable[[Tensor], Tensor], *, directions: Tensor | None = None,
                             strength: float = 1.0) -> SelectivityMetrics:
    """Selectivity of each ``(concept, latent)`` pair in ``assignment`` (module docstring).

    ``directions [C, d]``, when given, are the true concept directions for the reference edit.
    """
    if len(assignment) == 0:
        raise ValueError("assignment is empty: give (concept, latent) pairs to edit")
    h = h.detach()
    with torch.no_grad():
        z = lens.encode(h)
    rows, sel, ref = [], [], []
    for c, i in assignment:
        fired = z[..., i][z[..., i] > 0]
        delta = strength * (fired.mean().item() if fired.numel() else 1.0)
        with torch.no_grad():
            h2 = apply_edit(h, lens, Add(concepts=i, amount=delta))[0]
        eff = readout_effects(readout, h, h2)
        rows.append(eff)
        sel.append(_share(eff, c))
        if directions is not None:
            step = (h2 - h).norm(dim=-1).mean().item()
            g = directions[c].to(h.dtype)
            h3 = h + step * g / g.norm().clamp(min=1e-12)
            ref.append(_share(readout_effects(readout, h, h3), c))
        else:
            ref.append(float("nan"))
    s = torch.tensor(sel, dtype=torch.float64)
    r = torch.tensor(ref, dtype=torch.float64)
    rel = s / r
    return SelectivityMetrics(torch.tensor([c for c, _ in assignment]), torch.tensor([i for _, i in assignment]),
                              torch.stack(rows), s, r, rel, s.mean().item(), rel.nanmean().item())
