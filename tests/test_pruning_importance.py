"""Importance scores against independent computations: the spec's quadratic, finite differences,
an explicit Hessian (torch.autograd.functional), LAMP's formula, N:M pattern validity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from assay.models.mlp import MLP
from assay.pruning.importance import (
    EXTRA_MEASURES,
    MEASURES,
    classification_loss,
    flow_scores,
    hessian_gradient_product,
    lamp_scores,
    mean_gradient,
    nm_masks,
    snip_scores,
)
from assay.pruning.magnitude import magnitude_masks, prune_lowest
from assay.pruning.masks import apply_masks

A = torch.diag(torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64))
B = torch.ones(3, dtype=torch.float64)


def _quadratic_model() -> nn.Module:
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 0.5]]))
    return nn.Sequential(model)


def _quadratic_loss(model: nn.Module, batch) -> torch.Tensor:
    theta = model[0].weight[0]
    return 0.5 * theta @ A @ theta - B @ theta


@pytest.mark.parametrize(("measure", "expected"), [
    ("magnitude", (1, 2, 0.5)), ("loss_preservation", (1, 2, 0.5)), ("biased_loss", (1, 4, 0.25)),
    ("grasp", (2, 2, 2)), ("grad_preserve", (2, 2, 2)),
])
def test_spec_quadratic_check(measure, expected):
    # L = ½θᵀAθ − bᵀθ, θ = (1, 2, 0.5): g = (1, 1, 1), Hg = (2, 1, 4)
    scores = flow_scores(_quadratic_model(), measure, _quadratic_loss, [None], unit="weight")
    assert torch.allclose(scores["0"][0], torch.tensor(expected, dtype=torch.float64))


def _tiny():
    gen = torch.Generator().manual_seed(0)
    model = MLP(3, (4,), 3, activation="tanh", generator=gen).double()
    batches = [(torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (5,), generator=gen))
               for _ in range(2)]
    return model, batches


def _flat_loss(model, batches, loss_fn):
    shapes = {n: model.get_submodule(n).weight.shape for n in ("fc0", "out")}

    def f(flat):
        params, start = {}, 0
        for n, s in shapes.items():
            params[f"{n}.weight"] = flat[start : start + s.numel()].reshape(s)
            start += s.numel()

        class Bound(nn.Module):
            def forward(self, x):
                return functional_call(model, params, (x,))

        return sum(loss_fn(Bound(), b) for b in batches) / len(batches)

    flat = torch.cat([model.get_submodule(n).weight.detach().reshape(-1) for n in shapes])
    return f, flat, shapes


def _unflatten(v, shapes):
    out, start = {}, 0
    for n, s in shapes.items():
        out[n] = v[start : start + s.numel()].reshape(s)
        start += s.numel()
    return out


def test_gradient_and_hessian_product_match_finite_differences_and_explicit_hessian():
    model, batches = _tiny()
    loss_fn = classification_loss(2.0)
    f, flat, shapes = _flat_loss(model, batches, loss_fn)
    eps = 1e-6
    fd = torch.stack([(f(flat + eps * e) - f(flat - eps * e)) / (2 * eps) for e in torch.eye(flat.numel(), dtype=flat.dtype)])
    g = mean_gradient(model, loss_fn, batches, layers=("fc0", "out"))
    assert torch.allclose(torch.cat([g[n].reshape(-1) for n in shapes]), fd, atol=1e-8)
    H = torch.autograd.functional.hessian(f, flat)
    hg_ref = _unflatten(H @ fd, shapes)
    hg = hessian_gradient_product(model, loss_fn, batches, layers=("fc0", "out"))
    for n in shapes:
        assert torch.allclose(hg[n], hg_ref[n], atol=1e-8)


@pytest.mark.parametrize("measure", MEASURES + EXTRA_MEASURES)
def test_each_measure_matches_its_formula_per_weight_and_per_neuron(measure):
    model, batches = _tiny()
    loss_fn = classification_loss(2.0)
    f, flat, shapes = _flat_loss(model, batches, loss_fn)
    g_flat = torch.autograd.functional.jacobian(f, flat)
    g = _unflatten(g_flat, shapes)
    hg = _unflatten(torch.autograd.functional.hessian(f, flat) @ g_flat, shapes)
    th = {n: model.get_submodule(n).weight.detach() for n in shapes}
    per_weight = {
        "magnitude": lambda n: th[n].abs(), "loss_preservation": lambda n: (th[n] * g[n]).abs(),
        "biased_loss": lambda n: (th[n] ** 2 * g[n]).abs(), "grasp": lambda n: th[n] * hg[n],
        "grad_preserve": lambda n: (th[n] * hg[n]).abs(), "tfo": lambda n: (th[n] * g[n]).abs(),
        "fisher": lambda n: th[n] ** 2 * g[n] ** 2, "l1": lambda n: th[n].abs(),
    }[measure]
    per_neuron = {
        "magnitude": lambda n: th[n].norm(dim=1), "grad_preserve": lambda n: (th[n] * hg[n]).sum(1).abs(),
        "tfo": lambda n: (th[n] * g[n]).sum(1).abs(),
    }.get(measure, lambda n: per_weight(n).sum(1))
    w = flow_scores(model, measure, loss_fn, batches, layers=("fc0", "out"), unit="weight")
    u = flow_scores(model, measure, loss_fn, batches, layers=("fc0", "out"), unit="neuron")
    for n in shapes:
        assert torch.allclose(w[n], per_weight(n), atol=1e-10)
        assert torch.allclose(u[n], per_neuron(n), atol=1e-10)
        assert u[n].shape == (th[n].shape[0],)


def test_biased_loss_with_initial_weights():
    model = _quadratic_model()
    init = {"0": torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)}
    s = flow_scores(model, "biased_loss", _quadratic_loss, [None], unit="weight", initial=init)
    assert torch.allclose(s["0"][0], torch.tensor([1 * 1, 1 * 2, 0.5 * 0.5], dtype=torch.float64))


def test_scores_are_taken_at_masked_weights():
    model = _quadratic_model()
    apply_masks(model, {"0": torch.tensor([[True, False, True]])})
    s = flow_scores(model, "magnitude", unit="weight")
    assert s["0"].tolist() == [[1.0, 0.0, 0.5]]


def test_snip_is_normalised_loss_preservation_on_one_batch():
    model, batches = _tiny()
    loss_fn = classification_loss()
    f, flat, shapes = _flat_loss(model, batches[:1], loss_fn)
    g = _unflatten(torch.autograd.functional.jacobian(f, flat), shapes)
    raw = {n: (model.get_submodule(n).weight.detach() * g[n]).abs() for n in shapes}
    total = sum(t.sum() for t in raw.values())
    s = snip_scores(model, loss_fn, batches[0], layers=("fc0", "out"))
    assert torch.allclose(sum(t.sum() for t in s.values()), torch.tensor(1.0, dtype=torch.float64))
    for n in shapes:
        assert torch.allclose(s[n], raw[n] / total)


def test_missing_data_and_bad_measure_refused():
    with pytest.raises(ValueError, match="needs loss_fn and batches"):
        flow_scores(_quadratic_model(), "grasp")
    with pytest.raises(ValueError, match="measure"):
        flow_scores(_quadratic_model(), "taylor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        classification_loss(0.0)


def test_lamp_spec_example_and_formula():
    s = lamp_scores({"a": torch.tensor([3.0, -1.0, 2.0])})["a"]
    assert torch.allclose(s, torch.tensor([1.0, 1 / 14, 4 / 13]))
    w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    got = lamp_scores({"w": w})["w"].reshape(-1)
    flat = w.reshape(-1)
    for i in range(flat.numel()):  # Σ over weights ranked at or after weight i (no ties here)
        later = sum(float(v) ** 2 for v in flat if abs(float(v)) >= abs(float(flat[i])))
        assert abs(float(got[i]) - float(flat[i]) ** 2 / later) < 1e-6
    assert float(got.max()) == 1.0


def test_nm_spec_example_and_pattern_validity():
    keep = nm_masks({"a": torch.tensor([[0.1, -0.5, 0.3, 0.2]])}, 2, 4)["a"]
    assert keep.tolist() == [[False, True, True, False]]
    gen = torch.Generator().manual_seed(1)
    lin, conv = torch.randn(5, 8, generator=gen), torch.randn(3, 8, 2, 2, generator=gen)
    masks = nm_masks({"lin": lin, "conv": conv}, 2, 4)
    for w, m in ((lin, masks["lin"]), (conv, masks["conv"])):
        assert m.shape == w.shape and m.dtype == torch.bool
        wm, mm = w.movedim(1, -1).reshape(-1, 4), m.movedim(1, -1).reshape(-1, 4)
        for wg, mg in zip(wm, mm):
            assert int(mg.sum()) == 2
            assert wg.abs()[mg].min() >= wg.abs()[~mg].max()
    tie = nm_masks({"t": torch.tensor([[1.0, -1.0, 1.0, 0.5]])}, 2, 4)["t"]
    assert tie.tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError, match="multiple of M=4"):
        nm_masks({"x": torch.ones(2, 6)}, 2, 4)
    with pytest.raises(ValueError, match="0 < N <= M"):
        nm_masks({"x": torch.ones(2, 4)}, 5, 4)


def test_lamp_global_pruning_never_empties_a_layer():
    gen = torch.Generator().manual_seed(4)
    w = {"small": 0.01 * torch.randn(5, 5, generator=gen), "big": 10 * torch.randn(6, 6, generator=gen)}
    assert not magnitude_masks(w, 0.6)["small"].any()  # global magnitude removes the small layer entirely
    keep = prune_lowest(lamp_scores(w), 0.95)
    assert all(int(k.sum()) >= 1 for k in keep.values())  # each layer's largest weight scores 1
