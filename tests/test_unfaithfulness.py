"""Srinivas & Fleuret (2021)'s unfaithfulness tests (assay.evaluate.unfaithfulness) against closed forms on
linear models and planted right and wrong explanations."""

import pytest
import torch
from torch import nn

from assay.evaluate.unfaithfulness import LEAST_SALIENT_FRACTIONS, gan_test, least_salient_removal

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(nn.Module):
    """Logits (w·x, 0): class 0's logit is linear in x, class 1's is constant."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        f = (x.flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([f, torch.zeros_like(f)], 1)


def test_least_salient_removal_changes_a_linear_model_by_the_removed_attributions():
    """f = w·x, φ = IG (zero baseline) = w ⊙ x: removing the k features of smallest |φ| (fill 0) changes f by
    exactly the sum of their φ, for every k."""
    from assay.attribution import IntegratedGradientsConfig, attribute

    g = torch.Generator().manual_seed(0)
    D = 12
    w = torch.randn(D, generator=g, dtype=torch.float64)
    x = torch.randn(5, D, generator=g, dtype=torch.float64)
    model = Linear(w)
    t = torch.zeros(5, dtype=torch.long)
    phi = attribute(model, x, t, config=IntegratedGradientsConfig(steps=8), baseline=0.0).values
    torch.testing.assert_close(phi, w * x)
    fr = [k / D for k in range(1, D + 1)]
    r = least_salient_removal(model, x, phi.abs(), t, fractions=fr, baseline=0.0, output="logit")
    smallest_first = torch.gather(phi, 1, phi.abs().argsort(1))  # no ties: |φ| are distinct draws
    torch.testing.assert_close(r.change, smallest_first.cumsum(1))
    torch.testing.assert_close(r.fractions, torch.tensor(fr, dtype=torch.float64))
    torch.testing.assert_close(r.scores, (x * w).sum(1, keepdim=True) - smallest_first.cumsum(1))
    assert r.correct.shape == (5, D)


def test_a_pixel_map_removes_every_channel_of_its_pixels():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    x = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    phi = w * x  # input × gradient of f = w·x
    pixel = phi.abs().sum(1, keepdim=True)  # [B, 1, H, W]
    r = least_salient_removal(Linear(w), x, pixel, 0, fractions=[0.25, 0.5], baseline=0.0, output="logit")
    per_pixel = phi.sum(1).flatten(1)  # removing a pixel removes Σ_c φ_c
    order = pixel.flatten(1).argsort(1)
    expect = torch.gather(per_pixel, 1, order).cumsum(1)[:, [3, 7]]  # 4 and 8 of the 16 pixels
    torch.testing.assert_close(r.change, expect)


def test_ties_are_broken_at_random_not_in_index_order():
    """A constant saliency over 100 features, removing half: the removed set is uniform, so a model that
    counts the first 50 features loses 25 of them on average (index order would remove all 50)."""
    w = torch.cat([torch.ones(50), torch.zeros(50)]).double()
    x = torch.ones(400, 100, dtype=torch.float64)
    r = least_salient_removal(Linear(w), x, torch.zeros(400, 100), 0, fractions=[0.5], baseline=0.0,
                              output="logit", generator=torch.Generator().manual_seed(0))
    assert abs(float(r.change.mean()) - 25.0) < 0.5  # sd of the mean: √(6.3/400) ≈ 0.13
    again = least_salient_removal(Linear(w), x, torch.zeros(400, 100), 0, fractions=[0.5], baseline=0.0,
                                  output="logit", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.change, r.change)  # seeded
    assert len(LEAST_SALIENT_FRACTIONS) == 25 and LEAST_SALIENT_FRACTIONS[0] == pytest.approx(0.01)
    assert LEAST_SALIENT_FRACTIONS[-1] == pytest.approx(1.0)


def test_a_faithful_saliency_passes_where_reversed_ranks_fail():
    """A 3-class linear classifier that reads 5 of 20 features: the true saliency |w| removes only unused
    features up to 75%, leaving the output exactly unchanged; random ranks do worse and reversed ranks
    (the most important removed first) worst."""
    g = torch.Generator().manual_seed(2)
    W = torch.zeros(3, 20)
    W[:, :5] = 3 * torch.randn(3, 5, generator=g)
    model = nn.Linear(20, 3, bias=False)
    model.weight.data = W
    x = torch.randn(64, 20, generator=g)
    with torch.no_grad():
        t = model(x).argmax(1)
    sal = W.abs().sum(0).expand(64, 20)
    kw = dict(baseline=0.0, generator=torch.Generator().manual_seed(3))
    true = least_salient_removal(model, x, sal, t, **kw)
    rand = least_salient_removal(model, x, torch.rand(64, 20, generator=g), t, **kw)
    rev = least_salient_removal(model, x, sal.max() - sal, t, **kw)
    unused = true.fractions <= 0.75
    assert float(true.change[:, unused].abs().max()) < 1e-6 and bool(true.correct[:, unused].all())
    acc = [float(r.correct.double().mean()) for r in (true, rand, rev)]
    change = [float(r.change.abs().mean()) for r in (true, rand, rev)]
    assert acc[0] > acc[1] + 0.1 > acc[2] + 0.2, acc  # measured 0.961, 0.838, 0.657
    assert change[0] < change[1] / 3 and change[1] < change[2] / 1.5, change  # measured 0.032, 0.150, 0.277
    with pytest.raises(ValueError, match="fractions"):
        least_salient_removal(model, x, sal, t, fractions=[0.5, 0.2])


def test_gan_test_follows_the_closed_form_of_a_constant_direction():
    """φ ≡ w: x_k = c + w/λ + (1 − ηλ)^k (x₀ − c − w/λ) while it stays inside [0, 1]."""
    g = torch.Generator().manual_seed(4)
    w = 0.003 * torch.rand(4, 2, 3, generator=g, dtype=torch.float64)
    x0 = torch.rand(6, 4, 2, 3, generator=g, dtype=torch.float64)
    res = gan_test(lambda x, y: w.expand_as(x), lambda x: torch.zeros(len(x), 2), torch.zeros(6), (4, 2, 3),
                   n_steps=200, start=x0)
    eta, lam, c = 0.1, 0.01, 0.5
    limit = c + w / lam
    torch.testing.assert_close(res.samples, limit + (1 - eta * lam) ** 200 * (x0 - limit))
    assert res.accuracy == 1.0  # the proxy's constant logits predict class 0 for every target 0


def test_gan_test_scores_the_model_gradient_over_random_and_reversed_directions():
    """Four classes, each a quadrant of an 8×8 image: the explained model's logit f_c = Σ over quadrant c of
    (x − ½); the proxy (independent: the mean of each quadrant) judges the samples. Ascent along ∇f_y
    brightens quadrant y (proxy accuracy 1); the reversed direction darkens it (accuracy 0); a fresh random
    direction at each step stays near chance."""
    q = torch.zeros(4, 1, 8, 8)
    for c, (i, j) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        q[c, 0, i:i + 4, j:j + 4] = 1

    def model(x):
        return torch.einsum("bchw,kchw->bk", x - 0.5, q)

    def proxy(x):
        return torch.einsum("bchw,kchw->bk", x, q) / 16

    def gradient(x, y):
        x = x.clone().requires_grad_(True)
        model(x).gather(1, y[:, None]).sum().backward()
        return x.grad

    y = torch.arange(40) % 4
    kw = dict(n_steps=60, normalize=True)
    up = gan_test(gradient, proxy, y, (1, 8, 8), generator=torch.Generator().manual_seed(5), **kw)
    down = gan_test(lambda x, t: -gradient(x, t), proxy, y, (1, 8, 8), generator=torch.Generator().manual_seed(5),
                    **kw)
    g = torch.Generator().manual_seed(6)
    noise = gan_test(lambda x, t: torch.randn(x.shape, generator=g), proxy, y, (1, 8, 8),
                     generator=torch.Generator().manual_seed(5), **kw)
    assert up.accuracy == 1.0 and down.accuracy == 0.0
    assert noise.accuracy < 0.5, noise.accuracy  # chance 0.25
    assert up.samples.shape == (40, 1, 8, 8) and bool(((up.samples >= 0) & (up.samples <= 1)).all())
    with pytest.raises(ValueError, match="start"):
        gan_test(gradient, proxy, y, (1, 8, 8), start=torch.zeros(3, 1, 8, 8))
