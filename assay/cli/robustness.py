"""``assay robustness``: the robustness bench family on one world (config: :class:`RobustnessCommand`).

Trains a tiny classifier on the world (once per seed), then scores the average-case robustness
estimators against Monte Carlo, PGD robust accuracy over ε and the loss curvature, and on the subspace
world retrains it over a regularisation sweep to show the three regimes of off-manifold robustness
(Srinivas, Bordt & Lakkaraju 2023) — the runs of
``assay bench --family robustness`` (:mod:`assay.bench.robustness`) with the worlds and method specs
built from the flags below, through the same runner: cached and resumable under ``--out-dir`` (default
``runs/robustness``), which receives ``results.csv``, ``summary.csv``, ``plots/robust_accuracy.svg``,
``plots/off_manifold.svg`` and the report section (``section.json`` + ``report.html``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from assay.cli import command
from assay.config import ConfigError

__all__ = ["RobustnessCommand", "register", "run"]


@dataclass(frozen=True, kw_only=True)
class RobustnessCommand:
    """Train a tiny classifier on a world, then measure average-case and adversarial robustness, curvature and
    (subspace world) off-manifold robustness over a regularisation sweep."""

    world: Literal["digits", "tabular", "subspace", "mixture"] = "subspace"
    """World to train and evaluate on (digits: SmallCNN; others: MLP)."""
    low_curvature: bool = False
    """Use the low-curvature recipe (centred softplus, Lipschitz BN, gradient-norm penalty; digits only)."""
    n_train: int = 2000
    """Training examples."""
    n_eval: int = 32
    """Evaluation points."""
    epochs: int = 5
    """Training epochs."""
    estimators: tuple[str, ...] = ()
    """Average-case estimators to score (none given: every estimator of assay.robustness.average_case)."""
    sigma: float = 0.1
    """Noise standard deviation for average-case robustness."""
    noise: Literal["gaussian", "uniform"] = "gaussian"
    """Noise distribution."""
    mc_samples: int = 4000
    """Monte Carlo noisy copies per point of the ground truth the estimators are scored against."""
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    """PGD radii for the robust-accuracy curve (none: no PGD)."""
    norm: Literal["linf", "l2"] = "linf"
    """PGD norm."""
    pgd_steps: int = 10
    """PGD steps."""
    curvature_iters: int = 10
    """Power-iteration steps for the Hessian norm."""
    regulariser: Literal["noise", "gradient_norm"] = "noise"
    """Off-manifold sweep: Gaussian noise augmentation (strength = its std) or gradient-norm penalty (= its weight)."""
    strengths: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
    """Off-manifold sweep strengths (subspace world only; none: no sweep; gradient_norm: try 0 0.01 0.1 1 10 100)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (each draws the data, trains the classifier and draws the noise)."""
    out_dir: Path = Path("runs/robustness")
    """Output folder (cache/, results and summary tables, plots/, section.json, report.html)."""

    def __post_init__(self) -> None:
        from assay.bench.robustness import FAMILY, parse_world

        if not self.seeds:
            raise ConfigError("give at least one --seeds")
        parse_world(self.world_spec)
        for spec in self.method_specs:
            FAMILY.expand(spec)
        self.settings()

    @property
    def world_spec(self) -> str:
        """The bench world spec."""
        return self.world + (":low_curvature=true" if self.low_curvature else "")

    @property
    def method_specs(self) -> tuple[str, ...]:
        """The bench method specs: each estimator at σ, PGD over the radii, curvature, the off-manifold sweep."""
        from assay.bench.robustness import OFF_MANIFOLD_WORLDS
        from assay.robustness.average_case import ESTIMATORS

        specs = [f"{e}:sigma={self.sigma},noise={self.noise}" for e in self.estimators or ESTIMATORS]
        if self.epsilons:
            eps = "|".join(str(e) for e in self.epsilons)
            specs.append(f"pgd:eps={eps},norm={self.norm},steps={self.pgd_steps}")
        specs.append(f"curvature:iters={self.curvature_iters}")
        if self.strengths and self.world in OFF_MANIFOLD_WORLDS:
            strengths = "|".join(str(s) for s in self.strengths)
            specs.append(f"off_manifold:regulariser={self.regulariser},strength={strengths}")
        return tuple(specs)

    @property
    def options(self) -> tuple[str, ...]:
        """The family's settings as ``assay bench --options``."""
        return (f"n_train={self.n_train}", f"n_eval={self.n_eval}", f"epochs={self.epochs}",
                f"reference_samples={self.mc_samples}")

    def settings(self) -> Any:
        """The family's settings dataclass (validated)."""
        from assay.bench.robustness import FAMILY
        from assay.bench.runner import parse_options

        return parse_options(FAMILY, self.options)


def run(cfg: RobustnessCommand) -> Any:
    """Run the family through the bench runner and print its summary table."""
    from assay.cli.bench import run_family_command

    return run_family_command("robustness", worlds=(cfg.world_spec,), methods=cfg.method_specs, seeds=cfg.seeds,
                              options=cfg.options, out_dir=cfg.out_dir)


def register(app: typer.Typer) -> None:
    command(app, "robustness", RobustnessCommand, run)
