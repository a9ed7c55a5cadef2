"""The robustness family on the bench: average-case robustness estimators scored against Monte Carlo,
PGD robust accuracy over ε, and loss curvature, each on a tiny classifier trained on a world.

Papers: Han*, Srinivas* & Lakkaraju 2024, "Characterizing Data Point Vulnerability via Average-Case
Robustness" (UAI 2024) — the estimators of p_σ(x) = P_ε[argmax f(x + ε) = argmax f(x)]; Madry, Makelov,
Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (PGD);
Srinivas*, Matoba*, Lakkaraju & Fleuret 2022, "Efficient Training of Low-Curvature Neural Networks"
(loss curvature C(x) = ‖∇²ℓ‖₂/(‖∇ℓ‖₂ + 1e-6) and the low-curvature CNN); Srinivas*, Bordt* & Lakkaraju
2023, "Which Models have Perceptually-Aligned Gradients? An Explanation via Off-Manifold Robustness"
(NeurIPS 2023) — the off-manifold sweep and its three regimes.

**Worlds** ``name[:low_curvature=true]``: ``subspace`` and ``mixture`` (:mod:`assay.worlds.manifold`) and
``tabular`` get an MLP; ``digits`` a SmallCNN, or with ``low_curvature=true`` the LowCurvatureCNN recipe
(:mod:`assay.robustness.lcnn`). The model is trained once per (world, seed) on ``n_train`` examples and
the methods are scored on ``n_eval`` held-out points.

**Methods**: every estimator of :data:`assay.robustness.average_case.ESTIMATORS` (keys ``sigma``,
``noise``, ``n_samples``), ``pgd`` (keys ``eps``, ``norm``, ``steps``), ``curvature`` (key ``iters``) and
``off_manifold`` (keys ``regulariser`` — ``noise`` (Gaussian noise augmentation of std ``strength``) or
``gradient_norm`` (λ = ``strength`` times the penalty ½‖∇_x Σ_b f_{y_b}‖²/B) —, ``strength`` and ``eps``):
it retrains the world's classifier with that regulariser (same data, initialisation and shuffling; strength
0 is the unregularised model) and measures it against the world's exact tangent space
(:mod:`assay.robustness.off_manifold`); it applies to :data:`OFF_MANIFOLD_WORLDS` only (elsewhere it
scores nothing and the section says so).

**Ground truth** of the estimators: p_σ(x) by Monte Carlo with ``reference_samples`` noisy copies per
point (standard error ≤ 0.5/√n per point), drawn from a noise stream of its own (seed +
:data:`REFERENCE_SEED_OFFSET`). So the ``mc`` method, a cheaper Monte Carlo (:data:`MC_SAMPLES` copies by
default), is scored by its own sampling error, and ``softmax`` (the paper's strawman) is the control.

**Metrics**: estimators — ``error_vs_mc`` = mean_x |p̂(x) − p_MC(x)|
(:func:`assay.evaluate.estimation.mean_absolute_error`), ``mean_p``, ``reference_p`` (mean p_MC) and
``seconds`` (the estimator alone); ``pgd`` — ``robust_accuracy`` at its ε and ``clean_accuracy``;
``curvature`` — the means over points of ``curvature``, ``hessian_norm`` and ``grad_norm``;
``off_manifold`` — ``accuracy`` of the retrained model, ``manifold_alignment`` = mean ‖P_T g‖/‖g‖ of the
gradient g = ∇_x Σ_c f_c (1: in the tangent space; √(r/d) for a random direction), ``on_off_ratio`` =
change_on/change_off of the softmax under unit tangent/normal steps of size ``eps`` (> 1: more robust off
the manifold than on it), ``change_on``, ``change_off`` and ``score_alignment`` (cosine of g with the exact
∇log p(x)). The paper's three regimes along the strength: weak (ratio and alignment low), Bayes-aligned
(both peak, accuracy kept), excessive (robust on the manifold too: ratio → 1, alignment falls to chance,
accuracy falls).
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

__all__ = ["RobustnessSettings", "PreparedWorld", "FAMILY", "WORLD_NAMES", "MC_SAMPLES", "REFERENCE_SEED_OFFSET",
           "OFF_MANIFOLD_WORLDS", "REGULARISERS"]

WORLD_NAMES = ("subspace", "tabular", "mixture", "digits")
"""Worlds the family trains a classifier on."""

OFF_MANIFOLD_WORLDS = ("subspace",)
"""Worlds with a known tangent space, where ``off_manifold`` applies."""

REGULARISERS = ("noise", "gradient_norm")
"""The ``off_manifold`` method's regularisers: Gaussian noise augmentation (std = strength) and the
gradient-norm penalty (weight = strength)."""

MC_SAMPLES = 500
"""Default noisy copies per point of the ``mc`` method (the reference takes ``reference_samples``)."""

REFERENCE_SEED_OFFSET = 1_000_003
"""The reference Monte Carlo draws its noise with seed ``seed + REFERENCE_SEED_OFFSET`` (the methods use
``seed``), so the ``mc`` method never shares noise with its ground truth."""

_PGD = {"eps": 0.1, "norm": "linf", "steps": 10}
_CURVATURE = {"iters": 10}
_OFF_MANIFOLD = {"regulariser": "noise", "strength": 0.0, "eps": 0.5}


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
    train_inputs: Any
    """The training inputs (``off_manifold`` retrains on them)."""
    train_targets: Any
    """Their labels."""
    tangent: Any = None
    """Orthonormal tangent basis ``[d, r]`` of the data manifold, where the world knows it (else None)."""
    score: Any = None
    """Exact ∇log p(x) at the evaluation inputs ``[n_eval, d]``, where the world knows it (else None)."""


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


def off_manifold_params(run: SpecRun) -> dict[str, Any]:
    """Regulariser, strength and ε of an ``off_manifold`` run (validated)."""
    p = check_params(run, _OFF_MANIFOLD)
    check_choice("regulariser", p["regulariser"], REGULARISERS)
    _number(run, "strength", p["strength"])
    _number(run, "eps", p["eps"], strict=True)
    return p


def fit_recipe(model: Any, inputs: Any, targets: Any, seed: int, settings: RobustnessSettings, *,
        regulariser: str = "noise", strength: float = 0.0) -> Any:
    """The family's training recipe (AdamW lr 2e-3, batch 64, ``settings.epochs``, shuffling from ``seed``),
    with an optional regulariser of :data:`REGULARISERS` at ``strength`` (0: plain cross-entropy)."""
    from assay.models.fit import fit_classifier

    penalty = None
    if regulariser == "gradient_norm" and strength > 0:
        from assay.robustness.regularisers import gradient_norm_penalty

        def penalty(x: Any, y: Any) -> Any:
            return strength * gradient_norm_penalty(model, x, y)

    noise = strength if regulariser == "noise" else 0.0
    return fit_classifier(model, inputs, targets, epochs=settings.epochs, batch_size=64, lr=2e-3, seed=seed,
                          input_noise=noise, penalty=penalty)


def new_mlp(inputs: Any, targets: Any, seed: int) -> Any:
    """The untrained MLP of a tabular-like world (initialised from ``seed``)."""
    from assay.models.mlp import MLP
    from assay.worlds.base import make_generator

    return MLP(inputs.shape[1], n_out=int(targets.max()) + 1, generator=make_generator(seed))


def train_classifier(world: str, seed: int, settings: RobustnessSettings) -> PreparedWorld:
    """Train the world's classifier (seeded: data from ``seed``, shuffling and init from ``seed``)."""

    from assay.worlds.base import make_generator

    name, low_curvature = parse_world(world)
    g = make_generator(seed)
    tangent = score = None
    if name == "digits":
        from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

        train = SignalDistractorDigits(DigitsConfig(split="train")).sample(settings.n_train, generator=g)
        test = SignalDistractorDigits(DigitsConfig(split="test")).sample(settings.n_eval, generator=g)
        if low_curvature:
            from assay.robustness.lcnn import LowCurvatureCNN, fit_low_curvature

            model = fit_low_curvature(LowCurvatureCNN(generator=make_generator(seed)), train.inputs, train.targets,
                                      epochs=settings.epochs, batch_size=64, seed=seed)
            return PreparedWorld(model.eval(), test.inputs, test.targets, {}, train.inputs, train.targets)
        from assay.models.cnn import SmallCNN

        model = SmallCNN(generator=make_generator(seed))
    else:
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
        model = new_mlp(train.inputs, train.targets, seed)
        if name in OFF_MANIFOLD_WORLDS:
            tangent, score = source.basis, test.labels["score"]
    model = fit_recipe(model, train.inputs, train.targets, seed, settings)
    return PreparedWorld(model, test.inputs, test.targets, {}, train.inputs, train.targets, tangent, score)


