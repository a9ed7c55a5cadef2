"""The toy model of superposition on the bench: as features get sparser, more of them are represented than
the hidden layer has dimensions.

Elhage et al. 2022, "Toy Models of Superposition" (transformer-circuits.pub/2022/toy_model). The model is
:func:`assay.models.toy_superposition.fit_toy_superposition` (n = 20 features, m = 5 hidden, importance
0.7^i), trained once per sparsity S; a feature counts as represented when ‖W_i‖ > 0.5
(:func:`~assay.models.toy_superposition.n_represented`). Metrics: ``represented_dense`` (S = 0; the paper:
exactly m, the most important ones), ``represented_sparse`` (the sparsest S), ``excess_over_width`` =
represented_sparse − m (> 0: superposition). Curve: features represented against 1/(1 − S).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assay.bench.phenomena.base import Curve, Measurement

__all__ = ["ToySuperpositionBudget", "FULL", "QUICK", "PHENOMENON"]


@dataclass(frozen=True, kw_only=True)
class ToySuperpositionBudget:
    """The sparsities swept and each fit's training."""

    sparsities: tuple[float, ...]
    """Sparsities S, increasing; the first is the dense end, the last the sparse end."""
    steps: int
    """Adam updates per fit."""
    batch_size: int
    """Samples per update."""


FULL = ToySuperpositionBudget(sparsities=(0.0, 0.7, 0.9, 0.97, 0.99), steps=1000, batch_size=1024)
"""The documented budget (five fits, a few seconds each; 1,000 and 3,000 steps give the same counts)."""
QUICK = ToySuperpositionBudget(sparsities=(0.0, 0.99), steps=300, batch_size=256)
"""A seconds-long budget for tests."""

D_HIDDEN = 5
"""Hidden width m."""


class ToySuperpositionPhenomenon:
    """Features represented vs sparsity in the toy model of superposition (module docstring)."""

    name = "toy_superposition"
    title = "Toy model of superposition: more features than dimensions when sparse (Elhage et al. 2022)"
    claim = (f"Elhage et al. 2022: with dense features a ReLU-output model of hidden width m = {D_HIDDEN} represents "
             f"only its m most important features; as features get sparse it represents more than m, in "
             f"superposition. Shown by represented_dense = {D_HIDDEN} and excess_over_width = represented_sparse − "
             f"{D_HIDDEN} > 0.")
    metrics = ("represented_dense", "represented_sparse", "excess_over_width")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        from assay.models.toy_superposition import (
            ToySuperpositionConfig,
            fit_toy_superposition,
            n_represented,
        )

        b = QUICK if quick else FULL
        counts = [n_represented(fit_toy_superposition(ToySuperpositionConfig(
            d_hidden=D_HIDDEN, sparsity=s, steps=b.steps, batch_size=b.batch_size, seed=seed)).W.detach())
            for s in b.sparsities]
        metrics = {"represented_dense": float(counts[0]), "represented_sparse": float(counts[-1]),
                   "excess_over_width": float(counts[-1] - D_HIDDEN)}
        x = tuple(1 / (1 - s) for s in b.sparsities)
        curves = (Curve("features with ‖W_i‖ > 0.5", "1/(1 − S) (feature sparsity S)", "features", x,
                        tuple(float(c) for c in counts), log_x=True),
                  Curve(f"hidden width m = {D_HIDDEN}", "1/(1 − S) (feature sparsity S)", "features", x,
                        (float(D_HIDDEN),) * len(x), log_x=True))
        return Measurement(metrics, curves)


PHENOMENON = ToySuperpositionPhenomenon()
"""The ``toy_superposition`` phenomenon of the ``dynamics`` family."""
