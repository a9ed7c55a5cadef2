"""The robustness family on the bench: average-case robustness estimators scored against Monte Carlo,
PGD robust accuracy over ε, and loss curvature, each on a tiny classifier trained on a world.

Papers: Han*, Srinivas* & Lakkaraju 2024, "Characterizing Data Point Vulnerability via Average-Case
Robustness" (UAI 2024) — the estimators of p_σ(x) = P_ε[argmax f(x + ε) = argmax f(x)]; Madry, Makelov,
Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (PGD);
Srinivas*, Matoba*, Lakkaraju & Fleuret 2022, "Efficient Training of Low-Curvature Neural Networks"
(loss curvature C(x) = ‖∇²ℓ‖₂/(‖∇ℓ‖₂ + 1e-6) and the low-curvature CNN).

**Worlds** ``name[:low_curvature=true]``: ``subspace`` and ``mixture`` (:mod:`assay.worlds.manifold`) and
``tabular`` get an MLP; ``digits`` a SmallCNN, or with ``low_curvature=true`` the LowCurvatureCNN recipe
(:mod:`assay.robustness.lcnn`). The model is trained once per (world, seed) on ``n_train`` examples and
the methods are scored on ``n_eval`` held-out points.

**Methods**: every estimator of :data:`assay.robustness.average_case.ESTIMATORS` (keys ``sigma``,
``noise``, ``n_samples``), ``pgd`` (keys ``eps``, ``norm``, ``steps``) and ``curvature`` (key ``iters``).

**Ground truth** of the estimators: p_σ(x) by Monte Carlo with ``reference_samples`` noisy copies per
point (standard error ≤ 0.5/√n per point), drawn from a noise stream of its own (seed +
:data:`REFERENCE_SEED_OFFSET`). So the ``mc`` method, a cheaper Monte Carlo (:data:`MC_SAMPLES` copies by
default), is scored by its own sampling error, and ``softmax`` (the paper's strawman) is the control.

**Metrics**: estimators — ``error_vs_mc`` = mean_x |p̂(x) − p_MC(x)|
(:func:`assay.evaluate.estimation.mean_absolute_error`), ``mean_p``, ``reference_p`` (mean p_MC) and
``seconds`` (the estimator alone); ``pgd`` — ``robust_accuracy`` at its ε and ``clean_accuracy``;
``curvature`` — the means over points of ``curvature``, ``hessian_norm`` and ``grad_norm``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from assay.bench.runner import BenchResult, RunContext, check_params, summary_rows
from assay.bench.spec import SpecRun, expand_spec, parse_world_spec
from assay.config import ConfigError, check_choice
from assay.robustness.average_case import ESTIMATORS, AverageCaseConfig

__all__ = ["RobustnessSettings", "PreparedWorld", "FAMILY", "WORLD_NAMES", "MC_SAMPLES", "REFERENCE_SEED_OFFSET"]

WORLD_NAMES = ("subspace", "tabular", "mixture", "digits")
"""Worlds the family trains a classifier on."""

MC_SAMPLES = 500
"""Default noisy copies per point of the ``mc`` method (the reference takes ``reference_samples``)."""

REFERENCE_SEED_OFFSET = 1_000_003
"""The reference Monte Carlo draws its noise with seed ``seed + REFERENCE_SEED_OFFSET`` (the methods use
``seed``), so the ``mc`` method never shares noise with its ground truth."""

_PGD = {"eps": 0.1, "norm": "linf", "steps": 10}
_CURVATURE = {"iters": 10}


@dataclass(frozen=True, kw_only=True)
class RobustnessSettings:
    """The robustness family's run budget (``assay bench --family robustness --options key=value``)."""

    n_train: int = 2000
    """Training examples of each world's classifier."""
    n_eval: int = 32
    """Held-out points every method is scored on."""
    epochs: int = 5
    """Training epochs."""
    reference_samples: int = 4000
    """Monte Carlo noisy copies per point of the ground-truth p_σ(x)."""

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_eval, self.epochs, self.reference_samples) < 1:
            raise ConfigError("n_train, n_eval, epochs and reference_samples must all be >= 1, got "
                              f"{self.n_train}, {self.n_eval}, {self.epochs}, {self.reference_samples}")


