"""Rank attribution methods on a world whose true attributions are known (signal–distractor images).

A bench-style report: every method explains the same examples of a trained classifier and is scored
on three axes, one row per method:

* **ground-truth agreement** with the signal mask (the pixels of the digit that defines the label):
  relevance mass inside the mask against the mask's area (Arras, Osman & Samek 2022, "CLEVR-XAI"),
  the pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop"), and the
  OpenXAI agreement measures (Krishna et al. 2022, "The Disagreement Problem in Explainable Machine
  Learning") against the binary mask — top-k precision (feature agreement for a binary ground truth)
  and rank correlation;
* **faithfulness**: deletion AUC (Petsiuk, Das & Saenko 2018, "RISE"; lower is better) and
  faithfulness correlation (Bhatt, Weller & Moura 2020);
* **sanity**: the model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency
  Maps"): Spearman correlation of |φ| before and after cascading re-initialisation (lower: the
  method depends on what the model learnt).

Per-pixel maps are Σ_c |φ_c| (FullGrad and Grad-CAM produce a map directly). The digits world
(:mod:`assay.worlds.digits`, after DiET's Hard-MNIST, Bhalla, Srinivas & Lakkaraju 2023) supplies
``signal_mask``; :func:`rank_on_digits` wires it to ``world_classifier("digits")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, get_args

import torch
from torch import nn

from assay.attribution.engine import OutputKind
from assay.attribution.registry import METHODS, configure
from assay.config import ConfigError, check_choice

__all__ = ["RankingConfig", "MethodScore", "pixel_map", "explainer", "rank_methods", "rank_on_digits",
           "DEFAULT_METHODS"]

DEFAULT_METHODS = (*METHODS, "random")
"""Every registered method, then the chance-level control."""


@dataclass(frozen=True, kw_only=True)
class RankingConfig:
    """Which methods to rank and how each is run and scored."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    """Method names of the registry (assay.attribution.registry.METHODS) and 'random' (a chance-level
    control map)."""
    top_k: int = 64
    """k of the top-k precision (pixels)."""
    patch: int = 4
    """Square patch side for occlusion windows and LIME/KernelSHAP/C-LIME features."""
    steps: int = 32
    """IG quadrature nodes and SmoothGrad noisy copies."""
    n_samples: int = 200
    """LIME / KernelSHAP / C-LIME perturbations."""
    deletion_steps: int = 16
    """Steps of the deletion curve."""
    randomise: tuple[str, ...] | None = None
    """Sites re-initialised top first for the sanity check; None: every parameterised leaf module."""
    gradcam_layer: str | None = None
    """Grad-CAM site; None: the last ReLU of the model."""
    output: OutputKind = "logit"
    """Explained output: logit, log_softmax or probability."""
    seed: int = 0
    """Seed of stochastic methods, the random control and the randomisation."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.patch < 1 or self.steps < 1 or self.n_samples < 3 or self.deletion_steps < 1:
            raise ConfigError("top_k, patch, steps and deletion_steps must be ≥ 1 and n_samples ≥ 3")
        check_choice("output", self.output, get_args(OutputKind))
        bad = [m for m in self.methods if m not in DEFAULT_METHODS]
        if bad:
            raise ConfigError(f"unknown methods {bad}; choose from {', '.join(DEFAULT_METHODS)}")


class MethodScore(NamedTuple):
    """One method's row (means over the examples)."""

    method: str
    """Method name."""
    relevance_mass: float
    """Share of Σ|φ| inside the signal mask (chance: ``chance_mass``)."""
    chance_mass: float
    """The mask's share of the pixels: the relevance mass of a uniform map."""
    pointing_game: float
    """Fraction of examples whose top pixel lies in the mask."""
    top_k_precision: float
    """Fraction of the top-k pixels inside the mask (feature agreement with a binary ground truth)."""
    rank_correlation: float
    """Spearman correlation of the pixel map with the mask (OpenXAI RC)."""
    deletion_auc: float
    """Area under the probability curve as pixels are deleted in map order (lower is better)."""
    faithfulness_correlation: float
    """Correlation of Σφ over random pixel subsets with the output drop when they are removed."""
    randomisation_spearman: float
    """Spearman of |φ| before/after randomising the model (lower: depends on the learnt weights)."""


def pixel_map(values: torch.Tensor) -> torch.Tensor:
    """Σ_c |φ_c| for ``[B, C, H, W]`` attributions; ``[B, H, W]`` maps pass through."""
    return values.abs().sum(1) if values.dim() == 4 else values


def _last_relu(model: nn.Module) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    return names[-1] if names else None


