"""Transitions in training curves: onset, midpoint and sharpness of an abrupt change; loss plateaus.

The definitions are assay's (below), written for the
phenomena of Lubana, Kawaguchi, Dick, Tanaka 2025, "A Percolation Model of Emergence" (ICLR 2025),
Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion"
(NeurIPS 2024) and Park, Okawa, Lee, Lubana, Tanaka 2024, "Emergence of Hidden Capabilities" (NeurIPS
2024). A metric m(t) is read on the log-step axis u = ln t (steps t ≤ 0 are dropped):

1. normalise: m̃ = (m − m_chance)/(m_target − m_chance); a loss: (L₀ − L)/(L₀ − L_floor);
2. per seed (never on a seed average), smooth with a running median of 3 checkpoints;
3. fit m̃(u) = a + (b − a)·σ((u − u₀)/w) by least squares (SciPy ``curve_fit``, u₀ started at the
   0.5 crossing) and report t₀ = e^{u₀}, onset t₁₀ = t₀·9^{−w}, t₉₀ = t₀·9^{w} and the width
   Δ₁₀→₉₀ = 2w·ln 9/ln 10 decades (t₀ = 1000, w = 0.25 → t₁₀ = 577.350, t₉₀ = 1732.051, Δ = 0.477);
4. cross-check: t_q = the first checkpoint after which the smoothed m̃ stays ≥ q (a spike is not an onset);
5. the transition is *abrupt* when Δ ≤ 0.5 decade and the jump b − a ≥ 3 × the standard deviation of
   the (unsmoothed) m̃ on the plateau before t₁₀ — so at least 3 checkpoints must lie before t₁₀ (a
   "transition" after the first point or two is noise) — and t₀ lies inside the observed steps;
6. a loss plateau is a maximal run of checkpoints with |dL/d log₁₀ t| < 0.05·(L₀ − L_floor) spanning
   ≥ 0.3 decade, ended by a drop of ≥ 50% of the remaining gap to L_floor within 0.5 decade.

Resolution: a transition narrower than the checkpoint spacing is only known to be "≤ spacing".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["normalise", "normalise_loss", "running_median", "sigmoid_times", "first_stays_above", "Transition",
           "fit_transition", "Plateau", "loss_plateaus", "LN9_DECADES"]

LN9_DECADES = 2 * math.log(9) / math.log(10)
"""Δ₁₀→₉₀ in decades per unit of the sigmoid width w (1.9085)."""


def normalise(values: Sequence[float], *, chance: float, target: float) -> np.ndarray:
    """m̃ = (m − chance)/(target − chance): 0 at chance, 1 at the target."""
    if target == chance:
        raise ValueError(f"target and chance must differ to normalise a metric, both are {chance}")
    return (np.asarray(values, dtype=float) - chance) / (target - chance)


def normalise_loss(values: Sequence[float], *, floor: float = 0.0) -> np.ndarray:
    """(L₀ − L)/(L₀ − L_floor) with L₀ the first value: 0 at the start, 1 at the floor."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or v[0] == floor:
        raise ValueError("normalising a loss needs a first value above the floor (L₀ ≠ L_floor)")
    return (v[0] - v) / (v[0] - floor)