class PreparedWorld(NamedTuple):
    """A world's trained classifier, its evaluation points, and the Monte Carlo references computed so far."""

    model: Any
    """The trained classifier (eval mode), logits ``[batch, n_classes]``."""
    inputs: Any
    """Evaluation inputs ``[n_eval, …]``."""
    targets: Any
    """Their labels ``[n_eval]``."""
    references: dict[tuple[float, str], Any]
    """Reference p_σ(x) ``[n_eval]`` per (σ, noise), filled on first use."""


def parse_world(spec: str) -> tuple[str, bool]:
    """``"digits:low_curvature=true"`` → ``("digits", True)``; a bad key or value raises :class:`ConfigError`."""
    name, params = parse_world_spec(spec, WORLD_NAMES)
    unknown = sorted(set(params) - {"low_curvature"})
    if unknown:
        raise ConfigError(f"unknown world parameter(s) {', '.join(unknown)} in {spec!r}; valid: low_curvature")
    low = params.get("low_curvature", False)
    if not isinstance(low, bool):
        raise ConfigError(f"low_curvature must be true or false in {spec!r}, got {low!r}")
    if low and name != "digits":
        raise ConfigError(f"low_curvature is implemented for the digits world (a CNN), not {name!r}; "
                          "use digits:low_curvature=true")
    return name, low


def model_name(spec: str) -> str:
    """The classifier a world spec trains."""
    name, low = parse_world(spec)
    return ("LowCurvatureCNN" if low else "SmallCNN") if name == "digits" else "MLP"


