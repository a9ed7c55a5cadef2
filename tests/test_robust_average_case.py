"""Average-case robustness estimators: spec check values, scipy's MVN CDF, Monte Carlo, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from assay.config import ConfigError
from assay.robustness.average_case import (
    AverageCaseConfig,
    estimate,
    margins,
    mmse,
    mmse_mvs,
    monte_carlo,
    smoothed_margins,
    softmax_confidence,
    taylor,
    taylor_mvs,
)
from assay.robustness.mvn import bvn_cdf, mvn_cdf

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, no spinning on shared cores

W3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
X3 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)


def lin3(x):
    return x @ W3.T


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_spec_three_class_linear_check_values():
    assert taylor(lin3, X3, 0.5).item() == pytest.approx(0.754492, abs=1e-4)
    assert taylor_mvs(lin3, X3, 0.5).item() == pytest.approx(0.625021, abs=1e-6)
    assert softmax_confidence(lin3, X3).item() == pytest.approx(0.592201, abs=1e-6)
    # for a linear model the MMSE linearisation is the Taylor one (antithetic pairs make it exact)
    assert mmse(lin3, X3, 0.5, generator=gen()).item() == pytest.approx(0.754492, abs=1e-4)
    assert mmse_mvs(lin3, X3, 0.5, generator=gen()).item() == pytest.approx(0.625021, abs=1e-6)


def test_spec_margins_and_monte_carlo_agree_with_taylor():
    m = margins(lin3, X3)
    assert m.target.tolist() == [0]
    torch.testing.assert_close(m.g, torch.tensor([[0.5, 2.5]], dtype=torch.float64))
    mc = monte_carlo(lin3, X3, 0.5, n_samples=400_000, chunk=100_000, generator=gen(1))
    assert mc.p.item() == pytest.approx(0.754492, abs=0.004)
    assert mc.ci_low.item() <= 0.754492 <= mc.ci_high.item()


def test_spec_binary_linear_is_phi_of_two():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)

    def model(x):  # one logit s = w·x as two-class logits (−s/2, s/2): margin s
        s = x @ w
        return torch.stack([-s / 2, s / 2], 1)

    x = torch.tensor([[0.2, 0.1]], dtype=torch.float64)
    # Σ carries the spec's 1e-5 jitter: Φ(2/√(1 + 1e-5)) differs from Φ(2) by ~5e-7
    assert taylor(model, x, 0.1).item() == pytest.approx(norm.cdf(2.0), abs=1e-6)
    assert norm.cdf(2.0) == pytest.approx(0.977250, abs=1e-6)
    assert mmse(model, x, 0.1, generator=gen()).item() == pytest.approx(0.977250, abs=1e-6)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_mvn_cdf_matches_scipy(m):
    g = gen(m)
    A = torch.randn(4, m, m + 2, generator=g, dtype=torch.float64)
    S = A @ A.transpose(1, 2) / (m + 2)
    b = torch.randn(4, m, generator=g, dtype=torch.float64) + 0.5
    ours = mvn_cdf(b, S, generator=g)
    ref = np.array([multivariate_normal.cdf(b[i].numpy(), mean=np.zeros(m), cov=S[i].numpy(),
                                            abseps=1e-6, releps=1e-6, maxpts=200_000 * m) for i in range(4)])
    np.testing.assert_allclose(ours.p.numpy(), ref, atol=3e-4)


def test_bvn_cdf_matches_scipy_across_correlations():
    r = torch.tensor([-0.999, -0.6, 0.0, 0.4, 0.95, 0.999], dtype=torch.float64)
    for h, k in [(0.3, 0.5), (-1.0, 2.0), (-2.0, -2.5)]:
        ours = bvn_cdf(torch.tensor(h), torch.tensor(k), r).numpy()
        ref = [multivariate_normal.cdf([h, k], mean=[0, 0], cov=[[1, c], [c, 1]]) for c in r.tolist()]
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_mvn_cdf_infinite_limits():
    S = torch.eye(3, dtype=torch.float64)[None]
    b = torch.tensor([[math.inf, 0.0, math.inf]], dtype=torch.float64)
    assert mvn_cdf(b, S, generator=gen()).p.item() == pytest.approx(0.5, abs=1e-6)


def small_mlp(d=6, c=4, seed=0):
    torch.manual_seed(seed)  # test-only: fixed weights for a tiny model
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, c)).double()


def test_margins_match_torch_func_jacobian():
    model = small_mlp()
    x = torch.randn(5, 6, generator=gen(), dtype=torch.float64)
    m = margins(model, x)
    J = torch.func.vmap(torch.func.jacrev(lambda xi: model(xi[None])[0]))(x)  # [B, C, d]
    logits = model(x).detach()
    for b in range(5):
        t = int(logits[b].argmax())
        others = [i for i in range(4) if i != t]
        torch.testing.assert_close(m.g[b], logits[b, t] - logits[b, others])
        torch.testing.assert_close(m.grad[b], J[b, t][None] - J[b, others])


def test_taylor_on_nonlinear_model_tracks_monte_carlo_for_small_sigma():
    model = small_mlp()
    x = torch.randn(6, 6, generator=gen(2), dtype=torch.float64)
    sigma = 0.02 * float(margins(model, x).g.abs().min()) / float(margins(model, x).grad.norm(dim=2).max()) + 0.05
    t = taylor(model, x, sigma, generator=gen())
    mc = monte_carlo(model, x, sigma, n_samples=20_000, chunk=5000, generator=gen(3))
    np.testing.assert_allclose(t.numpy(), mc.p.numpy(), atol=0.03)


def test_batch_equals_per_example():
    model = small_mlp()
    x = torch.randn(4, 6, generator=gen(5), dtype=torch.float64)
    full = taylor(model, x, 0.3, generator=gen())
    single = torch.cat([taylor(model, x[i:i + 1], 0.3, generator=gen()) for i in range(4)])
    torch.testing.assert_close(full, single, atol=2e-4, rtol=0)


def test_monte_carlo_early_stop_reaches_target_error():
    mc = monte_carlo(lin3, X3.repeat(3, 1), 0.5, n_samples=100_000, chunk=500, target_error=0.01,
                     generator=gen())
    assert (mc.n_samples < 100_000).all()
    assert ((mc.ci_high - mc.ci_low) / 2 <= 0.01).all()
    assert ((mc.ci_low <= 0.754492) | (mc.ci_high >= 0.754492)).all()


def test_uniform_noise_monte_carlo_matches_gaussian_moment_approximation():
    d = 400
    w = torch.randn(3, d, generator=gen(7), dtype=torch.float64)
    x = torch.randn(2, d, generator=gen(8), dtype=torch.float64) * 0.02

    def model(z):
        return z @ w.T

    sigma = 0.05
    mc = monte_carlo(model, x, sigma, n_samples=40_000, chunk=20_000, noise="uniform", generator=gen(9))
    t = taylor(model, x, sigma)
    np.testing.assert_allclose(mc.p.numpy(), t.numpy(), atol=0.02)
    # uniform noise has the requested standard deviation
    m = smoothed_margins(model, x, sigma, n_samples=4, noise="uniform", generator=gen())
    torch.testing.assert_close(m.g, margins(model, x).g)


def test_estimate_dispatch_and_config():
    for est in ("taylor", "mmse", "taylor_mvs", "mmse_mvs", "softmax", "mc"):
        cfg = AverageCaseConfig(estimator=est, sigma=0.5, n_samples=2000 if est == "mc" else None)
        p = estimate(lin3, X3, cfg)
        assert p.shape == (1,) and 0 <= p.item() <= 1
    with pytest.raises(ConfigError, match="sigma"):
        AverageCaseConfig(sigma=0.0)
    with pytest.raises(ConfigError, match="estimator"):
        AverageCaseConfig(estimator="nope")


def test_bad_input_errors():
    with pytest.raises(ValueError, match="sigma must be"):
        taylor(lin3, X3, 0.0)
    with pytest.raises(ValueError, match="sigma must be"):
        monte_carlo(lin3, X3, -1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        taylor(lambda x: x[:, :1], X3, 0.5)
    with pytest.raises(ValueError, match=r"logits of shape \[batch, n_classes\]"):
        taylor(lambda x: x[:, None, :].repeat(1, 3, 1), X3, 0.5)
    with pytest.raises(TypeError, match="must return a tensor"):
        softmax_confidence(lambda x: {"logits": x}, X3)
    with pytest.raises(ValueError, match="noise must be"):
        monte_carlo(lin3, X3, 0.5, noise="laplace")
    with pytest.raises(ValueError, match="target class ids"):
        taylor(lin3, X3, 0.5, target=torch.tensor([7]))


def test_smoothed_margins_match_a_naive_per_copy_average_for_any_chunk():
    """Reference: draw the same noise, take each noisy copy's margins and gradients with torch.func.jacrev
    one copy at a time, and average; the batched Jacobian calls must agree for every chunk size."""
    model = small_mlp()
    x = torch.randn(3, 6, generator=gen(5), dtype=torch.float64)
    target = model(x).argmax(1)
    g = gen(11)
    eps = [torch.randn(x.shape, generator=g, dtype=x.dtype) * 0.2 for _ in range(3)]
    gs, grads = [], []
    for e in eps:
        for xe in (x + e, x - e):
            for i in range(3):
                f = model(xe[i:i + 1])[0]
                J = torch.func.jacrev(lambda z: model(z[None])[0])(xe[i])  # [C, d]
                others = [c for c in range(f.shape[0]) if c != target[i]]
                gs.append(f[target[i]] - f[others])
                grads.append(J[target[i]] - J[others])
    ref_g = torch.stack(gs).reshape(6, 3, -1).mean(0)
    ref_grad = torch.stack(grads).reshape(6, 3, *grads[0].shape).mean(0)
    for chunk in (1, 6, 12, 512):
        m = smoothed_margins(model, x, 0.2, n_samples=6, generator=gen(11), chunk=chunk)
        torch.testing.assert_close(m.g, ref_g.detach())
        torch.testing.assert_close(m.grad, ref_grad.detach())


@pytest.mark.parametrize("est", ["mc", "taylor", "mmse", "taylor_mvs", "mmse_mvs", "softmax"])
def test_every_estimator_refuses_a_non_classifier_and_bad_sigma(est):
    cfg = AverageCaseConfig(estimator=est, sigma=0.5, n_samples=100 if est == "mc" else None)
    with pytest.raises(ValueError, match="at least 2 classes"):
        estimate(lambda x: x[:, :1], X3, cfg)  # a regression head
    with pytest.raises(ValueError, match=r"logits of shape \[batch, n_classes\]"):
        estimate(lambda x: x[:, None, :].repeat(1, 3, 1), X3, cfg)  # sequence logits [B, T, C]
    with pytest.raises(ConfigError, match="sigma"):
        AverageCaseConfig(estimator=est, sigma=-0.1)
    with pytest.raises(ConfigError, match="sigma"):
        AverageCaseConfig(estimator=est, sigma=float("nan"))


class Counting(torch.nn.Module):
    """Wraps a model and records the rows of every forward call (with or without grad)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.model(x)


