"""The attribution family: feature-attribution methods ranked on worlds whose true attributions are known.

Every method explains the same correctly classified held-out examples of a world's trained classifier
(:func:`assay.models.classifier_zoo.world_classifier`) and is scored on three axes:

* **ground-truth agreement** with the world's signal mask — relevance mass inside the mask against the
  mask's area (Arras, Osman & Samek 2022, "CLEVR-XAI"), the pointing game (Zhang et al. 2018, "Top-down
  Neural Attention by Excitation Backprop"), top-k precision and rank correlation with the binary mask
  (OpenXAI's feature agreement and RC, Krishna et al. 2022, "The Disagreement Problem in Explainable
  Machine Learning");
* **DiET's metrics** (Bhalla, Srinivas & Lakkaraju 2023, §6): mask IoU (the map's top-|mask| features against
  the signal mask) and keep-top-1/p accuracy (only the top 1/p of the features kept, p ∈ {10, 20, 50, 100},
  the rest filled with DiET's random colour at 0.1 σ; 0 on tabular);
* **faithfulness**: deletion AUC (Petsiuk, Das & Saenko 2018, "RISE"; lower is better) and faithfulness
  correlation (Bhatt, Weller & Moura 2020);
* **sanity**: the cascading model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for
  Saliency Maps"): Spearman correlation of the maps before and after re-initialising the layers (lower:
  the method depends on what the model learnt; a map that ignores the model stays at 1);
* **unfaithfulness** (Srinivas & Fleuret 2021, "Rethinking the Role of Gradient-based Attribution Methods
  for Model Interpretability"): least-salient pixel perturbation — accuracy and mean |Δp_t| after removing
  the 1%…100% least salient features (fill 0.5 on the digits as the paper, 0 on the tabular world; a
  faithful map names what the model ignores) — and, on images, the GAN-test: samples drawn by ascent along
  the method's own (signed, RMS-normalised) attribution of the ``gan_output`` from grey noise, classified
  by an independently trained proxy classifier (the zoo's recipe at seed model seed + 1000);
* with ``--options neighbourhood=…``, the **LFA fidelity report** (Han, Srinivas & Lakkaraju 2022, "Which
  Explanation Should I Choose?"): the loss of each explanation's linear surrogate in the chosen
  neighbourhood (``gaussian:sigma=0.1`` or ``mask:patch=4``), one table per world, lowest first.
  Feature-group methods write their group's score on each element; they are divided by the group size
  to give the per-element shares the surrogate sums.

Worlds: ``digits`` (signal–distractor digits after DiET's Hard-MNIST, :mod:`assay.worlds.digits`; the
mask is the signal digit's pixels) and ``tabular`` (OpenXAI's Gaussian clusters,
:mod:`assay.worlds.tabular`; the mask is the point's cluster's signal features). A world spec key ``robust_eps=ε``
(e.g. ``digits:robust_eps=0.05``) explains a copy of the classifier fine-tuned by L∞ PGD adversarial training
(:func:`~assay.bench.attribution_worlds.robust_classifier`; budget in the settings' ``robust_*`` fields): listed beside the plain world, it is
DiET's robust-vs-standard comparison. Methods: every method of
the attribution registry (:data:`assay.attribution.registry.METHODS`), DiET (Bhalla, Srinivas &
Lakkaraju 2023, "Discriminative Feature Attributions", :mod:`assay.attribution.diet`: its mask, learnt
with a tuned copy of the model, is the map) and ``random``, a map that ignores the model (chance).
Maps are one importance per feature (Σ_c |φ_c| per pixel). The metrics are those of
:mod:`assay.evaluate.attribution_agreement`, :mod:`assay.evaluate.faithfulness`,
:mod:`assay.evaluate.attribution_sanity`, :mod:`assay.evaluate.unfaithfulness` and
:mod:`assay.evaluate.local_fidelity`.

Outputs beside the runner's tables: ``plots/keep_top.{png,svg}`` (keep-top-1/p accuracy over p, a panel per
world) and ``plots/truth_vs_sanity_<world>.{png,svg}`` (relevance mass against
the randomisation Spearman, one point per method with its interval; good methods sit bottom right).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, get_args

import torch
from torch import nn

from assay.attribution.engine import OutputKind
from assay.attribution.registry import METHODS, configure
from assay.bench.attribution_plots import keep_top_plot, truth_vs_sanity_plot
from assay.bench.attribution_worlds import WORLD_NAMES, PreparedWorld, prepare_world, world_parameters
from assay.bench.runner import BenchResult, RunContext, check_params, summary_rows
from assay.bench.spec import SpecRun, expand_spec, parse_spec
from assay.config import ConfigError, check_choice

__all__ = ["AttributionSettings", "AttributionFamily", "PreparedWorld", "Explainer", "FAMILY", "WORLD_NAMES",
           "METHOD_NAMES", "SUMMARY_METRICS", "method_params", "parse_neighbourhood"]

METHOD_NAMES = (*METHODS, "diet", "random")
"""The registry's methods, DiET, and the chance-level control."""