def off_manifold_metrics(prepared: PreparedWorld, p: dict[str, Any], ctx: RunContext) -> dict[str, float]:
    """Retrain the world's classifier with ``p``'s regulariser and measure it against the tangent space
    (module docstring, Metrics); ``{}`` on a world without a known tangent space."""
    if prepared.tangent is None:
        return {}
    from assay.models.fit import accuracy
    from assay.robustness.off_manifold import gradient_manifold_alignment, on_off_robustness, score_alignment
    from assay.worlds.base import make_generator

    x, T = prepared.inputs, prepared.tangent
    model = fit_recipe(new_mlp(prepared.train_inputs, prepared.train_targets, ctx.seed), prepared.train_inputs,
                prepared.train_targets, ctx.seed, ctx.settings, regulariser=p["regulariser"],
                strength=float(p["strength"]))
    r = on_off_robustness(model, x, T, [float(p["eps"])], generator=make_generator(ctx.seed))
    return {"accuracy": accuracy(model, x, prepared.targets),
            "manifold_alignment": float(gradient_manifold_alignment(model, x, T).mean()),
            "on_off_ratio": float(r.ratio[0]), "change_on": float(r.change_on[0]),
            "change_off": float(r.change_off[0]),
            "score_alignment": float(score_alignment(model, x, prepared.score).mean())}


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
    """Average-case estimators vs Monte Carlo, PGD robust accuracy, loss curvature and the off-manifold
    regularisation sweep (module docstring)."""

    name = "robustness"
    title = ("Robustness: average-case estimators against Monte Carlo, PGD robust accuracy, loss curvature, "
             "off-manifold robustness")
    worlds: tuple[str, ...] = ("subspace", "tabular")
    methods: tuple[str, ...] = (*(f"{e}:sigma=0.05|0.2" for e in ESTIMATORS), "pgd:eps=0|0.05|0.1|0.2",
                                "curvature", "off_manifold:regulariser=noise,strength=0|0.1|0.3|1|3|10",
                                "off_manifold:regulariser=gradient_norm,strength=0|0.01|0.1|1|10|100")
    metrics: tuple[str, ...] = ("error_vs_mc", "mean_p", "robust_accuracy", "curvature", "accuracy",
                                "manifold_alignment", "on_off_ratio", "seconds")
    settings_type = RobustnessSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        return {name: {"low_curvature": False} for name in WORLD_NAMES}

    def method_names(self) -> Collection[str]:
        return (*ESTIMATORS, "pgd", "curvature", "off_manifold")

    def expand(self, spec: str) -> list[SpecRun]:
        runs = list(expand_spec(spec, self.method_names()))
        checks = {"pgd": pgd_params, "curvature": curvature_params, "off_manifold": off_manifold_params}
        for run in runs:
            checks.get(run.name, estimator_config)(run)
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
        if run.name == "off_manifold":
            return off_manifold_metrics(prepared, off_manifold_params(run), ctx)
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
            table("Off-manifold robustness over the regularisation sweep (retrained classifier, means over points)",
                  ("off_manifold",), OFF_MANIFOLD_METRICS),
        ) if t is not None]
        plots = [p for p in (_robust_accuracy_plot(result), _off_manifold_plot(result)) if p is not None]
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
            *_off_manifold_notes(result),
        ]
        return Section(self.title, tables, plots, notes)


