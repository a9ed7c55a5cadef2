"""The method registry: one ``attribute(model, x, target, config=...)`` for every engine method.

Each engine method (Han, Srinivas & Lakkaraju 2022, "Which Explanation Should I Choose?") is a
configuration: the config's type picks the neighbourhood × surrogate × loss. ``METHODS`` maps the
method names used on the command line to their config classes.
"""

from __future__ import annotations

from typing import Any

import torch

from assay.attribution.engine import Attribution, EngineConfig
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

__all__ = ["METHODS", "attribute"]

METHODS: dict[str, tuple[type[EngineConfig], Any]] = {
    "gradient": (GradientConfig, gradient),
    "input_x_gradient": (InputXGradientConfig, input_x_gradient),
    "smoothgrad": (SmoothGradConfig, smoothgrad),
    "integrated_gradients": (IntegratedGradientsConfig, integrated_gradients),
    "occlusion": (OcclusionConfig, occlusion),
    "lime": (LimeConfig, lime),
    "kernel_shap": (KernelShapConfig, kernel_shap),
    "c_lime": (CLimeConfig, c_lime),
}


def attribute(
    model, x: torch.Tensor, target: int | torch.Tensor | None = None, *, config: EngineConfig | str, **kwargs: Any
) -> Attribution:
    """Run the method configured by ``config`` (an instance, or a method name for its defaults).

    Extra keyword arguments (``baseline``, ``feature_mask``, ``generator``, ``samples``, ``noise``)
    go to the method; one it does not take raises ``TypeError``.
    """
    if isinstance(config, str):
        if config not in METHODS:
            raise ValueError(f"unknown attribution method {config!r}; choose one of {', '.join(METHODS)}")
        config = METHODS[config][0]()
    for cls, fn in METHODS.values():
        if type(config) is cls:
            return fn(model, x, target, config=config, **kwargs)
    raise TypeError(f"{type(config).__name__} is not an engine method config; use one of "
                    + ", ".join(c.__name__ for c, _ in METHODS.values()))