SUMMARY_METRICS = ("relevance_mass", "pointing_game", "top_k_precision", "rank_correlation", "mask_iou",
                   "deletion_auc", "faithfulness_correlation", "keep_top_10_accuracy", "keep_top_50_accuracy",
                   "randomisation_spearman", "least_salient_accuracy", "least_salient_change", "gan_test_accuracy")
"""Columns of the summary table: ground-truth agreement (5), faithfulness (4), the sanity check (1), the
unfaithfulness tests (3)."""

KEEP_TOP_P = (10, 20, 50, 100)
"""Keep-top-1/p: the shares 1/p of the features kept (DiET §6); each gives a ``keep_top_<p>_accuracy`` metric."""

KEEP_TOP_COLOUR_SCALE = 0.1
"""Keep-top-1/p fills removed pixels with DiET's random colour at this share of its σ (the paper's evaluation);
tabular features are set to 0."""

LEAST_SALIENT_FILL = {"digits": 0.5, "tabular": 0.0}
"""Value of removed features in the least-salient test: the paper's grey on images, the deletion baseline on
the tabular world."""

GAN_SEED = 30_000
"""The GAN-test's starting noise is drawn with seed ``GAN_SEED + seed``."""

IMAGE_ONLY = ("gradcam", "diet")
"""Methods that need images ``[B, C, H, W]`` (a conv feature map; a mask upsampled over pixels)."""

SHARED_DEFAULTS = {"steps": 32, "n_samples": 200, "patch": 4}
"""Defaults of the registry methods: IG nodes / SmoothGrad copies (``steps``), LIME/KernelSHAP/C-LIME
perturbations (``n_samples``), and the side of the square image patches that occlusion, LIME, KernelSHAP
and C-LIME score as one feature (``patch``; tabular features are scored one by one)."""

DIET_DEFAULTS = {"rounds": 3, "max_epochs": 15, "upsample": 4, "batch_size": 64}
"""DiET's defaults in the bench (fewer rounds and epochs than :class:`~assay.attribution.diet.DietConfig`'s
5 × 30, so that one run takes seconds at the bench's sizes)."""

