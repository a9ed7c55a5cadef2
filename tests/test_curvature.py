"""Curvature: Hessian power iteration (spec quadratic, torch.func.hessian), Taylor trace, LCNN layers,
regularisers and the low-curvature recipe."""

import math

import pytest
import torch
from torch import nn

from assay.robustness.curvature import (
    hessian_spectral_norm,
    loss_curvature,
    normalised_curvature,
    taylor_trace,
)
from assay.robustness.lcnn import LowCurvatureCNN, fit_low_curvature
from assay.robustness.lcnn_layers import (
    CentredSoftplus,
    LipschitzBatchNorm,
    conv_operator_norm,
    curvature_penalty,
    spectral_norm_conv,
)
from assay.robustness.regularisers import (
    anti_score_matching_penalty,
    gradient_norm_penalty,
    score_matching_penalty,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, no spinning on shared cores

A = torch.tensor([5.0, -7.0, 1.0], dtype=torch.float64)
LIN = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)


def quadratic(x):  # ½ xᵀ diag(5, −7, 1) x + (1, 2, 2)·x, per example
    return 0.5 * (x * x * A).sum(1) + x @ LIN


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_spec_quadratic_curvature():
    x = torch.zeros(200, 3, dtype=torch.float64)  # 200 independent random starts
    h10 = hessian_spectral_norm(quadratic, x, iters=10, generator=gen())
    torch.testing.assert_close(h10.grad_norm, torch.full((200,), 3.0, dtype=torch.float64))
    c10 = normalised_curvature(h10.hessian_norm, h10.grad_norm)
    assert ((c10 - 7 / 3).abs() < 1e-2).float().mean() > 0.6  # measured 0.735: starts vary
    assert (c10 <= 7 / 3 + 1e-9).all()  # a lower bound
    assert c10.median().item() == pytest.approx(7 / 3, abs=1e-2)
    h60 = hessian_spectral_norm(quadratic, x, iters=60, generator=gen())
    torch.testing.assert_close(h60.hessian_norm, torch.full((200,), 7.0, dtype=torch.float64), atol=1e-5, rtol=0)
    c60 = normalised_curvature(h60.hessian_norm, h60.grad_norm)
    assert c60[0].item() == pytest.approx(2.333332, abs=1e-5)


