"""Magnitude pruning: the spec's counts, rounding and ties against a naive sort-based reference."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import torch

from assay.models.mlp import MLP
from assay.pruning.magnitude import magnitude_masks, magnitude_prune, n_pruned, prune_lowest
from assay.pruning.masks import get_masks, shadow_weight, sparsity

T1 = torch.tensor([0.1, -0.5, 0.3])
T2 = torch.tensor([2.0, -0.05])


def _naive(weights: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Prune the k smallest |w| by a plain Python sort of (|w|, layer order, index) tuples."""
    entries = sorted((abs(float(v)), li, i) for li, w in enumerate(weights.values())
                     for i, v in enumerate(w.reshape(-1).tolist()))
    pruned = {(li, i) for _, li, i in entries[:k]}
    return {n: torch.tensor([(li, i) not in pruned for i in range(w.numel())]).reshape(w.shape)
            for li, (n, w) in enumerate(weights.items())}


def test_spec_check_global_and_layerwise():
    g = magnitude_masks({"a": T1, "b": T2}, 0.4, scope="global")
    assert g["a"].tolist() == [False, True, True] and g["b"].tolist() == [True, False]  # prunes 0.1 and −0.05
    lw = magnitude_masks({"a": T1, "b": T2}, 0.4, scope="layer")
    assert lw["a"].tolist() == [False, True, True]  # round(1.2) = 1: 0.1
    assert lw["b"].tolist() == [True, False]  # round(0.8) = 1 (floor would give 0): −0.05


def test_rounding_is_nearest_with_halves_to_even_at_decimal_value():
    assert n_pruned(5, 0.4) == 2 and n_pruned(2, 0.4) == 1 and n_pruned(3, 0.4) == 1
    assert n_pruned(5, 0.1) == 0  # 0.5 → 0 (even); the binary 0.1 is slightly above 1/10 and would give 1
    assert n_pruned(5, 0.3) == 2  # 1.5 → 2 (even)
    assert n_pruned(10, 0.25) == 2  # 2.5 → 2
    assert n_pruned(7, 0.0) == 0


def test_ties_broken_by_layer_then_index():
    w = {"a": torch.tensor([1.0, -1.0, 1.0, 2.0]), "b": torch.tensor([-1.0, 1.0])}
    g = magnitude_masks(w, 0.5, scope="global")  # 3 of 6, all five ±1 tie: a[0], a[1], a[2] go
    assert g["a"].tolist() == [False, False, False, True] and g["b"].tolist() == [True, True]
    assert {n: m.tolist() for n, m in g.items()} == {n: m.tolist() for n, m in _naive(w, 3).items()}
    lw = magnitude_masks(w, 0.5, scope="layer")
    assert lw["a"].tolist() == [False, False, True, True] and lw["b"].tolist() == [False, True]


@pytest.mark.parametrize("s", [0.0, 0.1, 0.33, 0.5, 0.77, 0.95])
def test_random_ties_match_naive_reference(s):
    gen = torch.Generator().manual_seed(3)
    # integer-valued weights force many ties
    w = {"x": torch.randint(-4, 5, (6, 7), generator=gen).float(), "y": torch.randint(-4, 5, (13,), generator=gen).float()}
    g = magnitude_masks(w, s, scope="global")
    ref = _naive(w, int((Decimal(str(s)) * 55).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)))
    assert all(torch.equal(g[n], ref[n]) for n in w)
    lw = magnitude_masks(w, s, scope="layer")
    for n, t in w.items():
        assert torch.equal(lw[n], _naive({n: t}, n_pruned(t.numel(), s))[n])
        assert int((~lw[n]).sum()) == n_pruned(t.numel(), s)


def test_magnitude_prune_projects_dense_weights_and_is_idempotent():
    model = MLP(4, (6, 5), 3, generator=torch.Generator().manual_seed(0))
    masks = magnitude_prune(model, 0.5)
    assert set(masks) == {"fc1"}  # first and last layers skipped by default
    assert sparsity(model, ["fc1"]).zeros == {"fc1": 15}
    again = magnitude_prune(model, 0.5)
    assert torch.equal(again["fc1"], masks["fc1"])
    with torch.no_grad():  # a masked dense weight that grows is kept at the next projection
        pruned = (~masks["fc1"]).nonzero()[0]
        shadow_weight(model, "fc1")[tuple(pruned)] = 100.0
    regrown = magnitude_prune(model, 0.5)
    assert bool(regrown["fc1"][tuple(pruned)]) and int((~regrown["fc1"]).sum()) == 15
    assert torch.equal(get_masks(model)["fc1"], regrown["fc1"])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_masks({"a": T1}, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        prune_lowest({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_lowest({"a": T1}, 0.5, scope="row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers="):
        magnitude_prune(MLP(3, (2,), 2), 0.5)