def running_median(values: Sequence[float], k: int = 3) -> np.ndarray:
    """Running median over ``k`` (odd) neighbouring checkpoints; the ends keep a shrunken window."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"the running-median window must be a positive odd number, got {k}")
    v = np.asarray(values, dtype=float)
    h = k // 2
    return np.array([np.median(v[max(0, i - h): i + h + 1]) if h <= i < len(v) - h else v[i] for i in range(len(v))])


def sigmoid_times(u0: float, w: float) -> tuple[float, float, float, float]:
    """``(t₀, t₁₀, t₉₀, Δ decades)`` of the sigmoid σ((ln t − u₀)/w)."""
    t0 = math.exp(u0)
    return t0, t0 * 9.0 ** (-w), t0 * 9.0**w, w * LN9_DECADES


def first_stays_above(steps: Sequence[float], values: Sequence[float], q: float) -> float:
    """The first step after which ``values`` stay ≥ q until the end (NaN if the last value is below q)."""
    v = np.asarray(values, dtype=float)
    below = np.flatnonzero(~(v >= q))
    if below.size == 0:
        return float(steps[0])
    i = below[-1] + 1
    return float(steps[i]) if i < len(v) else math.nan


class Transition(NamedTuple):
    """A sigmoid fitted to a normalised curve on the log-step axis (NaN fields when the fit failed)."""

    t0: float
    """Midpoint step e^{u₀}."""
    t10: float
    """Onset: the step where the sigmoid is 10% of the way from a to b."""
    t90: float
    """The step where the sigmoid is 90% of the way."""
    width_decades: float
    """Δ₁₀→₉₀ = log₁₀(t₉₀/t₁₀)."""
    low: float
    """a: the fitted level before the transition."""
    high: float
    """b: the fitted level after the transition."""
    plateau_sd: float
    """Standard deviation of the unsmoothed m̃ before t₁₀ (NaN if fewer than 3 checkpoints lie there)."""
    t10_observed: float
    """First checkpoint after which the smoothed m̃ stays ≥ 0.1."""
    t90_observed: float
    """First checkpoint after which the smoothed m̃ stays ≥ 0.9."""
    abrupt: bool
    """Δ ≤ max_width, b − a ≥ min_jump_sd × plateau_sd, and t₀ inside the observed steps."""


def _sigmoid(u, a, b, u0, w):
    from scipy.special import expit

    return a + (b - a) * expit((u - u0) / w)


def fit_transition(
    steps: Sequence[float], values: Sequence[float], *, smooth: int = 3, max_width: float = 0.5,
    min_jump_sd: float = 3.0,
) -> Transition:
    """Fit and classify the transition of one seed's normalised curve m̃(t) (see the module docstring)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    t = np.asarray(steps, dtype=float)
    raw = np.asarray(values, dtype=float)
    if t.shape != raw.shape or t.ndim != 1:
        raise ValueError(f"steps and values must be 1-d and of equal length, got {t.shape} and {raw.shape}")
    keep = (t > 0) & np.isfinite(raw)
    t, raw = t[keep], raw[keep]
    if t.size < 5:
        raise ValueError(f"a transition fit needs at least 5 checkpoints with step > 0, got {t.size}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("steps must be strictly increasing")
    u = np.log(t)
    m = running_median(raw, smooth)
    span = u[-1] - u[0]
    a0, b0 = float(np.mean(m[:3])), float(np.mean(m[-3:]))
    mid = (a0 + b0) / 2
    crossing = np.flatnonzero((m - mid) * np.sign(b0 - a0 or 1.0) >= 0)
    u_start = float(u[crossing[0]]) if crossing.size else float(np.median(u))
    p0 = [a0, b0, u_start, span / 20]
    bounds = ([-np.inf, -np.inf, u[0] - span, span / 1000], [np.inf, np.inf, u[-1] + span, 10 * span])
    nan = math.nan
    t10_obs, t90_obs = first_stays_above(t, m, 0.1), first_stays_above(t, m, 0.9)
    if np.ptp(m) == 0:  # a constant curve has no transition to fit
        return Transition(nan, nan, nan, nan, a0, b0, nan, t10_obs, t90_obs, False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, b, u0, w), _ = curve_fit(_sigmoid, u, m, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return Transition(nan, nan, nan, nan, nan, nan, nan, t10_obs, t90_obs, False)
    t0, t10, t90, width = sigmoid_times(float(u0), float(w))
    before = raw[t < t10]
    sd = float(np.std(before, ddof=1)) if before.size >= 3 else nan
    abrupt = bool(width <= max_width and (b - a) >= min_jump_sd * sd and t[0] <= t0 <= t[-1])
    return Transition(t0, t10, t90, width, float(a), float(b), sd, t10_obs, t90_obs, abrupt)


class Plateau(NamedTuple):
    """A loss plateau ended by a drop."""

    start: float
    """First step of the plateau."""
    end: float
    """Last step of the plateau."""
    level: float
    """Mean loss on the plateau."""
    drop: float
    """Fraction of the remaining gap (level − floor) closed within 0.5 decade after ``end``."""


def loss_plateaus(
    steps: Sequence[float], losses: Sequence[float], *, floor: float = 0.0, slope: float = 0.05,
    min_span: float = 0.3, drop_within: float = 0.5, min_drop: float = 0.5,
) -> tuple[Plateau, ...]:
    """Plateaus of a (running-median smoothed) loss curve, in order (see item 6 of the module docstring)."""
    t = np.asarray(steps, dtype=float)
    keep = t > 0
    t = t[keep]
    loss = running_median(np.asarray(losses, dtype=float)[keep], 3)
    if t.size < 3:
        raise ValueError(f"plateau detection needs at least 3 checkpoints with step > 0, got {t.size}")
    gap0 = loss[0] - floor
    if not gap0 > 0:
        raise ValueError(f"the first loss {loss[0]} must lie above the floor {floor}")
    lt = np.log10(t)
    flat = np.abs(np.diff(loss) / np.diff(lt)) < slope * gap0  # per interval between checkpoints
    out = []
    i = 0
    while i < flat.size:
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < flat.size and flat[j + 1]:
            j += 1
        s, e = i, j + 1  # checkpoints s..e
        if lt[e] - lt[s] >= min_span:
            level = float(loss[s: e + 1].mean())
            after = loss[(lt > lt[e]) & (lt <= lt[e] + drop_within)]
            gap = level - floor
            drop = float((level - after.min()) / gap) if after.size and gap > 0 else 0.0
            if drop >= min_drop:
                out.append(Plateau(float(t[s]), float(t[e]), level, drop))
        i = j + 1
    return tuple(out)
