"""Engine methods against closed forms (spec §1 check values), batching and determinism contracts."""

import pytest
import torch

from assay.attribution import (
    ENGINE_METHODS,
    CLimeConfig,
    IntegratedGradientsConfig,
    KernelShapConfig,
    LimeConfig,
    OcclusionConfig,
    SmoothGradConfig,
    attribute,
    integrated_gradients,
    kernel_shap,
    lime,
    occlusion,
    smoothgrad,
)
from assay.attribution.neighbourhoods import grid_feature_mask, quadrature, shapley_kernel_weight

W = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
X = torch.tensor([[2.0, 1.0, -1.0]], dtype=torch.float64)
GRADIENT_LIKE = {"gradient", "smoothgrad", "c_lime"}


def linear():
    lin = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight[0] = W
        lin.weight[1] = torch.tensor([0.3, 0.1, -0.7], dtype=torch.float64)
        lin.bias[:] = torch.tensor([0.5, -1.0], dtype=torch.float64)
    return lin


@pytest.mark.parametrize("name", list(ENGINE_METHODS))
def test_linear_model_check_values(name):
    a = attribute(linear(), X, 0, config=name)
    expected = W if name in GRADIENT_LIKE else W * X[0]  # (1,-2,3) or w⊙x = (2,-2,-3)
    torch.testing.assert_close(a.values[0], expected, atol=1e-9, rtol=0)
    assert a.values.shape == X.shape and a.target.tolist() == [0]


def test_unweighted_lime_bias_and_kernel_shap_weights():
    # unweighted least squares on 200 Bernoulli masks: (2,-2,-3) and bias 0.5 exactly
    a = lime(linear(), X, 0, config=LimeConfig(n_samples=200, kernel_width=1e6))
    torch.testing.assert_close(a.values[0], W * X[0], atol=1e-9, rtol=0)
    assert abs(float(a.intercept[0]) - 0.5) < 1e-9
    z = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(shapley_kernel_weight(z), torch.tensor([0.25, 0.125, 0.25, 1e6], dtype=torch.float64))


@pytest.mark.parametrize("rule", ["gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"])
def test_quadratures_integrate_and_ig_completeness(rule):
    a, q = quadrature(rule, 16)
    assert abs(float(q.sum()) - 1) < 1e-12
    exact = 1 / 3  # ∫ α² dα
    tol = 1e-12 if rule == "gauss_legendre" else 0.07
    assert abs(float((q * a**2).sum()) - exact) < tol
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    base = torch.randn(5, dtype=torch.float64)
    res = integrated_gradients(net, x, config=IntegratedGradientsConfig(steps=64, quadrature=rule), baseline=base)
    # completeness: Σ IG = f(x) − f(b) up to quadrature error; reported gap matches a direct computation
    direct = res.values.sum(1) - (res.output - res.baseline_output)
    torch.testing.assert_close(res.completeness_gap, direct)
    assert res.completeness_gap.abs().max() < (1e-8 if rule == "gauss_legendre" else 0.05)


def _net():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 4)).double().eval()


@pytest.mark.parametrize("name", list(ENGINE_METHODS))
def test_batch_equals_per_example_and_seeded(name):
    net = _net()
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = ENGINE_METHODS[name].config(memory_budget_mb=0.001)  # forces many tiny chunks
    full = attribute(net, x, config=cfg)
    again = attribute(net, x, config=cfg)
    torch.testing.assert_close(full.values, again.values, rtol=0, atol=1e-12)  # LAPACK may differ in the last bit
    big = attribute(net, x, config=ENGINE_METHODS[name].config())
    torch.testing.assert_close(full.values, big.values, rtol=1e-9, atol=1e-9)
    for i in range(3):
        one = attribute(net, x[i : i + 1], full.target[i : i + 1], config=cfg)
        torch.testing.assert_close(one.values[0], full.values[i], rtol=1e-7, atol=1e-9)


def test_several_targets_match_single_target_calls():
    net = _net()
    x = torch.randn(2, 6, dtype=torch.float64)
    t = torch.tensor([[0, 3], [2, 1]])
    for name in ("integrated_gradients", "kernel_shap", "occlusion", "smoothgrad"):
        multi = attribute(net, x, t, config=name)
        assert multi.values.shape == (2, 2, 6) and multi.output.shape == (2, 2)
        for k in range(2):
            one = attribute(net, x, t[:, k], config=name)
            torch.testing.assert_close(multi.values[:, k], one.values)


