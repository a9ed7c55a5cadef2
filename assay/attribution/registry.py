"""The attribution method registry: each method's config class paired with the function that runs it.

A method's name and capabilities (``uses_baseline``, ``feature_groups``, ``complete``, ``stochastic``,
``budget_field``) are class constants of its config (:class:`assay.attribution.engine.EngineConfig`);
this module holds the one table that pairs each config class with its function. The command line's
``--method`` choices, the attribution bench family's methods (:mod:`assay.bench.attribution`) and the
text module's per-method behaviour all read it. The engine methods (Han, Srinivas & Lakkaraju 2022,
"Which Explanation Should I Choose?") return an :class:`~assay.attribution.engine.Attribution` shaped
like the input; FullGrad (Srinivas & Fleuret 2019) and Grad-CAM (Selvaraju et al. 2017) return a map
``[B, H, W]`` in their own result types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, NamedTuple

import torch

from assay.attribution.engine import EngineConfig
from assay.attribution.fullgrad import FullGradConfig, fullgrad
from assay.attribution.gradcam import GradCamConfig, gradcam
from assay.attribution.gradients import (
    GradientConfig,
    InputXGradientConfig,
    SmoothGradConfig,
    gradient,
    input_x_gradient,
    smoothgrad,
)
from assay.attribution.integrated_gradients import IntegratedGradientsConfig, integrated_gradients
from assay.attribution.lime_shap import CLimeConfig, KernelShapConfig, LimeConfig, c_lime, kernel_shap, lime
from assay.attribution.occlusion import OcclusionConfig, occlusion

__all__ = ["MethodEntry", "METHODS", "ENGINE_METHODS", "lookup", "configure"]


class MethodEntry(NamedTuple):
    """One attribution method."""

    config: type[EngineConfig]
    """Its config class; the method's name and capabilities are the class's constants."""
    run: Callable[..., Any]
    """``run(model, x, target, *, config, **kwargs)`` (kwargs: ``baseline``, ``feature_mask``, ``generator``
    where the method takes them)."""
    map_field: str | None = None
    """None: ``run`` returns an Attribution (values shaped like x); else the field of ``run``'s result
    that holds the method's map ``[B, H, W]`` (FullGrad's ``saliency``, Grad-CAM's ``values``)."""

    @property
    def name(self) -> str:
        return self.config.name

    def values(self, result: Any) -> torch.Tensor:
        """The attribution (shaped like x) or the map ``[B, H, W]`` in a result of ``run``."""
        return getattr(result, self.map_field or "values")


METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(GradientConfig, gradient),
        MethodEntry(InputXGradientConfig, input_x_gradient),
        MethodEntry(SmoothGradConfig, smoothgrad),
        MethodEntry(IntegratedGradientsConfig, integrated_gradients),
        MethodEntry(OcclusionConfig, occlusion),
        MethodEntry(LimeConfig, lime),
        MethodEntry(KernelShapConfig, kernel_shap),
        MethodEntry(CLimeConfig, c_lime),
        MethodEntry(FullGradConfig, fullgrad, map_field="saliency"),
        MethodEntry(GradCamConfig, gradcam, map_field="values"),
    )
}
"""Every attribution method by name, in display order."""

ENGINE_METHODS: dict[str, MethodEntry] = {n: e for n, e in METHODS.items() if e.map_field is None}
"""The methods that return an Attribution shaped like the input (what :func:`~assay.attribution.attribute` runs)."""

_SETTINGS = {f.name for entry in METHODS.values() for f in fields(entry.config) if f.init}


def lookup(name: str, table: dict[str, MethodEntry] = METHODS) -> MethodEntry:
    """The entry of method ``name`` in ``table``; ValueError naming the choices when there is none."""
    if name not in table:
        raise ValueError(f"unknown attribution method {name!r}; choose one of {', '.join(table)}")
    return table[name]


def configure(name: str, *, steps: int | None = None, n_samples: int | None = None, **settings: Any) -> EngineConfig:
    """Method ``name``'s config from settings shared by several methods (one call serves them all).

    Each keyword the config class has a field for (``output``, ``memory_budget_mb``, ``seed``, ``layer``, …)
    is passed on, the others are skipped (``seed`` means nothing to the gradient); a keyword no method
    has is a TypeError. The method's ``budget_field`` gets ``n_samples`` for feature-group methods
    (occlusion has none; LIME, KernelSHAP, C-LIME count perturbations) and ``steps`` for gradient methods
    (IG's nodes, SmoothGrad's noisy copies), when given.
    """
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise TypeError(f"no attribution method has the settings {unknown}")
    cls = lookup(name).config
    own = {f.name for f in fields(cls) if f.init}
    kwargs = {k: v for k, v in settings.items() if k in own}
    budget = n_samples if cls.feature_groups else steps
    if cls.budget_field is not None and budget is not None:
        kwargs[cls.budget_field] = budget
    return cls(**kwargs)