def test_monte_carlo_is_the_same_for_every_chunk_and_budget_and_the_budget_sizes_the_passes():
    """Without early stop, the copies drawn do not depend on batching; a tiny budget makes more, smaller passes."""
    model = small_mlp()
    x = torch.randn(5, 6, generator=gen(5), dtype=torch.float64)
    results, calls = [], []
    for chunk, budget in ((None, 128.0), (None, 0.01), (256, 128.0), (700, 0.05), (3000, 1.0)):
        wrapped = Counting(model)
        mc = monte_carlo(wrapped, x, 0.4, n_samples=3000, chunk=chunk, memory_budget_mb=budget, generator=gen(2))
        results.append(mc)
        calls.append([r for r, _ in wrapped.calls[1:]])  # after the clean (measuring) pass
        assert sum(calls[-1]) == 5 * 3000
    for mc in results[1:]:
        assert torch.equal(mc.p, results[0].p) and torch.equal(mc.n_samples, results[0].n_samples)
    assert len(calls[1]) > 10 * len(calls[0]) and max(calls[1]) < max(calls[0])
    # independent check: the estimate is a binomial proportion around the long-run value
    ref = monte_carlo(model, x, 0.4, n_samples=60_000, generator=gen(9)).p
    assert (results[0].p - ref).abs().max() < 4 * math.sqrt(0.25 / 3000)
    # estimate() passes the budget and the chunk through
    for budget, n_calls in ((128.0, len(calls[0])), (0.01, len(calls[1]))):
        wrapped = Counting(model)
        p = estimate(wrapped, x, AverageCaseConfig(estimator="mc", sigma=0.4, n_samples=3000,
                                                   memory_budget_mb=budget, seed=2))
        assert len(wrapped.calls) - 1 == n_calls
        assert torch.equal(p, results[0].p)
    wrapped = Counting(model)
    estimate(wrapped, x, AverageCaseConfig(estimator="mc", sigma=0.4, n_samples=3000, chunk=256, seed=2))
    assert len(wrapped.calls) - 1 == 3000 // 256 + 1  # one pass per round of 256 copies of all 5 examples
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        AverageCaseConfig(memory_budget_mb=0)


