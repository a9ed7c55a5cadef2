"""Matrix completion on the bench: the masked-entry error sits on a plateau (the model copies the observed
entries and predicts the mean 0 for masked ones); the paper's sudden drop below the singular-value-thresholding
baseline, with the attention moving onto the masked entry's row and column, is looked for. In the CPU sweep
(docs/dynamics_worlds.md) the plateau reproduced and the drop below SVT did not (one seed in three stepped down
to 0.77 of the plateau).

Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion" (NeurIPS
2024). The world is :class:`assay.worlds.matrix_completion.MatrixCompletionWorld` in the paper's layout: a
bidirectional encoder reads the masked matrix and is trained on the squared error of every entry. At CPU size
the phenomenon uses :data:`WORLD` (4×4, rank 1, 30% masked; plateau level E[M²] = r/9) and a constant learning
rate :data:`TRAINING` (docs/dynamics_worlds.md has the sweep behind both). Measured during training (the
trainer's evaluations on its held-out batch): the masked- and observed-entry MSE curves and, per layer, the
attention that masked positions pay to their own row and column (:func:`line_attention`); after training:

- ``masked_mse`` (final), ``zero_mse`` (predicting 0 for every masked entry of the same batch: the plateau
  on that batch) and ``svt_masked_mse`` (singular value thresholding, the world's baseline);
- ``observed_mse`` (final; → 0 once copying is learned) and ``copy_step`` (first evaluation with observed
  MSE < 0.01);
- ``drop_step``: the first evaluation with masked MSE below half the plateau r/9 (:func:`plateau_steps`; NaN
  if it never came) and ``dropped`` (1 if it came);
- ``line_attn_plateau`` / ``line_attn_final``: the largest per-layer row-and-column attention of masked
  queries at the last evaluation on the plateau and at the end (uniform attention: 2(n − 1)/n²).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from assay.bench.phenomena.base import Curve, Measurement
from assay.worlds.matrix_completion import MatrixCompletionConfig

__all__ = ["MatrixCompletionBudget", "FULL", "QUICK", "WORLD", "TRAINING", "PlateauSteps", "plateau_steps",
           "line_attention", "PHENOMENON"]


@dataclass(frozen=True, kw_only=True)
class MatrixCompletionBudget:
    """How long the model trains and how often it is evaluated."""

    steps: int
    """Training updates of the world's reference model."""
    eval_every: int
    """Updates between evaluations (the curves' resolution)."""
    eval_size: int
    """Held-out matrices per evaluation."""


WORLD = MatrixCompletionConfig(size=4, rank=1)
"""The world of the phenomenon: 4×4, rank 1, 30% masked, encoder layout, MSE loss (the sweep in
docs/dynamics_worlds.md: 5×5 rank 2 and 5×5 rank 1 stayed on the plateau at CPU budgets)."""
TRAINING = {"lr": 3e-3, "min_lr": 3e-3}
"""Training settings over the world's reference: a constant learning rate of 3e-3 after the warmup."""
FULL = MatrixCompletionBudget(steps=5000, eval_every=100, eval_size=512)
"""The documented budget (10–15 minutes per seed on the shared CPU; the sweep's partial drop came at 3,000)."""
QUICK = MatrixCompletionBudget(steps=20, eval_every=5, eval_size=64)
"""A seconds-long budget for tests."""
N_ATTENTION = 128
"""Held-out matrices whose attention patterns are read at each evaluation."""


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


