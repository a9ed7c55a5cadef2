"""Concept-space trajectories and hidden capabilities.

Park, Okawa, Lee, Lubana, Tanaka 2024, "Emergence of Hidden Capabilities: Exploring Learning Dynamics
in Concept Space" (NeurIPS 2024, arXiv 2406.19370; repo ``cfpark00/concept-learning``). Learning is
read in a *concept space* whose axes are the data's independent concepts: at each checkpoint the
model's outputs on a (held-out) concept combination are read out as ĉ(t) ∈ [0, 1]^k, the probability
of each concept's target value. The trajectory turns suddenly when a hidden capability emerges: an
intervention (over-prompting, a latent intervention) already elicits the concept while naive prompting
does not. assay's reading of it:

- the trajectory is smoothed by a 3-point running median over checkpoints;
- steps Δ_j = ĉ(t_{j+1}) − ĉ(t_j) shorter than 0.02 are ignored; the turning angle between consecutive
  kept steps is φ_j = ∠(Δ_{j−1}, Δ_j), and the turn is argmax φ (check: (0,0) → (0.5,0) → (0.5,0.5)
  turns by 90°);
- learning time τ = the first checkpoint after which the accuracy on the held-out class stays ≥ 0.8;
- hidden-capability gap = log₁₀ τ_naive − log₁₀ τ_intervened (decades by which an intervention elicits
  the capability earlier than naive prompting; > 0 means the capability was hidden).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from torch import nn

from assay.dynamics.checkpoints import CheckpointSeries, map_series
from assay.dynamics.transitions import first_stays_above, running_median

__all__ = ["concept_coordinates", "Trajectory", "concept_trajectory", "learning_time", "HiddenCapability",
           "hidden_capability"]


def concept_coordinates(
    series: CheckpointSeries, readout: Callable[[nn.Module], Sequence[float]], *, model: nn.Module | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """``(steps, coords [n_checkpoints, k])``: ``readout(model)`` (k concept probabilities) at every checkpoint."""
    pairs = map_series(series, lambda m: np.asarray(readout(m), dtype=float), model=model)
    coords = np.stack([c for _, c in pairs])
    if coords.ndim != 2:
        raise ValueError(f"readout must return one value per concept (a 1-d sequence), got shape {coords.shape[1:]}")
    return tuple(s for s, _ in pairs), coords


class Trajectory(NamedTuple):
    """A smoothed trajectory in concept space and its sharpest turn."""

    steps: tuple[int, ...]
    """Checkpoint steps."""
    points: np.ndarray
    """ĉ(t) after the running median, ``[n_checkpoints, k]``."""
    angles: tuple[tuple[int, float], ...]
    """(step at the vertex, turning angle in degrees) for every pair of consecutive kept steps."""
    turn_step: float
    """The checkpoint at the vertex of the largest turn (NaN if fewer than two steps were kept)."""
    turn_angle: float
    """The largest turning angle in degrees (NaN if fewer than two steps were kept)."""


def concept_trajectory(
    steps: Sequence[int], coords: np.ndarray, *, smooth: int = 3, min_step: float = 0.02,
) -> Trajectory:
    """Smooth a concept-space trajectory and find its turning angles (see the module docstring)."""
    c = np.asarray(coords, dtype=float)
    if c.ndim != 2 or c.shape[0] != len(steps):
        raise ValueError(f"coords must be [n_checkpoints, k] with n_checkpoints = {len(steps)}, got shape {c.shape}")
    pts = np.stack([running_median(c[:, i], smooth) for i in range(c.shape[1])], axis=1)
    kept = []  # (vertex index where the step starts, Δ)
    for j in range(len(pts) - 1):
        d = pts[j + 1] - pts[j]
        if np.linalg.norm(d) >= min_step:
            kept.append((j, d))
    angles = []
    for (_, d0), (j1, d1) in zip(kept, kept[1:]):
        cos = float(d0 @ d1 / (np.linalg.norm(d0) * np.linalg.norm(d1)))
        angles.append((int(steps[j1]), math.degrees(math.acos(max(-1.0, min(1.0, cos))))))
    if not angles:
        return Trajectory(tuple(steps), pts, (), math.nan, math.nan)
    step, angle = max(angles, key=lambda a: a[1])
    return Trajectory(tuple(int(s) for s in steps), pts, tuple(angles), float(step), angle)


def learning_time(steps: Sequence[int], accuracy: Sequence[float], *, threshold: float = 0.8) -> float:
    """τ: the first checkpoint after which ``accuracy`` stays ≥ ``threshold`` (NaN if it never does)."""
    return first_stays_above(steps, accuracy, threshold)


class HiddenCapability(NamedTuple):
    """When a capability can be elicited by an intervention vs by naive prompting."""

    tau_naive: float
    """Learning time with naive prompting."""
    tau_intervened: float
    """Learning time with the intervention."""
    gap: float
    """log₁₀ τ_naive − log₁₀ τ_intervened in decades (NaN if either is never reached or is step 0)."""


def hidden_capability(
    steps: Sequence[int], naive: Sequence[float], intervened: Sequence[float], *, threshold: float = 0.8,
) -> HiddenCapability:
    """Compare learning times of the same capability measured by naive prompting and by an intervention."""
    tn = learning_time(steps, naive, threshold=threshold)
    ti = learning_time(steps, intervened, threshold=threshold)
    gap = math.log10(tn) - math.log10(ti) if tn > 0 and ti > 0 else math.nan
    return HiddenCapability(tn, ti, gap)
