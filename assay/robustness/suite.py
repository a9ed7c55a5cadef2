"""One robustness report for a model trained on a world: average-case robustness by every
estimator (error against Monte Carlo), PGD robust accuracy over ε, and loss curvature.

Backs ``assay robustness``. The methods are in the sibling modules (``average_case``,
``adversarial``, ``curvature``); this module only wires a world, a tiny model and those methods
together and returns rows ``{"section", "name", "value"}``; :func:`write_robustness_section` turns
them into a report section (tables, a robust-accuracy-vs-ε plot) in the run's output folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from assay.config import ConfigError, check_choice, to_dict
from assay.robustness.average_case import ESTIMATORS, Estimator

__all__ = ["RobustnessConfig", "run_robustness", "train_world_model", "write_robustness_section"]



@dataclass(frozen=True, kw_only=True)
class RobustnessConfig:
    """Train a tiny classifier on a world, then measure average-case and adversarial robustness and curvature."""

    world: Literal["digits", "tabular", "subspace", "mixture"] = "subspace"
    """World to train and evaluate on (digits: SmallCNN; others: MLP)."""
    low_curvature: bool = False
    """Use the low-curvature recipe (centred softplus, Lipschitz BN, gradient-norm penalty; digits only)."""
    n_train: int = 2000
    """Training examples."""
    n_eval: int = 32
    """Evaluation examples."""
    epochs: int = 5
    """Training epochs."""
    estimators: tuple[Estimator, ...] = ESTIMATORS
    """Average-case estimators to run (mc is the reference for the error column)."""
    sigma: float = 0.1
    """Noise standard deviation for average-case robustness."""
    noise: Literal["gaussian", "uniform"] = "gaussian"
    """Noise distribution."""
    mc_samples: int = 4000
    """Monte Carlo samples per example."""
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    """PGD radii for the robust-accuracy curve."""
    norm: Literal["linf", "l2"] = "linf"
    """PGD norm."""
    pgd_steps: int = 10
    """PGD steps."""
    curvature_iters: int = 10
    """Power-iteration steps for the Hessian norm."""
    seed: int = 0
    """Seed of data, training and noise."""
    out_dir: Path | None = None
    """Output folder (section.json, report.html, rows.json, plots/); unset: `out` without its suffix
    (rob.json -> rob/) when `out` is given, else runs/robustness."""
    out: Path | None = None
    """Also write the rows and config as one JSON file here (the same content as <out_dir>/rows.json)."""

    def __post_init__(self) -> None:
        for e in self.estimators:
            check_choice("estimators", e, ESTIMATORS)
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ConfigError(f"sigma must be a finite number > 0, got {self.sigma}")
        if any(not math.isfinite(e) or e < 0 for e in self.epsilons):
            raise ConfigError(f"epsilons must be finite and >= 0, got {self.epsilons}")
        if min(self.n_train, self.n_eval, self.epochs, self.mc_samples, self.pgd_steps, self.curvature_iters) < 1:
            raise ConfigError("n_train, n_eval, epochs, mc_samples, pgd_steps and curvature_iters must be >= 1")
        if self.low_curvature and self.world != "digits":
            raise ConfigError("low_curvature is implemented for the digits world (a CNN); use world='digits'")
        if self.out is not None and self.out.is_dir():
            raise ConfigError(f"out={self.out} is a folder; pass a .json file path for out, or use out_dir")

    @property
    def section_dir(self) -> Path:
        """The output folder: ``out_dir``, else ``out`` without its suffix, else ``runs/robustness``."""
        if self.out_dir is not None:
            return Path(self.out_dir)
        if self.out is not None:
            return Path(self.out).with_suffix("")
        return Path("runs/robustness")


def train_world_model(cfg: RobustnessConfig) -> tuple[Any, Any, Any]:
    """(model, train batch, eval batch) for ``cfg.world``, trained with a seeded AdamW loop."""

    from assay.models.fit import fit_classifier
    from assay.worlds.base import make_generator

    g = make_generator(cfg.seed)
    if cfg.world == "digits":
        from assay.models.cnn import SmallCNN
        from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

        train = SignalDistractorDigits(DigitsConfig(split="train")).sample(cfg.n_train, generator=g)
        test = SignalDistractorDigits(DigitsConfig(split="test")).sample(cfg.n_eval, generator=g)
        if cfg.low_curvature:
            from assay.robustness.lcnn import LowCurvatureCNN, fit_low_curvature

            model = fit_low_curvature(LowCurvatureCNN(generator=make_generator(cfg.seed)), train.inputs,
                                      train.targets, epochs=cfg.epochs, batch_size=64, seed=cfg.seed)
            return model, train, test
        model = SmallCNN(generator=make_generator(cfg.seed))
    else:
        from assay.models.mlp import MLP

        if cfg.world == "tabular":
            from assay.worlds.tabular import TabularConfig, TabularSignalWorld

            world: Any = TabularSignalWorld(TabularConfig())
        elif cfg.world == "subspace":
            from assay.worlds.manifold import SubspaceManifoldConfig, SubspaceManifoldWorld

            world = SubspaceManifoldWorld(SubspaceManifoldConfig())
        else:
            from assay.worlds.manifold import GaussianMixtureConfig, GaussianMixtureWorld

            world = GaussianMixtureWorld(GaussianMixtureConfig())
        train = world.sample(cfg.n_train, generator=g)
        test = world.sample(cfg.n_eval, generator=g)
        model = MLP(train.inputs.shape[1], n_out=int(train.targets.max()) + 1, generator=make_generator(cfg.seed))
    model = fit_classifier(model, train.inputs, train.targets, epochs=cfg.epochs, batch_size=64, lr=2e-3,
                           seed=cfg.seed)
    return model.eval(), train, test


def run_robustness(cfg: RobustnessConfig, *, model: Any = None, data: Any = None) -> list[dict[str, Any]]:
    """Rows of the report. ``model``/``data`` (a Batch) skip training when both are given."""
    import torch

    from assay.robustness import adversarial, average_case, curvature

    if model is None or data is None:
        model, _, data = train_world_model(cfg)
    x, y = data.inputs, data.targets
    rows: list[dict[str, Any]] = []

    def add(section: str, name: str, value: float, **extra: Any) -> None:
        rows.append({"section": section, "name": name, "value": float(value), **extra})

    with torch.no_grad():
        add("accuracy", "clean", (model(x).argmax(1) == y).float().mean())
    ests: dict[str, torch.Tensor] = {}
    for est in cfg.estimators:
        t0 = time.perf_counter()
        ecfg = average_case.AverageCaseConfig(estimator=est, sigma=cfg.sigma, noise=cfg.noise, seed=cfg.seed,
                                              n_samples=cfg.mc_samples if est == "mc" else None)
        ests[est] = average_case.estimate(model, x, ecfg)
        add("average_case", est, ests[est].mean(), seconds=time.perf_counter() - t0)
    if "mc" in ests:
        for est, p in ests.items():
            if est != "mc":
                add("average_case_error_vs_mc", est, (p - ests["mc"]).abs().mean())
    g = torch.Generator().manual_seed(cfg.seed)
    curve = adversarial.robust_accuracy(model, x, y, cfg.epsilons, norm=cfg.norm, steps=cfg.pgd_steps, generator=g)
    for e, a in zip(curve.epsilons.tolist(), curve.accuracy.tolist()):
        add("robust_accuracy", f"eps={e:g}", a)
    c = curvature.loss_curvature(model, x, y, iters=cfg.curvature_iters, generator=g)
    for name, t in (("curvature", c.curvature), ("hessian_norm", c.hessian_norm), ("grad_norm", c.grad_norm)):
        add("curvature", name, t.mean(), std=float(t.std()) if t.numel() > 1 else 0.0)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps({"config": to_dict(cfg), "rows": rows}, indent=1))
    return rows


def write_robustness_section(cfg: RobustnessConfig, rows: list[dict[str, Any]], out_dir: Path | None = None) -> Path:
    """Write the report section of ``rows`` (and ``rows.json``, ``plots/robust_accuracy.svg``) to
    ``out_dir`` (default ``cfg.section_dir``); returns the folder."""
    from assay.artifact import atomic_write_text
    from assay.report import Plot, Section, Table, write_section

    out = Path(out_dir) if out_dir is not None else cfg.section_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "rows.json", json.dumps({"config": to_dict(cfg), "rows": rows}, indent=1))
    by = {(r["section"], r["name"]): r for r in rows}
    tables = []
    est = [r for r in rows if r["section"] == "average_case"]
    if est:
        tables.append(Table(f"Average-case robustness p_σ(x) ({cfg.noise}, σ = {cfg.sigma:g}), mean over {cfg.n_eval} points",
                            ["estimator", "mean p", "mean |p − p_mc|", "seconds"],
                            [[r["name"], r["value"],
                              by[("average_case_error_vs_mc", r["name"])]["value"]
                              if ("average_case_error_vs_mc", r["name"]) in by else None, r["seconds"]] for r in est]))
    curve = [r for r in rows if r["section"] == "robust_accuracy"]
    eps = [float(r["name"].split("=", 1)[1]) for r in curve]
    tables.append(Table(f"PGD robust accuracy ({cfg.norm}, {cfg.pgd_steps} steps)", ["ε", "robust accuracy"],
                        [[e, r["value"]] for e, r in zip(eps, curve)]))
    tables.append(Table(f"Loss curvature ({cfg.curvature_iters} power iterations)", ["quantity", "mean", "std"],
                        [[r["name"], r["value"], r["std"]] for r in rows if r["section"] == "curvature"]))
    plots = []
    if curve:
        from assay.report import new_figure, save_figure

        fig = new_figure((4.5, 3.2))
        ax = fig.subplots()
        ax.plot(eps, [r["value"] for r in curve], marker="o")
        ax.set_xlabel(f"ε ({cfg.norm})")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        fig.tight_layout()
        path = save_figure(fig, out / "plots" / "robust_accuracy.svg")
        plots.append(Plot(f"PGD robust accuracy over ε ({cfg.norm}, {cfg.pgd_steps} steps)", path))
    model = ("LowCurvatureCNN" if cfg.low_curvature else "SmallCNN") if cfg.world == "digits" else "MLP"
    notes = [f"{model} trained on the {cfg.world} world ({cfg.n_train} examples × {cfg.epochs} epochs, seed {cfg.seed}); "
             f"clean accuracy {by[('accuracy', 'clean')]['value']:.3f} on {cfg.n_eval} evaluation points.",
             "Average-case errors are against Monte Carlo with "
             f"{cfg.mc_samples} noisy copies per point; curvature is ‖∇²ℓ‖/(‖∇ℓ‖ + 1e-6) of the loss."]
    write_section(out, Section(f"Robustness: {cfg.world} world", tables, plots, notes))
    return out