def test_mmse_chunk_reaches_the_jacobian_calls_and_does_not_change_the_result():
    model = small_mlp()
    x = torch.randn(4, 6, generator=gen(5), dtype=torch.float64)
    out = {}
    for chunk in (8, 64, 4096):
        wrapped = Counting(model)
        out[chunk] = mmse(wrapped, x, 0.3, n_samples=256, generator=gen(4), chunk=chunk)
        grad_calls = [r for r, g in wrapped.calls if g]
        assert sum(grad_calls) == 4 * 256 and max(grad_calls) <= max(chunk, 8)
        assert len(grad_calls) == -(-128 // max(1, chunk // 8))  # 128 antithetic pairs, chunk // (2B) per call
        wrapped = Counting(model)
        estimate(wrapped, x, AverageCaseConfig(estimator="mmse", sigma=0.3, n_samples=256, chunk=chunk))
        assert len([r for r, g in wrapped.calls if g]) == len(grad_calls)
    torch.testing.assert_close(out[8], out[4096], atol=2e-4, rtol=0)  # QMC CDF error only
    torch.testing.assert_close(out[64], out[4096], atol=2e-4, rtol=0)


def test_taylor_jitter_and_cdf_precision_reach_the_cdf():
    """Closed form: for a linear model p = Φ_{Σ+jI}(z) with Σ = UUᵀ; scipy's MVN CDF is the reference."""
    m = margins(lin3, X3)
    z = (m.g / (0.5 * m.grad.norm(dim=2)))[0].numpy()
    U = (m.grad / m.grad.norm(dim=2, keepdim=True))[0].numpy()
    for jitter in (1e-5, 0.5):
        ref = multivariate_normal(mean=np.zeros(2), cov=U @ U.T + jitter * np.eye(2)).cdf(z)
        got = taylor(lin3, X3, 0.5, jitter=jitter, abseps=1e-6, generator=gen())
        assert got.item() == pytest.approx(ref, abs=1e-5)
        cfg = AverageCaseConfig(estimator="taylor", sigma=0.5, jitter=jitter, abseps=1e-6)
        assert estimate(lin3, X3, cfg).item() == pytest.approx(ref, abs=1e-5)
        cfg = AverageCaseConfig(estimator="mmse", sigma=0.5, jitter=jitter, abseps=1e-6)
        assert estimate(lin3, X3, cfg).item() == pytest.approx(ref, abs=1e-5)  # linear: MMSE = Taylor
    assert abs(ref - 0.754492) > 0.01  # the large jitter is visible