@dataclass(frozen=True, kw_only=True)
class AttributionSettings:
    """The run budget of an attribution bench."""

    n_examples: int = 32
    """Correctly classified held-out examples explained per world and seed."""
    output: OutputKind = "log_softmax"
    """Explained output of the classifier: log_softmax (the classifier's own score, invariant to a shared
    logit shift; Srinivas & Fleuret 2021), logit or probability."""
    deletion_steps: int = 16
    """Steps of the deletion curve."""
    faithfulness_runs: int = 50
    """Random subsets (of 1/8 of the features) of the faithfulness correlation."""
    randomise: tuple[str, ...] = ()
    """Sites re-initialised, top first, by the sanity check; empty: every parameterised leaf module."""
    model_seed: int = 0
    """Seed of the classifier's training (0 with the zoo recipe: the zoo's cached classifier)."""
    model_per_seed: bool = False
    """Train one classifier per bench seed s (seed model_seed + s), so the intervals cover training too."""
    n_train: int | None = None
    """Training examples of the classifier; None: the zoo recipe's."""
    epochs: int | None = None
    """Training epochs of the classifier; None: the zoo recipe's."""
    hidden: tuple[int, ...] = ()
    """Conv channels (digits) or hidden widths (tabular) of the classifier; empty: the zoo recipe's."""
    robust_epochs: int = 2
    """Epochs of PGD adversarial fine-tuning for a world spec with ``robust_eps`` > 0."""
    robust_steps: int = 5
    """PGD steps per adversarial example of that fine-tuning."""
    robust_n_train: int = 2_000
    """Training examples (train split, the classifier's seed) of that fine-tuning."""
    gan_samples: int = 10
    """Samples of the GAN-test per method (targets cycle through the classes; images only); 0: no GAN-test."""
    gan_steps: int = 20
    """Ascent steps of the GAN-test (the paper: 500; each step explains every sample once)."""
    gan_output: OutputKind = "logit"
    """Output whose attribution the GAN-test ascends: logit (the class-conditional log-density of Srinivas &
    Fleuret 2021), log_softmax or probability."""
    neighbourhood: str = ""
    """LFA fidelity report in this neighbourhood: gaussian[:sigma=0.1,n_samples=200] or
    mask[:patch=4,keep=0.5,baseline=0,n_samples=200]; empty: none."""
    plots: bool = True
    """Draw the plots (matplotlib; PNG + SVG)."""

    def __post_init__(self) -> None:
        if self.n_examples < 1 or self.deletion_steps < 1 or self.faithfulness_runs < 3:
            raise ConfigError("n_examples and deletion_steps must be ≥ 1 and faithfulness_runs ≥ 3")
        if min(self.robust_epochs, self.robust_steps, self.robust_n_train) < 1:
            raise ConfigError("robust_epochs, robust_steps and robust_n_train must be ≥ 1")
        if self.gan_samples < 0 or self.gan_steps < 1:
            raise ConfigError("gan_samples must be ≥ 0 (0: no GAN-test) and gan_steps ≥ 1")
        check_choice("output", self.output, get_args(OutputKind))
        check_choice("gan_output", self.gan_output, get_args(OutputKind))
        if self.neighbourhood:
            parse_neighbourhood(self.neighbourhood)
        if (self.n_train is not None and self.n_train < 1) or (self.epochs is not None and self.epochs < 1) or \
                any(h < 1 for h in self.hidden):
            raise ConfigError("n_train, epochs and the hidden widths must be ≥ 1")


def method_params(name: str) -> dict[str, Any]:
    """The spec parameters of method ``name`` with their defaults: a registry method's config fields (its
    budget at the bench's shared defaults; ``seed`` is the bench seed and ``output`` a setting) plus
    ``patch`` for feature-group methods; DiET's config fields; none for ``random``."""
    if name == "random":
        return {}
    if name == "diet":
        from assay.attribution.diet import DietConfig

        return {**{f.name: getattr(DietConfig(), f.name) for f in dataclasses.fields(DietConfig)
                   if f.name != "seed"}, **DIET_DEFAULTS}
    cfg = _registry_config(name, {}, seed=0, output="log_softmax", layer="<last ReLU>")
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init and f.name not in ("seed", "output")}
    if type(cfg).feature_groups:
        out["patch"] = SHARED_DEFAULTS["patch"]
    return out


def _registry_config(name: str, params: dict[str, Any], *, seed: int, output: str, layer: str | None) -> Any:
    cfg = configure(name, steps=SHARED_DEFAULTS["steps"], n_samples=SHARED_DEFAULTS["n_samples"], seed=seed,
                    output=output, layer=layer)
    try:
        return dataclasses.replace(cfg, **{k: v for k, v in params.items() if k != "patch"})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters {params} for method {name!r}: {e}") from None


NEIGHBOURHOOD_KEYS = {"gaussian": ("sigma", "n_samples"), "mask": ("patch", "keep", "baseline", "n_samples")}
"""The keys of each neighbourhood spec (:class:`~assay.evaluate.local_fidelity.Neighbourhood`'s fields, plus
the side of the square image patches that a mask keeps or removes as one feature)."""


