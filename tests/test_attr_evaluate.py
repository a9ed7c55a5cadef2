"""Attribution metrics: hand-computed cases, closed forms, and parity with Quantus 0.6."""

import numpy as np
import pytest
import torch
from peer_import import peer
from torch import nn

from assay.evaluate.attribution_agreement import (
    agreement,
    importance_map,
    pointing_game,
    rank_correlation,
    relevance_mass,
    top_k_precision,
)
from assay.evaluate.attribution_sanity import logit_shift_test, model_randomisation, ssim
from assay.evaluate.faithfulness import (
    faithfulness_correlation,
    infidelity,
    perturbation_curve,
    prediction_gap,
)
from assay.evaluate.sensitivity import max_sensitivity


def test_openxai_agreement_check_values():
    e = torch.tensor([[0.9, -0.5, 0.1, 0.0]])
    g = torch.tensor([[1.0, 0.2, -0.6, 0.05]])
    r = agreement(e, g, 2)
    for got, want in zip(r, (0.5, 0.5, 0.5, 0.5, 0.8, 0.833333)):
        assert abs(float(got[0]) - want) < 1e-6
    same = agreement(g, g, 3)
    assert all(float(v[0]) == pytest.approx(1.0) for v in same)
    with pytest.raises(ValueError, match="k must lie"):
        agreement(e, g, 5)


def test_rank_correlation_matches_scipy_and_localisation():
    from scipy.stats import spearmanr

    a = torch.tensor([[1.0, -2.0, 2.0, 5.0, 0.0], [3.0, 1.0, -4.0, 1.0, 5.0]])
    b = torch.tensor([[2.0, 1.0, 3.0, -4.0, 0.5], [1.0, 2.0, 3.0, 4.0, -5.0]])
    rc = agreement(a, b, 2).rc
    for i in range(2):  # RC is the Spearman correlation of |e| and |g|, ties averaged
        assert float(rc[i]) == pytest.approx(spearmanr(a[i].abs(), b[i].abs()).statistic)
    amap = torch.zeros(1, 4, 4)
    amap[0, 1, 1] = 3.0
    amap[0, 3, 3] = 1.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    mass, area = relevance_mass(amap, mask)
    assert float(mass[0]) == pytest.approx(0.75) and float(area[0]) == pytest.approx(0.25)
    assert bool(pointing_game(amap, mask)[0])


def test_top_k_precision_rank_correlation_and_importance_against_naive_loops():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(3)
    phi = torch.randn(4, 3, 6, 6, generator=g)
    mask = torch.rand(4, 6, 6, generator=g) < 0.3
    imp = importance_map(phi)
    assert torch.equal(imp, phi.abs().sum(1)) and torch.equal(importance_map(phi[:, 0]), phi[:, 0].abs())
    for k in (1, 5, 36):
        got = top_k_precision(imp, mask, k)
        torch.testing.assert_close(top_k_precision(phi, mask, k), got)  # images: channels summed as |φ|
        for b in range(4):  # naive: walk the pixels in decreasing importance, count the first k in the mask
            order = sorted(range(36), key=lambda i: -float(imp[b].flatten()[i]))[:k]
            assert float(got[b]) == pytest.approx(sum(bool(mask[b].flatten()[i]) for i in order) / k)
    # k = all features: the mask's area share, the chance level
    torch.testing.assert_close(top_k_precision(imp, mask, 36), mask.flatten(1).double().mean(1))
    rc = rank_correlation(imp, mask)
    for b in range(4):
        assert float(rc[b]) == pytest.approx(spearmanr(imp[b].flatten(), mask[b].flatten().double()).statistic)
    torch.testing.assert_close(agreement(imp, mask.double(), 3).rc, rc)
    with pytest.raises(ValueError, match="k must lie"):
        top_k_precision(imp, mask, 37)
    with pytest.raises(ValueError, match="does not match mask"):
        top_k_precision(imp[:, :4], mask, 2)


def _linear():
    lin = nn.Linear(4, 3).double()
    torch.manual_seed(0)
    return lin


