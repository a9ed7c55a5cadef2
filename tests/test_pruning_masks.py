"""Masks: θ ⊙ M forward, gradients to masked entries, exact sparsity, materialize, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from assay.models.mlp import MLP
from assay.pruning.masks import (
    apply_masks,
    check_sparsity,
    get_masks,
    is_masked,
    load_masks,
    materialize,
    prunable_layers,
    save_masks,
    shadow_weight,
    sparsity,
)


def _linear() -> nn.Linear:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -4.0]]))
        lin.bias.copy_(torch.tensor([0.1, -0.1]))
    return lin


MASK = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)


def test_forward_uses_masked_weight_against_hand_computation():
    model = nn.Sequential(_linear())
    apply_masks(model, {"0": MASK})
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, 0.5]])
    # effective weight [[1, 0, 3], [0, 0.25, -4]]
    expected = torch.tensor([[1 + 3 + 0.1, 0.25 - 4 - 0.1], [2 + 1.5 + 0.1, -0.25 - 2 - 0.1]])
    assert torch.allclose(model(x), expected)
    assert torch.equal(model[0].weight, torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.25, -4.0]]))
    assert torch.equal(shadow_weight(model, "0"), torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -4.0]]))


def test_gradient_reaches_masked_weights_with_regrow_and_not_when_frozen():
    x = torch.tensor([[1.0, 2.0, -1.0]])
    for regrow in (True, False):
        model = nn.Sequential(_linear())
        apply_masks(model, {"0": MASK}, regrow=regrow)
        model(x).sum().backward()
        grad = shadow_weight(model, "0").grad
        # d(sum_j (W x)_j)/dW_ij = x_j for every entry: the dense gradient
        dense = x.expand(2, 3)
        assert torch.equal(grad, dense if regrow else dense * MASK)


def test_all_ones_mask_changes_nothing_bitwise():
    model = MLP(5, (7,), 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    before = model(x)
    apply_masks(model, {n: torch.ones_like(model.get_submodule(n).weight) for n in prunable_layers(model)})
    assert torch.equal(model(x), before)


def test_sparsity_is_exact_per_layer_and_global():
    model = MLP(3, (2,), 2, generator=torch.Generator().manual_seed(0))  # fc0 2×3, out 2×2
    apply_masks(model, {"fc0": MASK, "out": torch.tensor([[0, 0], [0, 1]])})
    report = sparsity(model)
    assert report.zeros == {"fc0": 2, "out": 3}
    assert report.sizes == {"fc0": 6, "out": 4}
    assert report.layer == {"fc0": 2 / 6, "out": 3 / 4}
    assert (report.total_zeros, report.total_size) == (5, 10)
    assert report.global_sparsity == 0.5
    assert sparsity(model, ["out"]).global_sparsity == 0.75


def test_reapplying_a_mask_replaces_it_and_get_masks_reads_it():
    model = nn.Sequential(_linear())
    apply_masks(model, {"0": MASK})
    apply_masks(model, {"0": ~MASK})
    assert torch.equal(get_masks(model)["0"], ~MASK)
    assert len(model[0].parametrizations.weight) == 1


def test_materialize_bakes_mask_and_removes_parametrization():
    model = nn.Sequential(_linear())
    apply_masks(model, {"0": MASK})
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    before = model(x)
    materialize(model)
    assert not is_masked(model[0])
    assert isinstance(model[0].weight, nn.Parameter)
    assert torch.equal(model[0].weight, torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.25, -4.0]]))
    assert torch.equal(model(x), before)
    assert set(model.state_dict()) == {"0.weight", "0.bias"}


def test_wrong_shape_mask_names_layer_and_both_shapes():
    model = MLP(3, (2,), 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"'fc0' has shape \(3, 2\) but its weight has shape \(2, 3\)"):
        apply_masks(model, {"fc0": torch.ones(3, 2, dtype=torch.bool)})
    assert not is_masked(model.fc0)


def test_non_binary_mask_and_unknown_layer_refused():
    model = MLP(3, (2,), 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="only 0 and 1"):
        apply_masks(model, {"fc0": torch.full((2, 3), 0.5)})
    with pytest.raises(KeyError, match="no layer 'fc9'"):
        apply_masks(model, {"fc9": torch.ones(2, 3)})
    with pytest.raises(TypeError, match="act0"):
        apply_masks(model, {"act0": torch.ones(2, 3)})


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_sparsity_outside_unit_interval_refused(bad):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        check_sparsity(bad)


def test_tied_weights_refused_naming_both():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match=r"0\.weight and 2\.weight"):
        apply_masks(model, {"2": torch.ones(4, 4)})
    shared = nn.Linear(4, 4)
    reused = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(ValueError, match=r"tied.*0\.weight and 2\.weight"):
        apply_masks(reused, {"0": torch.ones(4, 4)})


def test_prunable_layers_skip_first_last():
    model = MLP(3, (4, 5), 2, generator=torch.Generator().manual_seed(0))
    assert prunable_layers(model) == ("fc0", "fc1", "out")
    assert prunable_layers(model, skip_first_last=True) == ("fc1",)


def test_masks_save_load_round_trip_and_shape_check_on_apply(tmp_path):
    model = MLP(3, (2,), 2, generator=torch.Generator().manual_seed(0))
    masks = {"out": torch.tensor([[0, 1], [1, 1]], dtype=torch.bool), "fc0": MASK}
    save_masks(tmp_path / "m", masks, meta={"rule": "magnitude"})
    loaded = load_masks(tmp_path / "m")
    assert list(loaded) == ["out", "fc0"] and all(torch.equal(loaded[n], masks[n]) for n in masks)
    apply_masks(model, loaded)
    assert sparsity(model).zeros == {"fc0": 2, "out": 1}
    other = MLP(3, (4,), 2)
    with pytest.raises(ValueError, match=r"'out' has shape \(2, 2\) but its weight has shape \(2, 4\)"):
        apply_masks(other, loaded)