def _number(run: SpecRun, key: str, value: Any, *, integer: bool = False, low: float = 0.0,
            strict: bool = False) -> Any:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < low or (strict and value == low):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{key} of {run.name!r} must be {kind} {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def estimator_config(run: SpecRun, seed: int = 0) -> AverageCaseConfig:
    """The :class:`AverageCaseConfig` of an estimator run (validated)."""
    p = check_params(run, {"sigma": 0.1, "noise": "gaussian", "n_samples": MC_SAMPLES if run.name == "mc" else None})
    _number(run, "sigma", p["sigma"], strict=True)
    if p["n_samples"] is not None:
        _number(run, "n_samples", p["n_samples"], integer=True, low=1)
    return AverageCaseConfig(estimator=run.name, sigma=float(p["sigma"]), noise=p["noise"],
                             n_samples=p["n_samples"], seed=seed)


def pgd_params(run: SpecRun) -> dict[str, Any]:
    """ε, norm and steps of a ``pgd`` run (validated)."""
    p = check_params(run, _PGD)
    _number(run, "eps", p["eps"])
    check_choice("norm", p["norm"], ("linf", "l2"))
    _number(run, "steps", p["steps"], integer=True, low=1)
    return p


def curvature_params(run: SpecRun) -> dict[str, Any]:
    """Power-iteration steps of a ``curvature`` run (validated)."""
    p = check_params(run, _CURVATURE)
    _number(run, "iters", p["iters"], integer=True, low=1)
    return p


def train_classifier(world: str, seed: int, settings: RobustnessSettings) -> PreparedWorld:
    """Train the world's classifier (seeded: data from ``seed``, shuffling and init from ``seed``)."""

    from assay.models.fit import fit_classifier
    from assay.worlds.base import make_generator

    name, low_curvature = parse_world(world)
    g = make_generator(seed)
    if name == "digits":
        from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

        train = SignalDistractorDigits(DigitsConfig(split="train")).sample(settings.n_train, generator=g)
        test = SignalDistractorDigits(DigitsConfig(split="test")).sample(settings.n_eval, generator=g)
        if low_curvature:
            from assay.robustness.lcnn import LowCurvatureCNN, fit_low_curvature

            model = fit_low_curvature(LowCurvatureCNN(generator=make_generator(seed)), train.inputs, train.targets,
                                      epochs=settings.epochs, batch_size=64, seed=seed)
            return PreparedWorld(model.eval(), test.inputs, test.targets, {})
        from assay.models.cnn import SmallCNN

        model = SmallCNN(generator=make_generator(seed))
    else:
        from assay.models.mlp import MLP

        if name == "tabular":
            from assay.worlds.tabular import TabularConfig, TabularSignalWorld

            source: Any = TabularSignalWorld(TabularConfig())
        elif name == "subspace":
            from assay.worlds.manifold import SubspaceManifoldConfig, SubspaceManifoldWorld

            source = SubspaceManifoldWorld(SubspaceManifoldConfig())
        else:
            from assay.worlds.manifold import GaussianMixtureConfig, GaussianMixtureWorld

            source = GaussianMixtureWorld(GaussianMixtureConfig())
        train = source.sample(settings.n_train, generator=g)
        test = source.sample(settings.n_eval, generator=g)
        model = MLP(train.inputs.shape[1], n_out=int(train.targets.max()) + 1, generator=make_generator(seed))
    model = fit_classifier(model, train.inputs, train.targets, epochs=settings.epochs, batch_size=64, lr=2e-3,
                           seed=seed)
    return PreparedWorld(model.eval(), test.inputs, test.targets, {})


def reference_p(prepared: PreparedWorld, cfg: AverageCaseConfig, ctx: RunContext) -> Any:
    """Ground-truth p_σ(x) ``[n_eval]`` at ``cfg``'s σ and noise (Monte Carlo, computed once per world)."""
    from assay.robustness import average_case

    key = (cfg.sigma, cfg.noise)
    if key not in prepared.references:
        ref = AverageCaseConfig(estimator="mc", sigma=cfg.sigma, noise=cfg.noise,
                                n_samples=ctx.settings.reference_samples, seed=ctx.seed + REFERENCE_SEED_OFFSET)
        prepared.references[key] = average_case.estimate(prepared.model, prepared.inputs, ref)
    return prepared.references[key]


class RobustnessFamily:
    """Average-case estimators vs Monte Carlo, PGD robust accuracy and loss curvature (module docstring)."""

    name = "robustness"
    title = "Robustness: average-case estimators against Monte Carlo, PGD robust accuracy, loss curvature"
    worlds: tuple[str, ...] = ("subspace", "tabular")
    methods: tuple[str, ...] = (*(f"{e}:sigma=0.05|0.2" for e in ESTIMATORS), "pgd:eps=0|0.05|0.1|0.2",
                                "curvature")
    metrics: tuple[str, ...] = ("error_vs_mc", "mean_p", "robust_accuracy", "curvature", "seconds")
    settings_type = RobustnessSettings

    def world_names(self) -> Collection[str]:
        return WORLD_NAMES

    def method_names(self) -> Collection[str]:
        return (*ESTIMATORS, "pgd", "curvature")

    def expand(self, spec: str) -> list[SpecRun]:
        runs = list(expand_spec(spec, self.method_names()))
        for run in runs:
            {"pgd": pgd_params, "curvature": curvature_params}.get(run.name, estimator_config)(run)
        return runs

    def prepare(self, world: str, seed: int, settings: RobustnessSettings) -> PreparedWorld:
        return train_classifier(world, seed, settings)

    def score(self, prepared: PreparedWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        from assay.worlds.base import make_generator

        model, x, y = prepared.model, prepared.inputs, prepared.targets
        if run.name == "pgd":
            from assay.models.fit import accuracy
            from assay.robustness.adversarial import robust_accuracy

            p = pgd_params(run)
            curve = robust_accuracy(model, x, y, [float(p["eps"])], norm=p["norm"], steps=p["steps"],
                                    generator=make_generator(ctx.seed))
            return {"robust_accuracy": float(curve.accuracy[0]), "clean_accuracy": accuracy(model, x, y)}
        if run.name == "curvature":
            from assay.robustness.curvature import loss_curvature

            c = loss_curvature(model, x, y, iters=curvature_params(run)["iters"], generator=make_generator(ctx.seed))
            return {"curvature": float(c.curvature.mean()), "hessian_norm": float(c.hessian_norm.mean()),
                    "grad_norm": float(c.grad_norm.mean())}
        from assay.evaluate.estimation import mean_absolute_error
        from assay.robustness.average_case import estimate

        cfg = estimator_config(run, ctx.seed)
        ref = reference_p(prepared, cfg, ctx)
        t0 = time.perf_counter()
        p_hat = estimate(model, x, cfg)
        seconds = time.perf_counter() - t0
        return {"error_vs_mc": mean_absolute_error(p_hat, ref), "mean_p": float(p_hat.mean()),
                "reference_p": float(ref.mean()), "seconds": seconds}

    def section(self, result: BenchResult) -> Any:
        from assay.report import Section, Table

        def table(title: str, methods: Collection[str], metrics: tuple[str, ...]) -> Table | None:
            part = [s for s in result.summary if _method_of(s["method"]) in methods]
            if not part:
                return None
            columns, rows = summary_rows(result._replace(summary=part), metrics)
            return Table(title, columns, rows)

        s = result.settings
        tables = [t for t in (
            table(f"Average-case robustness p_σ(x): mean |p̂ − p_MC| against Monte Carlo with {s.reference_samples} "
                  f"noisy copies per point, over {s.n_eval} points", ESTIMATORS,
                  ("error_vs_mc", "mean_p", "reference_p", "seconds")),
            table("PGD robust accuracy", ("pgd",), ("robust_accuracy", "clean_accuracy")),
            table("Loss curvature (means over points)", ("curvature",), ("curvature", "hessian_norm", "grad_norm")),
        ) if t is not None]
        plot = _robust_accuracy_plot(result)
        worlds = list(dict.fromkeys(r["world"] for r in result.runs))
        seeds = sorted({r["seed"] for r in result.runs})
        notes = [
            "Classifiers: " + "; ".join(f"{w}: {model_name(w)}" for w in worlds) + f", trained on {s.n_train} "
            f"examples × {s.epochs} epochs per seed (seeds {', '.join(map(str, seeds))}); cells are the mean over "
            "seeds with a 95% Student-t interval.",
            f"Ground truth of the estimators: Monte Carlo with {s.reference_samples} noisy copies per point "
            "from its own noise stream, so mc (a cheaper Monte Carlo) shows its sampling error and softmax (max "
            "softmax probability, the paper's strawman) is the control. seconds times the estimator alone.",
            "PGD is untargeted (random start); ε = 0 is the clean accuracy. Curvature is "
            "‖∇²ℓ‖/(‖∇ℓ‖ + 1e-6) of the cross-entropy loss at each point (Hessian norm by power iteration).",
        ]
        return Section(self.title, tables, [plot] if plot is not None else [], notes)


def _method_of(label: str) -> str:
    return label.partition(",")[0]


def _robust_accuracy_plot(result: BenchResult) -> Any:
    """Robust accuracy over ε, one line per world (× pgd variant), with 95% intervals; None without pgd runs."""
    from assay.report import Plot, new_figure, save_figure

    eps = {(r["world"], r["method"], r["level"]): float(r["params"]["eps"]) for r in result.runs
           if _method_of(r["method"]) == "pgd"}
    lines: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for s in result.summary:
        key = (s["world"], s["method"], s["level"])
        if key in eps and s["metric"] == "robust_accuracy":
            lines.setdefault(key[:2], []).append((eps[key], s["mean"], s["ci_low"], s["ci_high"]))
    if not lines:
        return None
    fig = new_figure((5, 3.4))
    ax = fig.add_subplot()
    for (world, method), pts in lines.items():
        pts.sort()
        e, m, lo, hi = zip(*pts)
        ax.errorbar(e, m, yerr=[[a - b for a, b in zip(m, lo)], [b - a for a, b in zip(m, hi)]], marker="o",
                    capsize=3, label=world if method == "pgd" else f"{world} ({method})")
    ax.set_xlabel("ε")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(result.out_dir) / "plots" / "robust_accuracy.svg"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return Plot("PGD robust accuracy over ε (mean over seeds, 95% interval)", path)


FAMILY = RobustnessFamily()
"""The robustness family (:class:`assay.bench.runner.Family`)."""