def explainer(name: str, cfg: RankingConfig, shape: tuple[int, ...]) -> Callable:
    """``explain(model, x, target) -> [B, H, W]`` pixel map for one method name.

    Feature-group methods (occlusion, LIME, KernelSHAP, C-LIME) score ``patch``×``patch`` squares over all
    channels; Grad-CAM runs at ``cfg.gradcam_layer``, else at the model's last ReLU."""
    from assay.attribution.neighbourhoods import grid_feature_mask

    C = shape[0]
    if name == "random":
        def rand(model, x, t):
            g = torch.Generator().manual_seed(cfg.seed)
            return torch.rand(x.shape[0], *x.shape[2:], generator=g, dtype=x.dtype)
        return rand
    entry = METHODS[name]
    kwargs = {"feature_mask": grid_feature_mask(shape, (C, cfg.patch, cfg.patch))} if entry.config.feature_groups else {}

    def explain(model, x, t):
        mcfg = configure(name, steps=cfg.steps, n_samples=cfg.n_samples, seed=cfg.seed, output=cfg.output,
                         layer=cfg.gradcam_layer or _last_relu(model))
        return pixel_map(entry.values(entry.run(model, x, t, config=mcfg, **kwargs)).detach())

    return explain


def _top_k_precision(m: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    top = m.flatten(1).topk(k, dim=1).indices
    return mask.flatten(1).gather(1, top).double().mean(1)


def rank_methods(
    model: nn.Module, x: torch.Tensor, signal_mask: torch.Tensor, target: torch.Tensor | None = None, *,
    config: RankingConfig = RankingConfig(),
) -> list[MethodScore]:
    """Score every method of ``config`` on images ``x`` ``[B, C, H, W]`` with masks ``[B, H, W]``; rows
    sorted by relevance mass (best first)."""
    from assay.evaluate.attribution_agreement import pointing_game, relevance_mass
    from assay.evaluate.attribution_sanity import model_randomisation
    from assay.evaluate.faithfulness import faithfulness_correlation, perturbation_curve
    from assay.stats import spearman

    if x.dim() != 4 or signal_mask.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"need images [B, C, H, W] and masks [B, H, W]; got {tuple(x.shape)} and "
                         f"{tuple(signal_mask.shape)}")
    with torch.no_grad():
        t = model(x).argmax(1) if target is None else target
    mask = signal_mask.bool()
    sites = config.randomise
    if sites is None:
        sites = tuple(n for n, m in reversed(list(model.named_modules()))
                      if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False)))
    k = min(config.top_k, mask[0].numel())
    rows = []
    for name in config.methods:
        explain = explainer(name, config, tuple(x.shape[1:]))
        m = explain(model, x, t).detach()
        mass, chance = relevance_mass(m, mask)
        curve = perturbation_curve(model, x, m[:, None], t, n_steps=config.deletion_steps, output="probability")
        fc = faithfulness_correlation(model, x, m[:, None], t, subset_size=max(1, mask[0].numel() // 8),
                                      n_runs=50, generator=torch.Generator().manual_seed(config.seed))
        sanity = model_randomisation(model, explain, x, t, layers=sites, generator=torch.Generator().manual_seed(42))
        rows.append(MethodScore(
            name, float(mass.mean()), float(chance.mean()), float(pointing_game(m, mask).double().mean()),
            float(_top_k_precision(m, mask, k).mean()), float(spearman(m.flatten(1), mask.flatten(1).double()).mean()),
            float(curve.auc.mean()), float(fc.nanmean()), float(sanity.spearman_abs[-1].nanmean()),
        ))
    return sorted(rows, key=lambda r: -r.relevance_mass)


def rank_on_digits(
    n_examples: int = 64, *, config: RankingConfig = RankingConfig(), seed: int = 0, cache_dir=None,
) -> tuple[list[MethodScore], float]:
    """Rank methods on test-split signal–distractor digits with ``world_classifier("digits")``; also
    returns the classifier's test accuracy. Only correctly classified examples are explained."""
    from dataclasses import replace

    from assay.models.classifier_zoo import world_classifier
    from assay.worlds.base import make_generator
    from assay.worlds.digits import SignalDistractorDigits

    wc = world_classifier("digits", cache_dir=cache_dir)
    world = SignalDistractorDigits(replace(wc.world.config, split="test"))
    batch = world.sample(2 * n_examples, generator=make_generator(seed))
    with torch.no_grad():
        ok = wc.model(batch.inputs).argmax(1) == batch.targets
    idx = ok.nonzero()[:, 0][:n_examples]
    rows = rank_methods(wc.model, batch.inputs[idx], batch.labels["signal_mask"][idx], batch.targets[idx],
                        config=config)
    return rows, wc.test_accuracy