def test_power_iteration_matches_torch_func_hessian_per_example():
    torch.manual_seed(0)  # test-only: model init
    net = nn.Sequential(nn.Linear(5, 16), nn.Softplus(), nn.Linear(16, 3)).double()
    x = torch.randn(4, 5, generator=gen(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    curv = loss_curvature(net, x, y, iters=200, generator=gen(2))
    for b in range(4):
        def loss_b(z, b=b):
            return nn.functional.cross_entropy(net(z[None]), y[b:b + 1])
        H = torch.func.hessian(loss_b)(x[b])
        top = torch.linalg.eigvalsh(H).abs().max()
        g = torch.func.grad(loss_b)(x[b]).norm()
        assert curv.hessian_norm[b].item() == pytest.approx(top.item(), rel=1e-3)
        assert curv.grad_norm[b].item() == pytest.approx(g.item(), rel=1e-9)


def test_spec_taylor_trace_of_quadratic():
    x = torch.zeros(20_000, 3, dtype=torch.float64)
    tr = taylor_trace(quadratic, x, 1.0, generator=gen())
    assert tr.mean().item() == pytest.approx(-1.0, abs=0.3)  # std of the mean ≈ 0.1


CSP = {  # β: (csp(−2), csp(0), csp(1)), (csp′ at the same points), csp″(0)
    0.1: ((-0.950083, 0, 0.512495), (0.450166, 0.5, 0.524979), 0.025),
    1.0: ((-0.566219, 0, 0.620115), (0.119203, 0.5, 0.731059), 0.25),
    5.0: ((-0.138620, 0, 0.862714), (0.000045, 0.5, 0.993307), 1.25),
    100.0: ((-0.006931, 0, 0.993069), (0.0, 0.5, 1.0), 25.0),
}


@pytest.mark.parametrize("beta", sorted(CSP))
def test_spec_centred_softplus_values(beta):
    vals, slopes, curv0 = CSP[beta]
    csp = CentredSoftplus(beta, offset=0.0).double()
    x = torch.tensor([-2.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    out = csp(x)
    torch.testing.assert_close(out.detach(), torch.tensor(vals, dtype=torch.float64), atol=1e-6, rtol=0)
    (d1,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    torch.testing.assert_close(d1.detach(), torch.tensor(slopes, dtype=torch.float64), atol=1e-6, rtol=0)
    (d2,) = torch.autograd.grad(d1[1], x)
    assert d2[1].item() == pytest.approx(curv0, rel=1e-6)
    assert d2[1].item() == pytest.approx(beta / 4, rel=1e-6)


def test_lipschitz_batchnorm():
    bn = LipschitzBatchNorm(3, lipschitz=0.5).double()
    x = torch.randn(64, 3, 4, 4, generator=gen(), dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1).double()
    for _ in range(30):
        bn(x)
    bn.eval()
    s = torch.sqrt(bn.running_var + bn.eps).min()
    plain = nn.functional.batch_norm(x, bn.running_mean, bn.running_var, eps=bn.eps)
    torch.testing.assert_close(bn(x), plain * s * min(1 / s.item(), 0.5))
    assert bn.lipschitz_bound().item() == pytest.approx(min(1 / s.item(), 0.5))
    slopes = 1 / torch.sqrt(bn.running_var + bn.eps) * s * min(1 / s.item(), 0.5)  # per-channel gain
    assert slopes.max().item() <= bn.lipschitz_bound().item() + 1e-6
    inf_bn = LipschitzBatchNorm(3)  # γ = ∞ starts as plain BatchNorm, no NaN gradients
    out = inf_bn(x.float())
    torch.testing.assert_close(out, nn.functional.batch_norm(x.float(), None, None, training=True))
    out.sum().backward()
    assert inf_bn.log_lipschitz.grad.item() == 0.0


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_operator_norm_matches_svd(stride, padding):
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, bias=False).double()
    shape = (2, 6, 6)
    M = torch.func.jacrev(lambda z: conv(z[None]).flatten())(torch.zeros(shape, dtype=torch.float64))
    exact = torch.linalg.matrix_norm(M.reshape(M.shape[0], -1), ord=2)
    ours, _ = conv_operator_norm(conv.weight, shape, stride=stride, padding=padding, iters=300, generator=gen())
    assert ours.item() == pytest.approx(exact.item(), rel=1e-4)
    spectral_norm_conv(conv, shape, n_init=300, generator=gen())
    conv.eval()
    M2 = torch.func.jacrev(lambda z: conv(z[None]).flatten())(torch.zeros(shape, dtype=torch.float64))
    assert torch.linalg.matrix_norm(M2.reshape(M2.shape[0], -1), ord=2).item() == pytest.approx(1.0, rel=1e-4)


def test_regularisers_against_closed_forms():
    # logits (q(x), 0) with q the spec quadratic: ∇q = Ax + b, tr ∇²q = −1
    def model(x):
        q = quadratic(x)
        return torch.stack([q, torch.zeros_like(q)], 1)

    x = torch.randn(3, 3, generator=gen(), dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    g = x * A + LIN
    assert gradient_norm_penalty(model, x, y).item() == pytest.approx(0.5 * g.pow(2).sum().item() / 3, rel=1e-9)
    xs = x.repeat(4000, 1)
    ys = y.repeat(4000)
    sm = score_matching_penalty(model, xs, ys, sigma=1.0, tau=0.0, generator=gen())
    assert sm.item() == pytest.approx(-1.0 + 0.5 * g.pow(2).sum(1).mean().item(), abs=0.5)
    anti = anti_score_matching_penalty(model, xs, ys, sigma=1.0, generator=gen())
    assert anti.item() == pytest.approx(1.0, abs=0.5)


def test_regulariser_gradients_reach_parameters():
    torch.manual_seed(0)  # test-only: model init
    net = nn.Sequential(nn.Linear(4, 8), CentredSoftplus(5.0), nn.Linear(8, 3))
    x = torch.randn(6, 4, generator=gen())
    y = torch.randint(0, 3, (6,), generator=gen())
    for fn in (gradient_norm_penalty, score_matching_penalty, anti_score_matching_penalty):
        net.zero_grad()
        fn(net, x, y).backward()
        assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    assert curvature_penalty(net).item() == pytest.approx(1e-2 * (5.0 + 1e-3), rel=1e-5)


def test_low_curvature_recipe_lowers_gradient_norm_and_curvature():
    # planted rule: class 1 iff the top half is brighter than the bottom half; held-out accuracy must
    # stay (a γ = 1 BatchNorm bound or λ_g = 1e-2 lowers curvature only by flattening to chance, 0.49)
    g = gen(3)
    x, xt = torch.rand(160, 1, 8, 8, generator=g), torch.rand(200, 1, 8, 8, generator=g)

    def rule(z):
        return (z[:, 0, :4].mean((1, 2)) > z[:, 0, 4:].mean((1, 2))).long()

    y, yt = rule(x), rule(xt)
    plain = fit_low_curvature(LowCurvatureCNN(1, 2, (4,), 8, lipschitz=math.inf, spectral_fc=False), x, y,
                              epochs=8, batch_size=32, lr=1e-2, lambda_beta=0, lambda_gamma=0, lambda_grad=0)
    smooth = fit_low_curvature(LowCurvatureCNN(1, 2, (4,), 8), x, y, epochs=8, batch_size=32, lr=1e-2,
                               lambda_beta=1.0)
    cp = loss_curvature(plain, x[:32], y[:32], iters=10, generator=gen())
    cs = loss_curvature(smooth, x[:32], y[:32], iters=10, generator=gen())
    assert cs.grad_norm.mean() < cp.grad_norm.mean()
    assert cs.hessian_norm.mean() < cp.hessian_norm.mean()
    assert cs.curvature.mean() < cp.curvature.mean()  # measured 1.30 vs 1.60
    with torch.no_grad():
        acc_plain = (plain(xt).argmax(1) == yt).float().mean().item()
        acc_smooth = (smooth(xt).argmax(1) == yt).float().mean().item()
    assert acc_plain > 0.75 and acc_smooth > 0.75  # measured 0.83 and 0.875; chance is 0.5
    betas = [m.beta.item() for m in smooth.modules() if isinstance(m, CentredSoftplus)]
    assert max(betas) < 5.0  # the β penalty lowered the activation curvature bound


def test_bad_input():
    with pytest.raises(ValueError, match="one scalar per example"):
        hessian_spectral_norm(lambda z: z, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="sigma must be"):
        taylor_trace(quadratic, torch.zeros(1, 3, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        loss_curvature(lambda z: z.sum(1, keepdim=True), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="beta must be"):
        CentredSoftplus(0.0)


def test_bad_input_classifier_shape_and_sigma():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"logits of shape \[batch, n_classes\]"):
        loss_curvature(lambda z: z[:, None, :].repeat(1, 4, 1), x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="must return a tensor"):
        loss_curvature(lambda z: (z,), x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="sigma must be"):
        taylor_trace(quadratic, torch.zeros(1, 3, dtype=torch.float64), -1.0)