def parse_neighbourhood(spec: str) -> tuple[Any, int]:
    """``"gaussian:sigma=0.1"`` or ``"mask:patch=4,keep=0.5"`` → (the
    :class:`~assay.evaluate.local_fidelity.Neighbourhood`, the patch side of a mask's image features; tabular
    features are masked one by one)."""
    from assay.evaluate.local_fidelity import Neighbourhood

    name, params = parse_spec(spec, NEIGHBOURHOOD_KEYS, what="neighbourhood")
    bad = sorted(set(params) - set(NEIGHBOURHOOD_KEYS[name]))
    if bad or any(len(v) > 1 for v in params.values()):
        raise ConfigError(f"neighbourhood {spec!r}: {name} takes one value of each of "
                          f"{', '.join(NEIGHBOURHOOD_KEYS[name])}" + (f"; unknown: {', '.join(bad)}" if bad else ""))
    kw = {k: v[0] for k, v in params.items()}
    patch = kw.pop("patch", SHARED_DEFAULTS["patch"])
    if not isinstance(patch, int) or patch < 1:
        raise ConfigError(f"neighbourhood {spec!r}: patch must be a positive integer")
    try:
        return Neighbourhood(kind=name, **kw), patch
    except TypeError as e:
        raise ConfigError(f"neighbourhood {spec!r}: {e}") from None


def _diet_config(params: dict[str, Any], seed: int) -> Any:
    from assay.attribution.diet import DietConfig

    try:
        return DietConfig(**{**DIET_DEFAULTS, **params, "seed": seed})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters {params} for method 'diet': {e}") from None