OFF_MANIFOLD_METRICS = ("accuracy", "manifold_alignment", "on_off_ratio", "change_on", "change_off",
                        "score_alignment")
"""The ``off_manifold`` method's metrics, in table order."""


def _method_of(label: str) -> str:
    return label.partition(",")[0]


def _off_manifold_curves(result: BenchResult) -> dict[tuple[str, str], dict[str, list[tuple[float, float, float, float]]]]:
    """(world, regulariser) → metric → [(strength, mean, ci_low, ci_high)] sorted by strength."""
    params = {(r["world"], r["method"], r["level"]): r["params"] for r in result.runs
              if _method_of(r["method"]) == "off_manifold"}
    curves: dict[tuple[str, str], dict[str, list[tuple[float, float, float, float]]]] = {}
    for s in result.summary:
        p = params.get((s["world"], s["method"], s["level"]))
        if p is not None:
            reg = p.get("regulariser", _OFF_MANIFOLD["regulariser"])
            point = (float(p.get("strength", _OFF_MANIFOLD["strength"])), s["mean"], s["ci_low"], s["ci_high"])
            curves.setdefault((s["world"], reg), {}).setdefault(s["metric"], []).append(point)
    for by_metric in curves.values():
        for pts in by_metric.values():
            pts.sort()
    return curves