def line_attention(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per head [h]: the attention mass that masked query positions put on the other entries of their own row
    and column, averaged over masked queries. ``pattern`` [batch, head, n², n²] (row-major entries, the encoder
    layout), ``mask`` [batch, n, n] (True = masked). Uniform attention gives 2(n − 1)/n²."""
    b, _, t, _ = pattern.shape
    n = math.isqrt(t)
    if n * n != t or mask.shape != (b, n, n):
        raise ValueError(f"pattern {tuple(pattern.shape)} must attend over the n² entries of mask {tuple(mask.shape)}")
    pos = torch.arange(t)
    row, col = pos // n, pos % n
    line = ((row[:, None] == row[None, :]) | (col[:, None] == col[None, :])) & (pos[:, None] != pos[None, :])
    mass = (pattern * line.to(pattern)).sum(-1)  # [batch, head, query]
    queries = mask.reshape(b, 1, t).to(pattern)
    return (mass * queries).sum((0, 2)) / queries.sum((0, 2)).clamp_min(1)


class MatrixCompletionPhenomenon:
    """The masked-MSE plateau, the drop and the attention change on ``matrix_completion`` (module docstring)."""

    name = "matrix_completion"
    title = "Matrix completion: plateau, then an abrupt drop (Gopalani, Lubana & Hu 2024)"
    claim = ("Gopalani et al. 2024: a transformer completing low-rank matrices first copies the observed entries "
             "and predicts the mean for masked ones (a loss plateau at masked MSE ≈ E[M²] = r/9), then the masked "
             "error drops suddenly, below the nuclear-norm (SVT) baseline, as the attention heads move onto the "
             "masked entry's row and column. Shown by observed_mse → 0 while masked_mse stays at zero_mse (the "
             "plateau), dropped = 1 at drop_step with masked_mse < svt_masked_mse at the end (the drop), and "
             "line_attn_final > line_attn_plateau (the attention change).")
    metrics = ("masked_mse", "zero_mse", "svt_masked_mse", "observed_mse", "copy_step", "drop_step", "dropped",
               "line_attn_plateau", "line_attn_final")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        from assay.bench.phenomena.training import train_reference
        from assay.worlds.base import make_generator
        from assay.worlds.matrix_completion import MatrixCompletionWorld

        budget = QUICK if quick else FULL
        world = MatrixCompletionWorld(WORLD)
        batch = world.sample(budget.eval_size, generator=make_generator(seed + 1))  # train()'s held-out batch
        n_layers = world.reference_model()["n_layers"]
        res = train_reference(world, steps=budget.steps, seed=seed, eval_every=budget.eval_every,
                              eval_size=budget.eval_size, train_overrides=TRAINING,
                              probe=lambda model: attention_probe(model, batch, n_layers))
        M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
        plateau = world.config.rank / 9
        steps = [int(h["step"]) for h in res.history]
        masked = [(s, h["masked_mse"]) for s, h in zip(steps, res.history)]
        observed = [h["observed_mse"] for h in res.history]
        line = [max(h[f"line_attn_{i}"] for i in range(n_layers)) for h in res.history]
        copied = [s for s, v in zip(steps, observed) if v < 0.01]
        last_on, drop = plateau_steps(masked, plateau)
        before = line[steps.index(last_on)] if last_on is not None else math.nan
        metrics = {"masked_mse": res.metrics["masked_mse"], "zero_mse": float((M[mask] ** 2).mean()),
                   "svt_masked_mse": float(((world.baseline(batch) - M) ** 2)[mask].mean()),
                   "observed_mse": res.metrics["observed_mse"], "copy_step": float(copied[0]) if copied else math.nan,
                   "drop_step": float(drop) if drop is not None else math.nan, "dropped": float(drop is not None),
                   "line_attn_plateau": before, "line_attn_final": line[-1]}
        xs = tuple(float(s) for s in steps)
        curves = (Curve("masked-entry MSE", "training step", "MSE", xs, tuple(v for _, v in masked)),
                  Curve("observed-entry MSE", "training step", "MSE", xs, tuple(observed)),
                  Curve("plateau r/9", "training step", "MSE", xs, (plateau,) * len(xs)),
                  *(Curve(f"row/column attention, layer {i}", "training step", "attention mass", xs,
                          tuple(h[f"line_attn_{i}"] for h in res.history)) for i in range(n_layers)))
        return Measurement(metrics, curves)


@torch.no_grad()
def attention_probe(model: Any, batch: Any, n_layers: int) -> dict[str, float]:
    """``line_attn_{i}``: the largest over heads of layer i's :func:`line_attention` on the first
    :data:`N_ATTENTION` matrices of ``batch``."""
    from assay.hooks import capture

    sites = [f"blocks.{i}.attn.pattern" for i in range(n_layers)]
    with capture(model, sites) as got:
        model(batch.inputs[:N_ATTENTION])
    mask = batch.labels["mask"][:N_ATTENTION]
    return {f"line_attn_{i}": float(line_attention(got[s], mask).max()) for i, s in enumerate(sites)}


PHENOMENON = MatrixCompletionPhenomenon()
"""The ``matrix_completion`` phenomenon of the ``dynamics`` family."""
