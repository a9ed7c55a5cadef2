"""Mode connectivity, permutation alignment and mechanistic similarity against the spec's check values
(Lubana et al. 2023) and planted permutations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assay.dynamics.alignment import activation_matching, permute, spec_for, transformer_spec, weight_matching
from assay.dynamics.connectivity import barriers, fit_bezier, interpolate, loss_path
from assay.dynamics.similarity import invariance, mechanistic_similarity
from assay.models.mlp import MLP
from assay.models.transformer import Transformer, TransformerConfig
from assay.worlds.base import make_generator


def _mlp(hidden=(8,), d_in=4, n_out=3, seed=0):
    return MLP(d_in, hidden, n_out, generator=make_generator(seed)).double()


def _permuted_copy(model, perms, spec):
    """B with its units shuffled so that B's unit j is A's unit π[j]."""
    b = _clone(model)
    b.load_state_dict(permute(model.state_dict(), spec, perms))
    return b


def _clone(model):
    return copy.deepcopy(model)


def test_identical_models_have_zero_barriers():
    m = _mlp()
    x = torch.randn(32, 4, generator=make_generator(1), dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=make_generator(2))
    path = loss_path(_clone(m), m.state_dict(), m.state_dict(), lambda f: F.cross_entropy(f(x), y))
    assert path.barrier == 0.0 and path.barrier_mid == 0.0
    assert len(set(path.losses)) == 1


def test_quadratic_loss_closed_form():
    # spec §3.2: L(w) = (w − 1)², w_A = 1, w_B = 3 → B_lin = 0, B_mid = 2
    lin = nn.Linear(1, 1, bias=False).double()
    a, b = {"weight": torch.tensor([[1.0]], dtype=torch.float64)}, {"weight": torch.tensor([[3.0]], dtype=torch.float64)}
    path = loss_path(lin, a, b, lambda f: (f.weight[0, 0] - 1) ** 2)
    assert path.barrier == 0.0
    assert path.barrier_mid == pytest.approx(2.0, abs=1e-12)
    assert barriers((0.0, 0.5, 1.0), (0.0, 1.0, 0.0)) == (1.0, 1.0)


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_two_linear_models_connect_exactly(loss):
    # any loss convex in θ has L(θ(α)) ≤ chord: B_lin = 0 for two arbitrary (non-minimiser) linear models
    x = torch.randn(64, 5, generator=make_generator(3), dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=make_generator(4))
    target = torch.randn(64, 3, generator=make_generator(5), dtype=torch.float64)
    ma = nn.Linear(5, 3).double()
    sa = {k: torch.randn(v.shape, generator=make_generator(6), dtype=torch.float64) * 3 for k, v in ma.state_dict().items()}
    sb = {k: torch.randn(v.shape, generator=make_generator(7), dtype=torch.float64) * 3 for k, v in ma.state_dict().items()}
    fn = (lambda f: F.cross_entropy(f(x), y)) if loss == "logistic" else (lambda f: ((f(x) - target) ** 2).mean())
    path = loss_path(ma, sa, sb, fn, alphas=[i / 50 for i in range(51)])
    assert path.barrier <= 1e-12
    assert max(path.losses) > min(path.losses[0], path.losses[-1])  # the path is not trivially flat


def _abs_net():
    net = MLP(1, (2,), 1, generator=make_generator(0)).double()
    with torch.no_grad():
        net.fc0.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.fc0.bias.zero_()
        net.out.weight.copy_(torch.tensor([[1.0, 1.0]]))
        net.out.bias.zero_()
    return net


def test_two_unit_relu_swap_barrier_and_weight_matching():
    # spec §3.2: A = |x|, B = A with units swapped, data x = ±1, y = 1: L(α) = (|1 − 2α| − 1)² → B_lin = B_mid = 1
    a = _abs_net()
    spec = spec_for(a)
    b = _permuted_copy(a, {"P0": torch.tensor([1, 0])}, spec)
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    loss = lambda f: ((f(x)[:, 0] - 1) ** 2).mean()  # noqa: E731
    path = loss_path(_clone(a), a.state_dict(), b.state_dict(), loss)
    expected = [(abs(1 - 2 * al) - 1) ** 2 for al in path.alphas]
    assert path.losses == pytest.approx(expected, abs=1e-12)
    assert path.barrier == pytest.approx(1.0) and path.barrier_mid == pytest.approx(1.0)
    perms = weight_matching(a.state_dict(), b.state_dict(), spec, generator=make_generator(0))
    assert perms["P0"].tolist() == [1, 0]
    aligned = permute(b.state_dict(), spec, perms)
    for k, v in a.state_dict().items():
        assert torch.equal(aligned[k], v)
    after = loss_path(_clone(a), a.state_dict(), aligned, loss)
    assert after.barrier == 0.0 and after.barrier_mid == 0.0


def test_bezier_path_closed_form_and_fit():
    a = _abs_net()
    spec = spec_for(a)
    b = _permuted_copy(a, {"P0": torch.tensor([1, 0])}, spec)
    sa, sb = a.state_dict(), b.state_dict()
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    loss = lambda f: ((f(x)[:, 0] - 1) ** 2).mean()  # noqa: E731
    # the Bézier curve through the midpoint of A and B is the linear path
    straight = loss_path(_clone(a), sa, sb, loss)
    through_mid = loss_path(_clone(a), sa, sb, loss, mid=interpolate(sa, sb, 0.5))
    assert through_mid.losses == pytest.approx(straight.losses, abs=1e-12)
    # a low-loss curve exists (θ_M with w = (2, −2), a = (1, 1) makes θ(½) = A exactly): training finds one
    mid = fit_bezier(_clone(a), sa, sb, loss, steps=400, lr=0.05, generator=make_generator(0))
    curved = loss_path(_clone(a), sa, sb, loss, mid=mid)
    # measured: linear barrier 1.0, fitted Bézier barrier 0.0012
    assert curved.barrier < 0.1 * straight.barrier
    with pytest.raises(ValueError, match="steps >= 1"):
        fit_bezier(_clone(a), sa, sb, loss, steps=0, generator=make_generator(0))


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_permuted_mlp_aligns_back_exactly(method):
    a = _mlp(hidden=(8, 8))
    spec = spec_for(a)
    pi = {"P0": torch.randperm(8, generator=make_generator(10)), "P1": torch.randperm(8, generator=make_generator(11))}
    b = _permuted_copy(a, pi, spec)
    x = torch.randn(256, 4, generator=make_generator(12), dtype=torch.float64)
    assert torch.allclose(a(x), b(x), atol=1e-12)  # a permuted copy is the same function
    target = a(x).detach()
    loss = lambda f: ((f(x) - target) ** 2).mean()  # noqa: E731
    before = loss_path(_clone(a), a.state_dict(), b.state_dict(), loss)
    if method == "weight":
        perms = weight_matching(a.state_dict(), b.state_dict(), spec, generator=make_generator(0))
    else:
        perms = activation_matching(a, b, x, spec)
    for p in pi:  # the spec's check: the assignment is argsort(π)
        assert perms[p].tolist() == torch.argsort(pi[p]).tolist()
    aligned = permute(b.state_dict(), spec, perms)
    after = loss_path(_clone(a), a.state_dict(), aligned, loss)
    assert after.barrier == pytest.approx(0.0, abs=1e-15)
    assert before.barrier > 1e-3  # measured 0.0023 for this random network (its outputs are small)
    assert before.barrier > 1e6 * max(after.barrier, 1e-18)


def _sharp_transformer(n_heads=4, seed=0):
    cfg = TransformerConfig(vocab_size=11, n_layers=2, n_heads=n_heads, d_model=16, context=8)
    model = Transformer(cfg, generator=make_generator(seed)).double()
    with torch.no_grad():  # larger weights than GPT-2 initialisation, so heads and neurons differ clearly
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return model


@pytest.mark.parametrize("method", ["weight", "activation"])
@pytest.mark.parametrize("parts", ["heads", "neurons", "both"])
def test_permuted_transformer_heads_and_neurons_align_back(method, parts):
    a = _sharp_transformer()
    spec = transformer_spec(a, heads=parts != "neurons", neurons=parts != "heads")
    assert spec_for(a) == transformer_spec(a)
    pi = {}
    for i in range(2):
        if parts != "neurons":
            pi[f"heads{i}"] = torch.tensor([2, 0, 3, 1]) if i == 0 else torch.tensor([3, 2, 1, 0])
        if parts != "heads":
            pi[f"mlp{i}"] = torch.randperm(64, generator=make_generator(20 + i))
    assert set(pi) == set(spec.sizes(a.state_dict()))
    b = _clone(a)
    b.load_state_dict(permute(a.state_dict(), spec, pi))
    tokens = torch.randint(0, 11, (32, 8), generator=make_generator(3))
    assert torch.allclose(a(tokens), b(tokens), atol=1e-10)  # a permuted copy is the same function ...
    assert not torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight) or parts == "neurons"
    target = a(tokens).detach()
    loss = lambda f: ((f(tokens) - target) ** 2).mean()  # noqa: E731
    before = loss_path(_clone(a), a.state_dict(), b.state_dict(), loss)
    assert before.barrier > 1e-3  # ... but not linearly connected (measured 0.11 heads, 0.25 neurons, 0.38 both)
    if method == "weight":
        perms = weight_matching(a.state_dict(), b.state_dict(), spec, generator=make_generator(0))
    else:
        perms = activation_matching(a, b, tokens, spec)
    for p in pi:  # the spec's check: the assignment is argsort(π)
        assert perms[p].tolist() == torch.argsort(pi[p]).tolist(), p
    aligned = permute(b.state_dict(), spec, perms)
    for k, v in a.state_dict().items():
        assert torch.equal(aligned[k], v), k
    after = loss_path(_clone(a), a.state_dict(), aligned, loss)
    assert after.barrier == 0.0 and after.barrier_mid == 0.0


def test_head_permutation_moves_qkv_and_output_slices_together():
    # checked slice by slice against the layout of the fused projection: B's head j is A's head π[j]
    a = _sharp_transformer(n_heads=4)
    spec = transformer_spec(a, neurons=False)
    pi = torch.tensor([2, 0, 3, 1])
    b = permute(a.state_dict(), spec, {"heads0": pi, "heads1": torch.arange(4)})
    d, dh = 16, 4
    wa, wb = a.state_dict()["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"]
    oa, ob = a.state_dict()["blocks.0.attn.out.weight"], b["blocks.0.attn.out.weight"]
    for j in range(4):
        src = int(pi[j])
        for block in range(3):  # Q, K, V
            assert torch.equal(wb[block * d + j * dh: block * d + (j + 1) * dh], wa[block * d + src * dh: block * d + (src + 1) * dh])
        assert torch.equal(ob[:, j * dh:(j + 1) * dh], oa[:, src * dh:(src + 1) * dh])
    assert torch.equal(b["blocks.0.attn.out.bias"], a.state_dict()["blocks.0.attn.out.bias"])


def test_alignment_shape_mismatches_are_clear_errors():
    a, wide = _sharp_transformer(n_heads=4), Transformer(TransformerConfig(vocab_size=11, n_layers=2, n_heads=3,
                                                                          d_model=18, context=8)).double()
    spec = transformer_spec(a)  # d_head 4: the wide model's 54 Q/K/V rows are not whole heads of 3·4
    with pytest.raises(ValueError, match=r"axis 0 of 'blocks\.0\.attn\.qkv\.weight' has length 54, not a multiple"):
        spec.sizes(wide.state_dict())
    with pytest.raises(ValueError, match="different architectures"):
        weight_matching(a.state_dict(), wide.state_dict(), spec, generator=make_generator(0))
    with pytest.raises(ValueError, match="different architectures"):
        activation_matching(a, wide, torch.zeros(2, 8, dtype=torch.long), spec)
    # a spec built for 2 heads on a 4-head model (same parameter shapes): heads counted 2, not 4
    two = transformer_spec(_sharp_transformer(n_heads=2), neurons=False)
    with pytest.raises(ValueError, match=r"permutation 'heads0' must be a permutation of 0\.\.1"):
        permute(a.state_dict(), two, {"heads0": torch.arange(4), "heads1": torch.arange(4)})
    with pytest.raises(ValueError, match="heads=True or neurons=True"):
        transformer_spec(a, heads=False, neurons=False)


def test_interpolating_different_architectures_is_refused():
    a, b = _mlp(hidden=(8,)), _mlp(hidden=(9,))
    with pytest.raises(ValueError, match=r"different architectures: parameter 'fc0\.weight'"):
        interpolate(a.state_dict(), b.state_dict(), 0.5)
    c = _mlp(hidden=(8, 8))
    with pytest.raises(ValueError, match=r"'fc1\.weight' of B is missing from A"):
        loss_path(_clone(a), a.state_dict(), c.state_dict(), lambda f: f.out.bias.sum())
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="BatchNorm"):
        loss_path(bn, bn.state_dict(), bn.state_dict(), lambda f: f[0].bias.sum())


def test_mechanistic_similarity_planted_invariances():
    # f reads only feature 0, g only feature 1; T_k shuffles feature k across the batch
    x = torch.randn(2000, 2, generator=make_generator(0), dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    shuffle = torch.randperm(2000, generator=make_generator(1))

    def t0(z):
        return torch.stack([z[shuffle, 0], z[:, 1]], 1)

    def t1(z):
        return torch.stack([z[:, 0], z[shuffle, 1]], 1)

    def linear(col):
        m = nn.Linear(2, 2).double()
        with torch.no_grad():
            m.weight.zero_()
            m.weight[1, col], m.weight[0, col] = 1.0, -1.0
            m.bias.zero_()
        return m

    f, g = linear(0), linear(1)
    # independent count: f's class is sign(x0), unchanged by T0 exactly where x0 and its shuffled value agree in sign
    naive = float(((x[:, 0] > 0) == (x[shuffle, 0] > 0)).double().mean())
    assert invariance(f, x, t0) == pytest.approx(naive, abs=1e-12)
    assert invariance(f, x, t1) == 1.0 and invariance(g, x, t0) == 1.0
    sim = mechanistic_similarity(f, g, x, y, {"shuffle0": t0, "shuffle1": t1}, vessel=linear(0))
    assert sim.distance == pytest.approx(max(1 - naive, 1 - invariance(g, x, t1)), abs=1e-12)
    assert 0.4 < sim.distance < 0.6
    assert set(sim.barriers) == {"identity", "shuffle0", "shuffle1"}
    assert all(v <= 1e-12 for v in sim.barriers.values())  # linear models: convex loss, always connected
    same = mechanistic_similarity(f, f, x, y, {"shuffle0": t0}, vessel=linear(0))
    assert same.distance == 0.0
