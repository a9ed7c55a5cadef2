"""Parity with Captum 0.9 under matched conventions (signed saliency, same noise, same samples)."""

import pytest
import torch
from peer_import import peer
from torch import nn

from assay.attribution import (
    IntegratedGradientsConfig,
    KernelShapConfig,
    OcclusionConfig,
    SmoothGradConfig,
    gradient,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    occlusion,
    smoothgrad,
)

captum_attr = peer("captum.attr")


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 16),
        nn.Tanh(), nn.Linear(16, 5),
    ).double().eval()


X = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
T = torch.tensor([0, 3, 1])


def test_saliency_and_input_x_gradient():
    net = _cnn()
    xg = X.clone().requires_grad_(True)  # Captum warns (an error here) on inputs without requires_grad
    ref = captum_attr.Saliency(net).attribute(xg, target=T, abs=False)
    torch.testing.assert_close(gradient(net, X, T).values, ref)
    ref = captum_attr.InputXGradient(net).attribute(xg, target=T)
    torch.testing.assert_close(input_x_gradient(net, X, T).values, ref)


@pytest.mark.parametrize("rule,captum_rule", [("gauss_legendre", "gausslegendre"), ("captum_trapezoid", "riemann_trapezoid"),
                                              ("riemann_left", "riemann_left"), ("riemann_middle", "riemann_middle"),
                                              ("riemann_right", "riemann_right")])
def test_integrated_gradients(rule, captum_rule):
    net = _cnn()
    base = torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref, delta = captum_attr.IntegratedGradients(net).attribute(
        X, baselines=base, target=T, n_steps=20, method=captum_rule, return_convergence_delta=True)
    ours = integrated_gradients(net, X, T, baseline=base, config=IntegratedGradientsConfig(steps=20, quadrature=rule))
    torch.testing.assert_close(ours.values, ref)
    torch.testing.assert_close(ours.completeness_gap, delta)


def test_textbook_trapezoid_is_captums_rescaled_to_unit_weight():
    # Captum's trapezoid uses cells of 1/n with halved ends (weights sum to (n−1)/n); assay's
    # riemann_trapezoid uses cells of 1/(n−1) on the same nodes (weights sum to 1): a factor n/(n−1)
    net = _cnn()
    ref = captum_attr.IntegratedGradients(net).attribute(X, target=T, n_steps=20, method="riemann_trapezoid")
    ours = integrated_gradients(net, X, T, config=IntegratedGradientsConfig(steps=20, quadrature="riemann_trapezoid"))
    torch.testing.assert_close(ours.values * 19 / 20, ref)


def test_smoothgrad_with_captum_noise():
    net = _cnn()
    n, sd = 6, 0.3
    torch.manual_seed(5)
    ref = captum_attr.NoiseTunnel(captum_attr.Saliency(net)).attribute(
        X.clone().requires_grad_(True), nt_type="smoothgrad", nt_samples=n, stdevs=sd, target=T, abs=False)
    torch.manual_seed(5)  # regenerate Captum's draws: one normal per expanded (B·n) input, example-major
    noise = torch.normal(0, torch.tensor(sd).repeat((X.shape[0] * n, *X.shape[1:])))
    ours = smoothgrad(net, X, T, noise=noise.view(X.shape[0], n, *X.shape[1:]).double())
    torch.testing.assert_close(ours.values, ref)
    # the absolute-noise config is the same estimator with its own draws: close to Captum's in expectation only
    assert smoothgrad(net, X, T, config=SmoothGradConfig(noise_scale="absolute", noise_level=sd)).values.shape == X.shape


def test_occlusion_windows_and_strides():
    net = _cnn()
    ref = captum_attr.Occlusion(net).attribute(X, sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), target=T,
                                               baselines=0.25)
    ours = occlusion(net, X, T, baseline=0.25, config=OcclusionConfig(window=(1, 3, 3), strides=(1, 2, 2)))
    torch.testing.assert_close(ours.values, ref.double(), atol=1e-6, rtol=1e-5)  # Captum returns float32 here


def test_kernel_shap_with_captum_samples():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    base = torch.randn(1, 8, dtype=torch.float64)
    for i in range(2):
        ks = captum_attr.KernelShap(mlp)
        original = ks.perturb_func
        drawn = []

        def recording(inp, original=original, drawn=drawn, **kw):
            for s in original(inp, **kw):
                drawn.append(s.clone())
                yield s

        ks.perturb_func = recording
        torch.manual_seed(10 + i)
        ref = ks.attribute(x[i : i + 1], baselines=base, target=1, n_samples=60)
        z = torch.cat(drawn[:60]).double()
        ours = kernel_shap(mlp, x[i : i + 1], 1, baseline=base, samples=z, config=KernelShapConfig(sampling="kernel"))
        torch.testing.assert_close(ours.values, ref.double(), atol=2e-5, rtol=1e-4)
