"""Connectivity-based fine-tuning (Lubana et al. 2023) against a literal re-implementation of the MMC
repo's loop, and on a planted cue: CBFT removes the reliance that naive fine-tuning keeps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from assay.config import ConfigError
from assay.dynamics.cbft import CBFTConfig, cbft, class_mean_invariance
from assay.models.mlp import MLP
from assay.worlds.base import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, g, cue):
    """y = [content > 0]; the cue (input 2) is ±2 with the label ("aligned"), random ("random") or 0 ("none").
    Cue data carry the content with N(0, 1) noise, so a model trained on them leans on the cue."""
    c = torch.randn(n, generator=g, dtype=torch.float64)
    y = (c > 0).long()
    if cue == "aligned":
        q = 2.0 * (2 * y - 1).double()
        c = c + torch.randn(n, generator=g, dtype=torch.float64)
    elif cue == "random":
        q = 2.0 * (2 * torch.randint(0, 2, (n,), generator=g) - 1).double()
    else:
        q = torch.zeros(n, dtype=torch.float64)
    return torch.stack([c, q], 1), y


def _pairs(n, seed, batch=64):
    g = make_generator(seed)
    out = []
    for _ in range(n):
        x, y = _data(batch, g, "none")
        xc, yc = _data(batch, g, "aligned")
        out.append((x, y, xc, yc))
    return out


def _cue_model():
    m = MLP(2, (16,), 2, generator=make_generator(1)).double()
    x, y = _data(1024, make_generator(0), "aligned")
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return m


def _reference_cbft(cue_model, pairs, cfg, generator):
    """The MMC repo's loop, written out: an interpolated copy, its gradients times (1 − t) set on θ."""
    net_c, net, net_i = (copy.deepcopy(cue_model) for _ in range(3))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for x, y, xc, yc in pairs:
        t = 0.5 + 0.5 * float(torch.randn((), generator=generator).clamp(-0.5, 0.5))
        with torch.no_grad():
            for pc, p, pi in zip(net_c.parameters(), net.parameters(), net_i.parameters()):
                pi.copy_(t * pc + (1 - t) * p)
        net_i.zero_grad()
        (cfg.margin - F.cross_entropy(net_i(xc), yc)).abs().backward()
        for p, pi in zip(net.parameters(), net_i.parameters()):
            p.grad = (1 - t) * pi.grad
        opt.step()
        net.zero_grad()
        z, zc = net.act0(net.fc0(x)), net.act0(net.fc0(xc))
        inv = 0.0
        for k in range(2):
            if (y == k).any() and (yc == k).any():
                inv = inv + (F.normalize(z[y == k].mean(0, keepdim=True), dim=1)
                             - F.normalize(zc[yc == k].mean(0, keepdim=True), dim=1)).norm().pow(2)
        (F.cross_entropy(net.out(z), y) + cfg.invariance_weight * inv / 2).backward()
        opt.step()
    return net.state_dict()


def test_cbft_matches_the_repo_loop():
    m = _cue_model()
    cfg = CBFTConfig(lr=0.05, invariance_weight=2.0)
    pairs = _pairs(5, seed=3)
    vessel = copy.deepcopy(m)
    before = {k: v.clone() for k, v in vessel.state_dict().items()}
    res = cbft(vessel, m.state_dict(), pairs, features="act0", config=cfg, generator=make_generator(4))
    ref = _reference_cbft(m, pairs, cfg, make_generator(4))
    for k, v in ref.items():
        assert torch.allclose(res.state[k], v, atol=1e-12, rtol=0), k
    assert all(0.25 <= t <= 0.75 for t in res.ts) and len(res.barrier_losses) == 5
    assert all(torch.equal(vessel.state_dict()[k], v) for k, v in before.items())  # the vessel is untouched
    assert not torch.equal(res.state["fc0.weight"], m.state_dict()["fc0.weight"])


def test_class_mean_invariance_hand_case():
    # class 0: clean mean (1, 0), cue mean (0, 1) → ‖n(a) − n(b)‖² = 2; class 1 absent from the cue batch → 0
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    zc = torch.tensor([[0.0, 2.0]])
    val = class_mean_invariance(z, torch.tensor([0, 0, 1]), zc, torch.tensor([0]), n_classes=2)
    assert val.item() == pytest.approx(2.0 / 2)


def test_cbft_removes_a_planted_cue_that_naive_fine_tuning_keeps():
    m = _cue_model()
    acc = lambda f, x, y: (f(x).argmax(1) == y).double().mean().item()  # noqa: E731
    xr, yr = _data(2048, make_generator(5), "random")  # the cue says nothing: only the content helps
    xn, yn = _data(2048, make_generator(7), "none")
    assert acc(m, xr, yr) < 0.6  # the cue model follows the cue (measured 0.52)
    pairs = _pairs(500, seed=11)
    cfg = CBFTConfig(lr=0.05)
    res = cbft(copy.deepcopy(m), m.state_dict(), pairs, features="act0", config=cfg, generator=make_generator(3))
    tuned = copy.deepcopy(m)
    tuned.load_state_dict(res.state)
    naive = copy.deepcopy(m)  # control: the same optimiser on the clean batches only
    opt = torch.optim.SGD(naive.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for x, y, _, _ in pairs:
        opt.zero_grad()
        F.cross_entropy(naive(x), y).backward()
        opt.step()
    # measured (seed 0): random-cue accuracy cue model 0.52, naive 0.68, CBFT 0.90 (seeds 1, 2 of the
    # cue model: naive 0.68 / 0.66, CBFT 0.86 / 0.86); both reach ≥ 0.99 on clean data
    assert acc(tuned, xr, yr) > acc(naive, xr, yr) + 0.15
    assert acc(tuned, xn, yn) > 0.95 and acc(naive, xn, yn) > 0.95
    # the clean data never move the first-layer cue weights (input 2 is 0 there); the invariance step does:
    # measured norm 2.58 (cue model), 2.52 (naive, weight decay only), 1.59 (CBFT)
    cue_w = lambda f: f.fc0.weight[:, 1].norm().item()  # noqa: E731
    assert cue_w(tuned) < 0.7 * cue_w(naive)


def test_cbft_errors():
    with pytest.raises(ConfigError, match="lr > 0"):
        CBFTConfig(lr=0)
    with pytest.raises(ConfigError, match="momentum"):
        CBFTConfig(momentum=1.0)
    m, other = MLP(2, (16,), 2), MLP(2, (8,), 2)
    with pytest.raises(ValueError, match="different architectures"):
        cbft(m, other.state_dict(), [], features="act0", generator=make_generator(0))