def _last_relu(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    return names[-1] if names else None


Attribute = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class Explainer(NamedTuple):
    """A method of the bench, ready to explain."""

    attribute: Attribute
    """``attribute(model, x, target)``: the signed attribution shaped like x, or a map ``[B, H, W]``
    (FullGrad, Grad-CAM, DiET's mask, the random control)."""
    group_size: torch.Tensor | None
    """Elements per feature group at each element (``[*x]``) for methods that write their group's score on
    every element of the group (occlusion, LIME, KernelSHAP, C-LIME on image patches); None otherwise."""

    def importance(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One importance per pixel or feature: Σ_c |φ_c| (the map of the agreement and faithfulness metrics)."""
        from assay.evaluate.attribution_agreement import importance_map

        return importance_map(self.attribute(model, x, t).detach())


def explainer(run: SpecRun, world: PreparedWorld, seed: int, output: str) -> Explainer | None:
    """The method of ``run`` explaining ``output``, or None where it does not apply to the world (Grad-CAM
    and DiET need images)."""
    params = check_params(run, method_params(run.name))
    image = world.x.dim() == 4
    if run.name in IMAGE_ONLY and not image:
        return None
    if run.name == "random":
        def rand(model, x, t):
            g = torch.Generator().manual_seed(seed)
            return torch.rand(x.shape[0], *x.shape[2 if image else 1:], generator=g, dtype=x.dtype)
        return Explainer(rand, None)
    if run.name == "diet":
        import torch.nn.functional as F

        from assay.attribution.diet import diet

        cfg = _diet_config(run.params, seed)

        def explain_diet(model, x, t):  # the mask learnt with a tuned copy of this model, upsampled as DiET erases
            masks = diet(model, x, config=cfg, generator=torch.Generator().manual_seed(seed)).masks
            return F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return Explainer(explain_diet, None)
    from assay.attribution.neighbourhoods import grid_feature_mask

    entry = METHODS[run.name]
    mcfg = _registry_config(run.name, run.params, seed=seed, output=output, layer=_last_relu(world.model))
    kwargs, size = {}, None
    if entry.config.feature_groups and image:
        shape = tuple(world.x.shape[1:])
        fm = grid_feature_mask(shape, (shape[0], params["patch"], params["patch"]))
        kwargs["feature_mask"], size = fm, torch.bincount(fm.flatten())[fm].to(world.x.dtype)

    def explain(model, x, t):
        return entry.values(entry.run(model, x, t, config=mcfg, **kwargs))
    return Explainer(explain, size)


def score_method(ex: Explainer, world: PreparedWorld, settings: AttributionSettings, seed: int) -> dict[str, float]:
    """The metrics of one explainer on a prepared world (means over the examples); with a ``neighbourhood``
    setting also its LFA loss there."""
    from assay.evaluate.attribution_agreement import (
        importance_map,
        mask_iou,
        pointing_game,
        rank_correlation,
        relevance_mass,
        top_k_precision,
    )
    from assay.evaluate.attribution_sanity import model_randomisation
    from assay.evaluate.faithfulness import faithfulness_correlation, keep_top, perturbation_curve
    from assay.evaluate.unfaithfulness import least_salient_removal

    model, x, mask, t = world.model, world.x, world.mask, world.target
    values = ex.attribute(model, x, t).detach()
    m = importance_map(values)
    a = m[:, None] if x.dim() == 4 else m  # a pixel map removes all channels of a pixel
    mass, chance = relevance_mass(m, mask)
    curve = perturbation_curve(model, x, a, t, n_steps=settings.deletion_steps, output="probability")
    fc = faithfulness_correlation(model, x, a, t, subset_size=max(1, mask[0].numel() // 8),
                                  n_runs=settings.faithfulness_runs, generator=torch.Generator().manual_seed(seed))
    sanity = model_randomisation(model, ex.importance, x, t, layers=world.sites,
                                 generator=torch.Generator().manual_seed(42 + seed))
    least = least_salient_removal(model, x, a, t, baseline=LEAST_SALIENT_FILL[world.name],
                                  generator=torch.Generator().manual_seed(seed), output="probability")
    kept = keep_top(model, x, a, t, p=KEEP_TOP_P, baseline=_keep_top_fill(x, seed), output="probability")
    out = {"relevance_mass": float(mass.mean()), "pointing_game": float(pointing_game(m, mask).double().mean()),
           "mask_iou": float(mask_iou(m, mask).mean()),
           **{f"keep_top_{p}_accuracy": float(c) for p, c in zip(kept.p, kept.correct.double().mean(0))},
           "top_k_precision": float(top_k_precision(m, mask, world.top_k).mean()),
           "rank_correlation": float(rank_correlation(m, mask).nanmean()), "deletion_auc": float(curve.auc.mean()),
           "faithfulness_correlation": float(fc.nanmean()),
           "randomisation_spearman": float(sanity.spearman_abs[-1].nanmean()),
           "least_salient_accuracy": float(least.correct.double().mean()),
           "least_salient_change": float(least.change.abs().mean()),
           "chance_mass": float(chance.mean()), "model_accuracy": world.accuracy, "n_examples": float(len(t))}
    if settings.neighbourhood:
        out.update(_lfa_metrics(values, ex.group_size, world, settings, seed))
    return out


def _keep_top_fill(x: torch.Tensor, seed: int) -> torch.Tensor | float:
    """The keep-top-1/p fill: DiET's random colour per image (σ × :data:`KEEP_TOP_COLOUR_SCALE`) on images, 0 on
    tabular features."""
    if x.dim() != 4:
        return 0.0
    from assay.attribution.diet import DietConfig, random_colour

    return random_colour(x.shape[0], DietConfig(), torch.Generator().manual_seed(seed), scale=KEEP_TOP_COLOUR_SCALE,
                         dtype=x.dtype)


def _lfa_metrics(values: torch.Tensor, group_size: torch.Tensor | None, world: PreparedWorld,
                 settings: AttributionSettings, seed: int) -> dict[str, float]:
    """LFA loss of the attribution ``values`` in the settings' neighbourhood (per-element shares: a
    feature-group method's values divided by its group size; a map ``[B, H, W]`` spread over the channels)."""
    from assay.attribution.neighbourhoods import grid_feature_mask
    from assay.evaluate.local_fidelity import lfa_loss

    nb, patch = parse_neighbourhood(settings.neighbourhood)
    x = world.x
    phi = values if group_size is None else values / group_size
    phi = phi[:, None] if phi.dim() == x.dim() - 1 else phi
    fm = None
    if nb.kind == "mask" and x.dim() == 4:
        fm = grid_feature_mask(tuple(x.shape[1:]), (x.shape[1], patch, patch))
    r = lfa_loss(world.model, x, phi, world.target, neighbourhood=nb, feature_mask=fm,
                 generator=torch.Generator().manual_seed(seed), output=settings.output)
    return {"lfa_loss": float(r.loss.mean()), "lfa_null_loss": float(r.null_loss.mean()),
            "lfa_relative_loss": float(r.loss.mean() / r.null_loss.mean())}


def gan_metrics(run: SpecRun, world: PreparedWorld, settings: AttributionSettings, seed: int) -> dict[str, float]:
    """The GAN-test of the method of ``run`` (images with a proxy; not DiET, whose every explanation tunes a
    model): proxy accuracy on ``gan_samples`` samples drawn by ``gan_steps`` ascent steps along its
    RMS-normalised attribution of ``gan_output``, and the explained model's own accuracy on them."""
    from assay.evaluate.unfaithfulness import gan_test

    if world.proxy is None or run.name == "diet":
        return {}
    ex = explainer(run, world, seed, settings.gan_output)
    model = world.model
    with torch.no_grad():
        n_classes = model(world.x[:1]).shape[1]
    y = torch.arange(settings.gan_samples) % n_classes

    def direction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = ex.attribute(model, x, t).detach()
        return v[:, None] if v.dim() == x.dim() - 1 else v  # a map moves every channel of its pixels

    res = gan_test(direction, world.proxy, y, tuple(world.x.shape[1:]), n_steps=settings.gan_steps, normalize=True,
                   generator=torch.Generator().manual_seed(GAN_SEED + seed))
    with torch.no_grad():
        own = (model(res.samples).argmax(1) == y).double().mean()
    return {"gan_test_accuracy": res.accuracy, "gan_model_accuracy": float(own),
            "gan_proxy_accuracy": world.proxy_accuracy}


class AttributionFamily:
    """Attribution methods × worlds with true attribution masks (module docstring)."""

    name = "attribution"
    title = "Attribution bench: methods ranked against true attribution masks"
    worlds = WORLD_NAMES
    methods = METHOD_NAMES
    metrics = SUMMARY_METRICS
    settings_type = AttributionSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        return world_parameters()

    def method_names(self) -> tuple[str, ...]:
        return METHOD_NAMES

    def expand(self, spec: str) -> list[SpecRun]:
        runs = list(expand_spec(spec, METHOD_NAMES))
        for r in runs:  # unknown keys and invalid values fail here, before any work
            check_params(r, method_params(r.name))
            if r.name == "diet":
                _diet_config(r.params, 0)
            elif r.name != "random":
                _registry_config(r.name, r.params, seed=0, output="log_softmax", layer="<last ReLU>")
        return runs

    def prepare(self, world: str, seed: int, settings: AttributionSettings) -> PreparedWorld:
        return prepare_world(world, seed, settings)

    def score(self, prepared: PreparedWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        ex = explainer(run, prepared, ctx.seed, ctx.settings.output)
        if ex is None:
            return {}  # not applicable to this world (listed in the section's notes)
        return {**score_method(ex, prepared, ctx.settings, ctx.seed),
                **gan_metrics(run, prepared, ctx.settings, ctx.seed)}

    def section(self, result: BenchResult) -> Any:
        from assay.report import Plot, Section, Table

        tables, plots = [], []
        for world in dict.fromkeys(r["world"] for r in result.runs):
            mine = result._replace(summary=[s for s in result.summary if s["world"] == world])
            cols, rows = summary_rows(mine, SUMMARY_METRICS)
            mass = {(s["method"], s["level"]): s["mean"] for s in mine.summary if s["metric"] == "relevance_mass"}
            rows = sorted((r for r in rows if (r[1], r[2]) in mass), key=lambda r: -mass[(r[1], r[2])])
            n = max((s["n"] for s in mine.summary), default=0)
            chance = _mean(mine.summary, "chance_mass")
            acc = _mean(mine.summary, "model_accuracy")
            tables.append(Table(f"{world}: classifier accuracy {acc:.3f}, chance relevance mass {chance:.3f} "
                                f"(mean [95% interval] over {n} seed(s); sorted by relevance mass)",
                                cols[1:], [r[1:] for r in rows]))
            lfa = _lfa_table(mine, world, result.settings)
            if lfa is not None:
                tables.append(lfa)
            if result.settings.plots:
                path = result.out_dir / "plots" / f"truth_vs_sanity_{_slug(world)}"
                plots.append(Plot(f"{world}: relevance mass vs randomisation Spearman",
                                  truth_vs_sanity_plot(mine.summary, world, chance, path)))
        if result.settings.plots and any(s["metric"] == "keep_top_10_accuracy" and s["n"] for s in result.summary):
            plots.append(Plot("keep-top-1/p accuracy (DiET §6) per world and method",
                              keep_top_plot(result.summary, result.out_dir / "plots" / "keep_top", KEEP_TOP_P)))
        s = result.settings
        skipped = sorted({f"{r['method']} on {r['world']}" for r in result.runs if not r["metrics"]})
        notes = [f"{len(result.runs)} runs; {s.n_examples} correctly classified held-out examples per world and "
                 f"seed; explained output {s.output}; classifier seed {s.model_seed}"
                 f"{' + the bench seed' if s.model_per_seed else ''}.",
                 "Ground-truth agreement: relevance mass (share of |φ| inside the signal mask; chance = the mask's "
                 "area), pointing game, top-k precision, rank correlation with the mask, and mask IoU (DiET §6: "
                 "IoU of the map's top-|mask| features with the mask). Faithfulness: deletion AUC (probability as "
                 "features are removed in map order; lower is better), faithfulness correlation, and keep-top-1/p "
                 "accuracy (DiET §6: only the top 1/p of the features kept, the rest filled with DiET's random "
                 "colour at 0.1 σ on images, 0 on tabular; p = 10 and 50 shown, 20 and 100 in the runs). Sanity: Spearman of the maps before and after cascading randomisation of the "
                 "classifier's layers (lower: the map depends on the learnt weights; the random control stays at "
                 "1).",
                 "Unfaithfulness (Srinivas & Fleuret 2021): least-salient accuracy and change are the classifier's "
                 "accuracy and mean |Δp_t| over 25 log-spaced fractions (1%–100%) of the features the map ranks "
                 "lowest, removed (grey 0.5 on images, 0 on tabular): a faithful map names what the model ignores "
                 "(high accuracy, small change; the random control removes random pixels)." + (
                     f" GAN-test accuracy: {s.gan_samples} samples per method, {s.gan_steps} ascent steps along its "
                     f"RMS-normalised attribution of the {s.gan_output} from grey noise, classified by an "
                     "independently trained proxy (chance 0.1 on the digits; images only; not run for DiET, whose "
                     "every explanation tunes a model)." if s.gan_samples else " GAN-test off (gan_samples=0)."),
                 "random is a map that ignores the model: every method should beat it on agreement and "
                 "faithfulness, and fall below it on the randomisation Spearman."]
        if skipped:
            notes.append(f"Not applicable (needs images): {', '.join(skipped)}.")
        if s.neighbourhood:
            notes.append(f"LFA fidelity in {s.neighbourhood}: each explanation taken literally as a linear surrogate "
                         "— slopes on the Gaussian noise ξ, or coefficients of the kept/removed features of a mask "
                         "(φ summed over each feature; feature-group methods divided by their group size first). No "
                         "explanation is best in every neighbourhood: pick the lowest loss in the one you care about; "
                         "relative loss ≥ 1 explains less than the zero explanation.")
        undefined = sorted({r["method"] for r in result.runs
                            if math.isnan(r["metrics"].get("randomisation_spearman", 0.0))})
        if undefined:
            notes.append(f"Randomisation Spearman undefined (–) for {', '.join(undefined)}: after randomisation every "
                         "map is constant (DiET erases every pixel of a model that no longer reacts to the input); "
                         "such methods are left out of the plot.")
        return Section(self.title, tables, plots, notes)


def _lfa_table(result: BenchResult, world: str, settings: AttributionSettings) -> Any:
    """The LFA fidelity report of one world (methods by their surrogate's loss, lowest first), or None."""
    from assay.report import Table

    loss = {(s["method"], s["level"]): s["mean"] for s in result.summary if s["metric"] == "lfa_loss" and s["n"]}
    if not loss:
        return None
    cols, rows = summary_rows(result, ("lfa_loss", "lfa_relative_loss"))
    rows = sorted((r for r in rows if (r[1], r[2]) in loss), key=lambda r: loss[(r[1], r[2])])
    null = _mean(result.summary, "lfa_null_loss")
    return Table(f"{world}: LFA fidelity in the neighbourhood {settings.neighbourhood} (Han, Srinivas & Lakkaraju "
                 f"2022): E[(f(x′) − f(x) − φᵀξ)²] of the {settings.output}, lowest first; relative = / the zero "
                 f"explanation's loss {null:.4g}", cols[1:], [r[1:] for r in rows])


def _mean(summary: list[dict[str, Any]], metric: str) -> float:
    vals = [s["mean"] for s in summary if s["metric"] == metric and s["n"]]
    return sum(vals) / len(vals) if vals else float("nan")


def _slug(world: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in world)


FAMILY = AttributionFamily()
"""The attribution family for :func:`assay.bench.runner.run_family`."""
