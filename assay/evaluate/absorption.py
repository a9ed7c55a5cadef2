"""Feature absorption and feature splitting on worlds whose concepts form a hierarchy.

Chanin, Wilken-Smith, Dulka, Bhatnagar & Bloom 2024, "A is for Absorption: Studying Feature Splitting
and Absorption in Sparse Autoencoders" (arXiv 2409.14507). With planted ground truth the measurement
needs no probe. For a parent concept p with children ch(p) (a child fires only with its parent), its
main latent l_p (the latent that encodes p itself, not p-with-a-child) and tokens where p is on:

    l_p = argmax_i cos(D_i, G_p) with planted directions, else argmax_i F1(i fires, p on ∧ no child on)
    recall_alone      = P(l_p fires | p on, no child on)
    recall_with_child = P(l_p fires | p on, some child on)
    absorption(p)     = P(l_p silent ∧ ∃ firing j ≠ l_p that carries p | p on, some child on)

A latent j "carries" p when its atom has cos(D_j, G_p) ≥ ``cos_threshold`` (planted direction G_p),
or — without directions — when its firing precision for p is ≥ ``precision_threshold``. A perfect
dictionary has absorption 0 and both recalls 1; one whose child latents absorbed the parent has
absorption 1 and recall_with_child 0.

Feature splitting: latent j belongs to concept c when c is its best-F1 concept and its precision for
c is ≥ ``precision_threshold``; ``split_count(c)`` is how many latents belong to c (1 = no splitting).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from assay.evaluate.detection import FIRE_THRESHOLD, f1_matrix
from assay.evaluate.geometry import unit

__all__ = ["AbsorptionMetrics", "absorption", "SplittingMetrics", "feature_splitting"]


class AbsorptionMetrics(NamedTuple):
    """Absorption of each parent concept by its children's latents."""

    parents: Tensor
    """Indices of the parent concepts scored ``[P]`` (those with at least one child)."""
    main_latent: Tensor
    """Per parent: its main (best-F1) latent ``[P]``."""
    recall_alone: Tensor
    """Per parent: P(main latent fires | parent on, no child on) ``[P]`` (NaN if never)."""
    recall_with_child: Tensor
    """Per parent: P(main latent fires | parent on, a child on) ``[P]``."""
    absorption: Tensor
    """Per parent: fraction of parent-with-child tokens absorbed by another latent ``[P]``."""
    mean_absorption: float
    """Mean absorption over parents (NaNs skipped)."""
    mean_recall_gap: float
    """Mean of recall_alone − recall_with_child over parents."""


def _precision(on: Tensor, y: Tensor) -> Tensor:
    tp = on.double().t() @ y.double()  # [n, C]
    fires = on.double().sum(0)[:, None]
    return torch.where(fires > 0, tp / fires.clamp(min=1), torch.zeros_like(tp))


def absorption(z: Tensor, active: Tensor, parents: Tensor, *, atoms: Tensor | None = None,
               directions: Tensor | None = None, cos_threshold: float = 0.3,
               precision_threshold: float = 0.9) -> AbsorptionMetrics:
    """Absorption of parent concepts (``parents[c]`` = parent of concept c, −1 for roots).

    ``z [N, n]`` codes, ``active [N, m]`` bool truth. Give both ``atoms [n, d]`` and ``directions
    [m, d]`` for the direction criterion; otherwise the precision criterion is used.
    """
    if z.ndim != 2 or active.ndim != 2 or z.shape[0] != active.shape[0]:
        raise ValueError(f"codes [N, n] and truth [N, m] must share N, got {tuple(z.shape)}, {tuple(active.shape)}")
    if parents.shape != (active.shape[1],):
        raise ValueError(f"parents must have one entry per concept ({active.shape[1]}), got {tuple(parents.shape)}")
    if (atoms is None) != (directions is None):
        raise ValueError("give both atoms and directions (direction criterion) or neither (precision criterion)")
    z = z.detach().double().cpu()
    y = active.detach().bool().cpu()
    on = z > FIRE_THRESHOLD
    cos = None
    if atoms is not None and directions is not None:
        cos = unit(atoms.detach().cpu()) @ unit(directions.detach().cpu()).t()  # [n, m]
        carries = cos >= cos_threshold
    else:
        carries = _precision(on, y) >= precision_threshold
    ps = sorted({int(p) for p in parents.tolist() if p >= 0})
    mains, alone_r, child_r, absorbed = [], [], [], []
    nan = float("nan")
    for p in ps:
        kids = (parents == p).nonzero().squeeze(1)
        any_child = y[:, kids].any(1)
        alone = y[:, p] & ~any_child
        lp = int(cos[:, p].argmax()) if cos is not None else int(f1_matrix(z, alone[:, None])[:, 0].argmax())
        with_child = y[:, p] & any_child
        fires = on[:, lp]
        alone_r.append(fires[alone].double().mean().item() if alone.any() else nan)
        if with_child.any():
            child_r.append(fires[with_child].double().mean().item())
            others = on[with_child] & carries[:, p][None, :]
            others[:, lp] = False
            absorbed.append((~fires[with_child] & others.any(1)).double().mean().item())
        else:
            child_r.append(nan)
            absorbed.append(nan)
        mains.append(lp)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ab, ra, rc = t(absorbed), t(alone_r), t(child_r)
    return AbsorptionMetrics(torch.tensor(ps, dtype=torch.long), torch.tensor(mains, dtype=torch.long), ra, rc, ab,
                             ab.nanmean().item() if len(ps) else nan, (ra - rc).nanmean().item() if len(ps) else nan)


class SplittingMetrics(NamedTuple):
    """How many latents each concept is split over."""

    split_count: Tensor
    """Per concept: latents that belong to it ``[C]`` (long)."""
    mean_split: float
    """Mean split count over concepts that own at least one latent."""
    fraction_split: float
    """Fraction of those concepts owning two or more latents."""


def feature_splitting(z: Tensor, active: Tensor, *, precision_threshold: float = 0.8) -> SplittingMetrics:
    """Split counts of concepts ``active [N, C]`` over latents ``z [N, n]`` (module docstring)."""
    z = z.detach().double().cpu()
    y = active.detach().bool().cpu()
    on = z > FIRE_THRESHOLD
    f1 = f1_matrix(z, y)
    prec = _precision(on, y)
    best = f1.argmax(1)  # [n]
    owned = (prec.gather(1, best[:, None]).squeeze(1) >= precision_threshold) & on.any(0)
    counts = torch.bincount(best[owned], minlength=y.shape[1])
    has = counts > 0
    if not has.any():
        return SplittingMetrics(counts, float("nan"), float("nan"))
    return SplittingMetrics(counts, counts[has].double().mean().item(), (counts[has] >= 2).double().mean().item())
