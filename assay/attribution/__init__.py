"""Feature attribution: one local-approximation engine, FullGrad, Grad-CAM.

``attribute(model, x, target, config=IntegratedGradientsConfig(steps=32))`` runs any engine method;
the method functions (``gradient``, ``smoothgrad``, ``integrated_gradients``, ``occlusion``,
``lime``, ``kernel_shap``, ``c_lime``, ``input_x_gradient``) can be called directly too, as can
``fullgrad`` and ``gradcam`` (which return a map ``[B, H, W]`` in their own result types, so
``attribute`` does not run them).
``METHODS`` (all methods, FullGrad and Grad-CAM included) and ``ENGINE_METHODS`` (those ``attribute``
runs) are the registry (:mod:`assay.attribution.registry`): name -> config class and function.
"""

from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.fullgrad import FullGradConfig, FullGradResult, fullgrad
from assay.attribution.gradcam import GradCamConfig, GradCamResult, gradcam
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
from assay.attribution.methods import attribute
from assay.attribution.occlusion import OcclusionConfig, occlusion
from assay.attribution.registry import ENGINE_METHODS, METHODS

__all__ = [
    "Attribution", "EngineConfig", "METHODS", "ENGINE_METHODS", "attribute",
    "GradientConfig", "InputXGradientConfig", "SmoothGradConfig", "IntegratedGradientsConfig",
    "OcclusionConfig", "LimeConfig", "KernelShapConfig", "CLimeConfig", "FullGradConfig", "GradCamConfig",
    "FullGradResult", "GradCamResult",
    "gradient", "input_x_gradient", "smoothgrad", "integrated_gradients", "occlusion", "lime",
    "kernel_shap", "c_lime", "fullgrad", "gradcam",
]