def test_linear_closed_forms():
    lin = _linear()
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0, 1])
    w = lin.weight[t].detach()
    # infidelity of φ = w on a linear model is exactly 0 for any perturbation
    assert infidelity(lin, x, w, t).abs().max() < 1e-20
    assert infidelity(lin, x, 2 * w, t).min() > 1e-4
    assert infidelity(lin, x, 2 * w, t, normalize=True).abs().max() < 1e-20
    # deletion on logits of a linear model in attribution order: decreases by w_i x_i per step, exactly
    phi = w * x
    c = perturbation_curve(lin, x, phi, t, output="logit", features_per_step=1)
    order = phi.argsort(dim=1, descending=True)
    expected = lin(x).gather(1, t[:, None]) - torch.cumsum(phi.gather(1, order), 1)
    torch.testing.assert_close(c.scores[:, 1:], expected.detach())
    assert c.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    # whether the prediction survives each step: the argmax of the model on the same rows
    logits = torch.stack([lin(torch.where(torch.argsort(order, 1) < k, 0.0, x)) for k in range(5)], 1)
    assert torch.equal(c.correct, logits.argmax(-1) == t[:, None])
    # explicit fractions give the same points of the curve, each one a model call
    fr = perturbation_curve(lin, x, phi, t, output="logit", fractions=[0.25, 0.75, 1.0])
    torch.testing.assert_close(fr.scores, c.scores[:, [1, 3, 4]])
    assert torch.equal(fr.correct, c.correct[:, [1, 3, 4]]) and fr.fractions.tolist() == [0.25, 0.75, 1.0]
    ins = perturbation_curve(lin, x, phi, t, output="logit", mode="insertion", features_per_step=1)
    torch.testing.assert_close(ins.scores[:, -1], c.scores[:, 0])
    # insertion from the zero baseline: starts at the bias and adds w_i x_i in attribution order
    bias = lin.bias[t].detach()[:, None]
    torch.testing.assert_close(ins.scores, torch.cat([bias, bias + torch.cumsum(phi.gather(1, order), 1)], 1))
    # faithfulness correlation of w⊙x on a linear model (zero baseline) is exactly 1
    assert (faithfulness_correlation(lin, x, phi, t, subset_size=2, n_runs=20, output="logit") - 1).abs().max() < 1e-9
    # PGU with no unimportant features is 0; PGI of noise on a linear logit is E|w·ε| > 0
    assert prediction_gap(lin, x, phi, t, k=4, mode="unimportant", output="logit").abs().max() == 0
    assert prediction_gap(lin, x, phi, t, k=2, output="logit").min() > 0
    # max-sensitivity of a constant explanation is 0; of φ(x) = x it is the largest perturbation norm
    d = torch.full((5, 3, 4), 0.01, dtype=torch.float64)
    assert max_sensitivity(lambda z, tt: torch.ones_like(z), x, t, perturbations=d).max() == 0
    assert float(max_sensitivity(lambda z, tt: z, x, t, perturbations=d)[0]) == pytest.approx(0.02)


def _gradient(model, x, t):
    xg = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)[0]


def test_logit_shift_and_randomisation():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    t = net(x).argmax(1)
    r = logit_shift_test(net, _gradient, x, t)
    assert r.same_prediction
    assert r.change_log_softmax.max() < 1e-10 and r.change_logit.min() > 0.1
    m = model_randomisation(net, _gradient, x, t, layers=["4", "2", "0"])
    assert m.spearman.shape == (3, 4) and m.layers == ("4", "2", "0")
    assert m.spearman_abs[-1].mean() < 0.9  # gradients depend on the weights
    const = model_randomisation(net, lambda mm, z, tt: z, x, t, layers=["4"])  # input-only "explanation"
    assert torch.allclose(const.spearman, torch.ones(1, 4, dtype=torch.float64))
    assert float(ssim(x, x)[0]) == pytest.approx(1.0)


def _quantus_cnn():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_pixel_flipping_matches_quantus():
    quantus = peer("quantus")
    net = _quantus_cnn()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y = net(x).argmax(1)
    a = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    metric = quantus.PixelFlipping(features_in_step=3, normalise=False, disable_warnings=True,
                                   perturb_baseline="black")
    ref = np.array(metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu",
                          softmax=True, channel_first=True))
    black = x.flatten(1).min(1).values.view(-1, 1, 1, 1)  # Quantus's "black" is each image's minimum
    ours = perturbation_curve(net, x, a, y, features_per_step=3, output="probability", baseline=black)
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_faithfulness_correlation_matches_quantus():
    quantus = peer("quantus")
    net = _quantus_cnn()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    y = net(x).argmax(1)
    a = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    runs, size = 12, 5
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, normalise=False, disable_warnings=True,
                                             perturb_baseline="black", return_aggregate=False)
    drawn = []
    choice = np.random.choice

    def recording_choice(*args, **kw):  # record the subsets Quantus draws (run-major, then example)
        out = choice(*args, **kw)
        drawn.append(out)
        return out

    np.random.seed(7)
    np.random.choice = recording_choice
    try:
        ref = np.array(metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu",
                              softmax=True, channel_first=True))
    finally:
        np.random.choice = choice
    subsets = np.stack(drawn).reshape(runs, 3, size).transpose(1, 0, 2)
    ours = faithfulness_correlation(net, x, a, y, subsets=torch.from_numpy(subsets), output="probability",
                                    baseline=x.flatten(1).min(1).values)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_metrics_do_not_depend_on_the_chunk():
    """The automatic chunk (sized from the memory budget) and tiny explicit chunks give the same values."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    phi = torch.randn(5, 6, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0, 1])
    g = torch.Generator()
    for fn in (lambda **kw: perturbation_curve(net, x, phi, t, features_per_step=2, **kw).scores,
               lambda **kw: perturbation_curve(net, x, phi, None, mode="insertion", n_steps=3, **kw).scores,
               lambda **kw: faithfulness_correlation(net, x, phi, t, subset_size=2, n_runs=7, generator=g.manual_seed(0), **kw),
               lambda **kw: prediction_gap(net, x, phi, t, k=2, n_samples=9, generator=g.manual_seed(0), **kw),
               lambda **kw: infidelity(net, x, phi, t, n_samples=9, generator=g.manual_seed(0), **kw)):
        auto = fn()
        for chunk in (1, 4, 1000):
            torch.testing.assert_close(fn(chunk=chunk), auto, rtol=1e-12, atol=1e-12)