def _off_manifold_notes(result: BenchResult) -> list[str]:
    """What the sweep means, where each curve peaks, and the worlds it did not apply to."""
    curves = _off_manifold_curves(result)
    skipped = sorted({r["world"] for r in result.runs if _method_of(r["method"]) == "off_manifold" and not r["metrics"]})
    if not curves and not skipped:
        return []
    notes = ["Off-manifold (Srinivas, Bordt & Lakkaraju 2023): each level retrains the world's classifier with the "
             "regulariser at that strength (noise: Gaussian augmentation of that std; gradient_norm: that weight on "
             "½‖∇ₓΣ f_y‖²/B), then measures manifold_alignment = mean ‖P_T g‖/‖g‖ of g = ∇ₓΣ_c f_c against the "
             "exact tangent space, on_off_ratio = softmax change under unit tangent steps / under unit normal steps "
             "(> 1: more robust off the manifold), score_alignment = cos(g, ∇log p). The paper's three regimes along "
             "the strength: weak (low ratio), Bayes-aligned (ratio and alignment peak, accuracy kept), excessive "
             "(robust on the manifold too: ratio → 1, alignment → chance, accuracy → chance)."]
    for (world, reg), m in curves.items():
        said = []
        for metric in ("manifold_alignment", "on_off_ratio", "accuracy"):
            pts = m.get(metric, [])
            if pts:
                best = max(pts, key=lambda t: t[1])
                said.append(f"{metric} {pts[0][1]:.3g} at strength {pts[0][0]:g}, peak {best[1]:.3g} at "
                            f"{best[0]:g}, {pts[-1][1]:.3g} at {pts[-1][0]:g}")
        notes.append(f"{world}, {reg}: " + "; ".join(said) + ".")
    if skipped:
        notes.append(f"off_manifold not applicable (no known tangent space): {', '.join(skipped)}.")
    return notes


def _off_manifold_plot(result: BenchResult) -> Any:
    """Accuracy, manifold alignment and on/off ratio over the strength, one line per (world, regulariser)."""
    from assay.report import Plot, new_figure, save_figure

    curves = _off_manifold_curves(result)
    if not curves:
        return None
    regs = list(dict.fromkeys(reg for _, reg in curves))
    panels = (("accuracy", "accuracy"), ("manifold_alignment", "‖P_T g‖ / ‖g‖"),
              ("on_off_ratio", "change_on / change_off"))
    fig = new_figure((11, 3.2 * len(regs)))
    axes = fig.subplots(len(regs), 3, squeeze=False)
    for row, reg in zip(axes, regs):
        strengths = sorted({t[0] for (_, r), m in curves.items() if r == reg for pts in m.values() for t in pts})
        pos = {v: i for i, v in enumerate(strengths)}  # strengths include 0: evenly spaced, labelled
        for ax, (metric, label) in zip(row, panels):
            for (world, r), by_metric in curves.items():
                pts = by_metric.get(metric, [])
                if r != reg or not pts:
                    continue
                st, m, lo, hi = zip(*pts)
                ax.errorbar([pos[v] for v in st], m, yerr=[[a - b for a, b in zip(m, lo)],
                                                          [b - a for a, b in zip(m, hi)]],
                            marker="o", capsize=3, label=world)
            ax.set_xticks(range(len(strengths)), [f"{v:g}" for v in strengths], fontsize=8)
            ax.set_xlabel(f"{reg} strength")
            ax.set_ylabel(label)
            if metric == "on_off_ratio":
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        row[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(result.out_dir) / "plots" / "off_manifold.svg"
    save_figure(fig, path)
    return Plot("Off-manifold sweep: accuracy, gradient alignment with the tangent space, and on/off-manifold "
                "robustness ratio over the regularisation strength (mean over seeds, 95% interval)", path)


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