def test_smoothgrad_is_mean_gradient_over_explicit_noise():
    net = _net()
    x = torch.randn(2, 6, dtype=torch.float64)
    noise = 0.3 * torch.randn(2, 5, 6, dtype=torch.float64)
    res = smoothgrad(net, x, 1, noise=noise)
    ref = torch.zeros_like(x)
    for s in range(5):
        xi = (x + noise[:, s]).requires_grad_(True)
        ref += torch.autograd.grad(net(xi)[:, 1].sum(), xi)[0] / 5
    torch.testing.assert_close(res.values, ref)
    # relative noise: σ scales with the range of each example
    r1 = smoothgrad(net, x, 1, config=SmoothGradConfig(n_samples=4, noise_level=0.0))
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(r1.values, torch.autograd.grad(net(xg)[:, 1].sum(), xg)[0])


def test_occlusion_windows_match_naive_loop():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 5 * 5, 3), torch.nn.Tanh()).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    cfg = OcclusionConfig(window=(2, 2, 3), strides=(1, 2, 1))
    res = occlusion(net, x, 1, config=cfg, baseline=0.5)
    ref = torch.zeros_like(x)
    cnt = torch.zeros_like(x)
    f0 = net(x)[:, 1]
    for i in range(0, 5, 2):  # ⌈(5-2)/2⌉ + 1 = 3 positions, the last clipped at the border
        for j in range(0, 3):
            xo = x.clone()
            xo[:, :, i : i + 2, j : j + 3] = 0.5
            d = f0 - net(xo)[:, 1]
            ref[:, :, i : i + 2, j : j + 3] += d[:, None, None, None]
            cnt[:, :, i : i + 2, j : j + 3] += 1
    torch.testing.assert_close(res.values, ref / cnt.clamp_min(1))


def test_feature_groups_and_exact_shapley_for_small_d():
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x = torch.randn(1, 4, dtype=torch.float64)
    # exact Shapley values by enumeration of all 16 coalitions
    import itertools
    import math

    f = lambda z: net(x * z)[0, 0]  # noqa: E731
    phi = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        rest = [j for j in range(4) if j != i]
        for r in range(4):
            for sub in itertools.combinations(rest, r):
                z = torch.zeros(4, dtype=torch.float64)
                z[list(sub)] = 1
                zi = z.clone()
                zi[i] = 1
                phi[i] += math.factorial(r) * math.factorial(3 - r) / math.factorial(4) * (f(zi) - f(z)).detach()
    allz = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float64)
    res = kernel_shap(net, x, 0, config=KernelShapConfig(sampling="bernoulli"), samples=allz)
    torch.testing.assert_close(res.values[0], phi, atol=1e-5, rtol=0)
    # grouped features: two groups of two; each element gets its group's coefficient
    fm = torch.tensor([0, 0, 1, 1])
    g = lime(net, x, 0, config=LimeConfig(n_samples=50), feature_mask=fm)
    assert g.values[0, 0] == g.values[0, 1] and g.values[0, 2] == g.values[0, 3]
    assert grid_feature_mask((1, 4, 4), (1, 2, 2)).unique().numel() == 4


def test_c_lime_recovers_gradient_of_smooth_model_for_small_sigma():
    net = _net()
    x = torch.randn(2, 6, dtype=torch.float64)
    res = attribute(net, x, 0, config=CLimeConfig(sigma=1e-4, n_samples=400))
    grad = attribute(net, x, 0, config="gradient")
    torch.testing.assert_close(res.values, grad.values, atol=1e-3, rtol=0)


def test_bad_input_errors():
    net = _net()
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="out of range"):
        attribute(net, x, 4, config="gradient")
    with pytest.raises(ValueError, match="out of range"):
        attribute(net, x, torch.tensor([0, -1]), config="kernel_shap")
    with pytest.raises(ValueError, match="baseline of shape"):
        attribute(net, x, 0, config="integrated_gradients", baseline=torch.zeros(5))
    with pytest.raises(TypeError, match="floating-point"):
        attribute(lambda t: t.double(), torch.ones(2, 6, dtype=torch.long), 0, config="gradient")
    with pytest.raises(RuntimeError, match="no gradient path"):
        attribute(lambda t: torch.ones(t.shape[0], 2, dtype=t.dtype), x, 0, config="gradient")
    bn = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)).double()
    with pytest.raises(ValueError, match="model.eval"):
        attribute(bn, x, 0, config="gradient")
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(net, x, 0, config="shap")
    with pytest.raises(ValueError, match="samples must be"):
        kernel_shap(net, x, 0, samples=torch.ones(10, 3))
    with pytest.raises(ValueError, match="unknown quadrature"):
        IntegratedGradientsConfig(quadrature="simpson")
