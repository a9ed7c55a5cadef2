"""Matrix completion on the bench: the default tiny model's masked-entry error sits on a plateau (it copies
the observed entries and predicts the mean 0 for masked ones); the paper's sudden drop is looked for.

Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion" (NeurIPS
2024). The world is :class:`assay.worlds.matrix_completion.MatrixCompletionWorld` (5×5, rank 2, 30% masked;
plateau level E[M²] = r/9). Measured during training (the trainer's evaluations on its held-out batch):
the masked- and observed-entry MSE curves; after training:

- ``masked_mse`` (final), ``zero_mse`` (predicting 0 for every masked entry of the same batch: the plateau
  on that batch) and ``svt_masked_mse`` (singular value thresholding, the world's baseline);
- ``observed_mse`` (final; → 0 once copying is learned) and ``copy_step`` (first evaluation with observed
  MSE < 0.01);
- ``dropped``: 1 if the masked MSE ever fell below half the plateau r/9 (:func:`plateau_steps`), else 0.

On CPU budgets (3,000 and 9,000 steps, docs/dynamics_worlds.md) the plateau reproduced and the drop did not.
``benchmarks/matrix_completion_plateau.py`` runs the same measurement at the reference budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from assay.bench.phenomena.base import Curve, Measurement

__all__ = ["MatrixCompletionBudget", "FULL", "QUICK", "PlateauSteps", "plateau_steps", "PHENOMENON"]


@dataclass(frozen=True, kw_only=True)
class MatrixCompletionBudget:
    """How long the model trains and how often it is evaluated."""

    steps: int
    """Training updates of the world's reference model (its own default: 3,000)."""
    eval_every: int
    """Updates between evaluations (the curves' resolution)."""
    eval_size: int
    """Held-out matrices per evaluation."""


FULL = MatrixCompletionBudget(steps=600, eval_every=50, eval_size=512)
"""The documented budget (≈ 1–2 CPU minutes; copying is learned by ≈ 300 steps)."""
QUICK = MatrixCompletionBudget(steps=20, eval_every=5, eval_size=64)
"""A seconds-long budget for tests."""


class PlateauSteps(NamedTuple):
    """Where a masked-MSE curve is relative to the plateau level."""

    last_on_plateau: int | None
    """The last step whose value is above 0.9 × plateau (None if none)."""
    first_below_half: int | None
    """The first step whose value is below 0.5 × plateau: the drop (None if it never came)."""


def plateau_steps(curve: Sequence[tuple[int, float]], plateau: float) -> PlateauSteps:
    """:class:`PlateauSteps` of ``[(step, masked MSE), …]`` against the plateau level."""
    on = [s for s, v in curve if v > 0.9 * plateau]
    below = [s for s, v in curve if v < 0.5 * plateau]
    return PlateauSteps(on[-1] if on else None, below[0] if below else None)


class MatrixCompletionPhenomenon:
    """The masked-MSE plateau (and the drop, if it comes) on ``matrix_completion`` (module docstring)."""

    name = "matrix_completion"
    title = "Matrix completion: plateau, then an abrupt drop? (Gopalani, Lubana & Hu 2024)"
    claim = ("Gopalani et al. 2024: a transformer completing low-rank matrices first copies the observed entries "
             "and predicts the mean for masked ones (a loss plateau at masked MSE ≈ E[M²] = r/9), then the masked "
             "error drops suddenly. Shown by observed_mse → 0 while masked_mse stays at zero_mse (the plateau), and "
             "dropped = 1 if the masked MSE ever fell below half the plateau (the drop) — at this budget expect 0.")
    metrics = ("masked_mse", "zero_mse", "svt_masked_mse", "observed_mse", "copy_step", "dropped")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        from assay.bench.phenomena.training import train_reference
        from assay.worlds.base import make_generator
        from assay.worlds.matrix_completion import MatrixCompletionWorld

        budget = QUICK if quick else FULL
        world = MatrixCompletionWorld()
        res = train_reference(world, steps=budget.steps, seed=seed, eval_every=budget.eval_every,
                              eval_size=budget.eval_size)
        batch = world.sample(budget.eval_size, generator=make_generator(seed + 1))  # train()'s held-out batch
        M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
        plateau = world.config.rank / 9
        masked = [(int(h["step"]), h["masked_mse"]) for h in res.history]
        observed = [(int(h["step"]), h["observed_mse"]) for h in res.history]
        copied = [s for s, v in observed if v < 0.01]
        metrics = {"masked_mse": res.metrics["masked_mse"], "zero_mse": float((M[mask] ** 2).mean()),
                   "svt_masked_mse": float(((world.baseline(batch) - M) ** 2)[mask].mean()),
                   "observed_mse": res.metrics["observed_mse"], "copy_step": float(copied[0]) if copied else math.nan,
                   "dropped": float(plateau_steps(masked, plateau).first_below_half is not None)}
        steps = tuple(float(s) for s, _ in masked)
        curves = (Curve("masked-entry MSE", "training step", "MSE", steps, tuple(v for _, v in masked)),
                  Curve("observed-entry MSE", "training step", "MSE", steps, tuple(v for _, v in observed)),
                  Curve("plateau r/9", "training step", "MSE", steps, (plateau,) * len(steps)))
        return Measurement(metrics, curves)


PHENOMENON = MatrixCompletionPhenomenon()
"""The ``matrix_completion`` phenomenon of the ``dynamics`` family."""
