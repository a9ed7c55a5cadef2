"""MIB's circuit scores: faithfulness of the top-k% edges, CPR and CMD.

Mueller, Geiger, Wiegreffe, et al. 2025, "MIB: A Mechanistic Interpretability Benchmark" (ICML 2025,
arXiv 2504.13151; code cisnlp/MIB-circuit-track), circuit-localization track. For a circuit C_k made of the
top k% of edges by score, faithfulness is

    f(k) = (m(C_k) − m(∅)) / (m(N) − m(∅))

(m: the task metric with only the circuit's edges carrying signal; N: every edge; ∅: none), at
k ∈ {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}%. CPR (circuit performance ratio; higher is better) is the
trapezoid area under f over the fraction axis, with edges ranked by their *signed* scores; CMD (circuit–model
distance; lower is better) the area under |1 − f|, edges ranked by *absolute* scores. The x axis is the
fraction itself (MIB's default); ``log_x=True`` gives the variant on log₁₀ fractions normalised by the axis
length. Hand checks (spec circuits.md §4.1): f = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1, 1, 1, 1) → CPR 0.9804,
CMD 0.0186 (log-x CPR 0.683333); f = 0 up to 50% then 1 at 100% → CPR 0.25.

The metric m is a callable on a boolean edge mask, so this module needs nothing from a method package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = ["MIB_FRACTIONS", "FaithfulnessCurve", "faithfulness_curve", "MIBScores", "mib_scores"]

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""MIB's edge fractions (0.1% … 100%)."""


class FaithfulnessCurve(NamedTuple):
    """f(k) at each edge fraction."""

    fractions: tuple[float, ...]
    """Edge fractions k."""
    faithfulness: tuple[float, ...]
    """f(k) = (m(C_k) − m(∅)) / (m(N) − m(∅)); NaN if m(N) = m(∅)."""
    n_edges: tuple[int, ...]
    """Edges in each C_k (⌈k · number of candidate edges⌉)."""


def faithfulness_curve(metric: Callable[[torch.Tensor], float], scores: torch.Tensor, *,
                       candidates: torch.Tensor | None = None,
                       fractions: Sequence[float] = MIB_FRACTIONS) -> FaithfulnessCurve:
    """f(k) for circuits made of the highest-``scores`` edges. ``metric(mask)`` evaluates the model with only the
    edges in ``mask`` (bool, shaped like ``scores``); ``candidates`` are the edges that exist (default: every
    nonzero score). Ties are broken by position (a stable sort)."""
    cand = scores != 0 if candidates is None else candidates
    if cand.shape != scores.shape:
        raise ValueError(f"candidates {tuple(cand.shape)} must have the shape of scores {tuple(scores.shape)}")
    if any(not 0 < k <= 1 for k in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {list(fractions)}")
    idx = cand.reshape(-1).nonzero()[:, 0]
    order = idx[scores.reshape(-1)[idx].sort(descending=True, stable=True).indices]
    empty = metric(torch.zeros_like(cand))
    full = metric(cand.clone())
    denom = full - empty
    faith, counts = [], []
    for k in fractions:
        n = math.ceil(k * len(order))
        mask = torch.zeros(cand.numel(), dtype=torch.bool)
        mask[order[:n]] = True
        counts.append(n)
        faith.append((metric(mask.reshape(cand.shape)) - empty) / denom if denom != 0 else float("nan"))
    return FaithfulnessCurve(tuple(fractions), tuple(float(f) for f in faith), tuple(counts))


class MIBScores(NamedTuple):
    """MIB's two areas."""

    cpr: float
    """Area under f(k) (higher is better)."""
    cmd: float
    """Area under |1 − f(k)| (lower is better)."""


def mib_scores(fractions: Sequence[float], faithfulness: Sequence[float], *, log_x: bool = False) -> MIBScores:
    """Trapezoid areas under f and |1 − f| over the fractions (or log₁₀ fractions normalised to length 1)."""
    if len(fractions) != len(faithfulness) or len(fractions) < 2:
        raise ValueError(f"need two or more (fraction, faithfulness) points, got {len(fractions)} and {len(faithfulness)}")
    x = torch.tensor(fractions, dtype=torch.float64)
    if log_x:
        x = x.log10()
        x = (x - x[0]) / (x[-1] - x[0])
    f = torch.tensor(faithfulness, dtype=torch.float64)
    return MIBScores(float(torch.trapezoid(f, x)), float(torch.trapezoid((1 - f).abs(), x)))
