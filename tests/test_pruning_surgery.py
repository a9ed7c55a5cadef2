"""Data-free neuron surgery (Srinivas & Babu 2015) against planted duplicates, a naive saliency loop
and a naive greedy re-implementation."""

import pytest
import torch
from torch import nn

from assay.models.mlp import MLP
from assay.models.planted_redundancy import PlantedRedundancyConfig, planted_redundancy_mlp
from assay.models.transformer import Transformer, TransformerConfig
from assay.pruning.surgery import NeuronLayer, SurgeryConfig, merge_neurons, neuron_layers, pair_saliencies

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(merges) -> set[frozenset[int]]:
    return {frozenset((m.removed, m.into)) for m in merges}


def _x(d: int, n: int = 512, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scale_invariant_surgery_finds_exactly_the_exact_and_scaled_copies(seed):
    model, truth = planted_redundancy_mlp(seed=seed)
    planted = {frozenset(p) for p in truth.pairs("exact", "scaled")}
    result = merge_neurons(model, SurgeryConfig(n_merges=len(planted), scale_invariant=True))
    found = _pairs(result.merges)
    assert len(found & planted) / len(found) == 1.0 and len(found & planted) / len(planted) == 1.0
    assert max(m.saliency for m in result.merges) < 1e-12
    for m in result.merges:  # the recorded scale is the planted one (or its inverse, if the source went)
        a = float(truth.scale[m.removed] if truth.source[m.removed] == m.into else 1 / truth.scale[m.into])
        assert m.scale == pytest.approx(a, rel=1e-5)
    x = _x(model.fc0.in_features)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-5)
    keep = result.keep["fc0"]
    assert keep.dtype == torch.bool and int((~keep).sum()) == len(planted)
    assert torch.all(result.model.out.weight[:, ~keep] == 0)
    assert torch.equal(result.model.fc0.weight, model.fc0.weight)  # only the next layer changes


def test_plain_saliency_finds_exact_copies_first_and_leaves_the_input_model_alone():
    model, truth = planted_redundancy_mlp(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    planted = {frozenset(p) for p in truth.pairs("exact")}
    result = merge_neurons(model, SurgeryConfig(n_merges=len(planted)))
    assert _pairs(result.merges) == planted
    assert all(m.scale == 1.0 and m.saliency == 0.0 for m in result.merges)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x = _x(model.fc0.in_features)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_noisy_copies_are_merged_in_order_of_noise(seed):
    cfg = PlantedRedundancyConfig(noise_levels=(0.15, 0.02, 0.1, 0.05), n_base=12)
    model, truth = planted_redundancy_mlp(cfg, seed=seed)
    n_exact = cfg.n_exact + cfg.n_scaled
    result = merge_neurons(model, SurgeryConfig(n_merges=n_exact + 4, scale_invariant=True))
    noisy = result.merges[n_exact:]
    noisy_pairs = {frozenset(p): float(truth.noise[p[1]]) for p in truth.pairs("noisy")}
    assert [noisy_pairs[frozenset((m.removed, m.into))] for m in noisy] == pytest.approx(sorted(cfg.noise_levels))
    assert [m.saliency for m in noisy] == sorted(m.saliency for m in noisy)


def test_merge_count_and_saliency_threshold_knobs():
    model, truth = planted_redundancy_mlp(seed=6)
    for k in (0, 2, 7):
        assert len(merge_neurons(model, SurgeryConfig(n_merges=k, scale_invariant=True)).merges) == k
    below = merge_neurons(model, SurgeryConfig(max_saliency=1e-9, scale_invariant=True))
    assert _pairs(below.merges) == {frozenset(p) for p in truth.pairs("exact", "scaled")}
    # orthonormal base neurons have no positive-scale twin: scale-invariant merging stops short of one neuron
    everything = merge_neurons(model, SurgeryConfig(max_saliency=float("inf"), scale_invariant=True))
    assert len(truth.pairs()) <= len(everything.merges) < len(truth.kind) - 1
    assert len(merge_neurons(model, SurgeryConfig(max_saliency=float("inf"))).merges) == len(truth.kind) - 1
    both = merge_neurons(model, SurgeryConfig(n_merges=2, max_saliency=1e-9, scale_invariant=True))
    assert len(both.merges) == 2
    threshold = 0.5 * (below.merges[-1].saliency + everything.merges[len(below.merges)].saliency)
    assert len(merge_neurons(model, SurgeryConfig(max_saliency=threshold, scale_invariant=True)).merges) == len(
        below.merges)


@pytest.mark.parametrize("scale_invariant", [False, True])
def test_pair_saliencies_match_a_naive_loop(scale_invariant):
    g = torch.Generator().manual_seed(7)
    w, a = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    s, c = pair_saliencies(w, a, scale_invariant=scale_invariant)
    for i in range(6):
        for j in range(6):
            if i == j:
                assert s[i, j] == torch.inf
                continue
            scale = 1.0
            if scale_invariant:
                scale = float(torch.linalg.lstsq(w[i][:, None], w[j][:, None]).solution)  # argmin_c |w_j - c w_i|
                if scale <= 0:
                    assert s[i, j] == torch.inf
                    continue
            expected = float((a[:, j] ** 2).mean() * ((w[j] - scale * w[i]) ** 2).sum())
            assert float(s[i, j]) == pytest.approx(expected, rel=1e-9)
            assert float(c[i, j]) == pytest.approx(scale, rel=1e-9)


def _naive_greedy(model: MLP, n_merges: int) -> list[tuple[int, int, float]]:
    """Recompute every saliency from the current weights at every step (the paper's loop, literally)."""
    w = torch.cat([model.fc0.weight, model.fc0.bias[:, None]], 1).detach().double()
    a = model.out.weight.detach().double().clone()
    removed: set[int] = set()
    out = []
    for _ in range(n_merges):
        s, c = pair_saliencies(w, a, scale_invariant=True)
        for r in removed:
            s[r, :] = s[:, r] = torch.inf
        i, j = divmod(int(torch.argmin(s)), len(w))
        out.append((j, i, float(s[i, j])))
        a[:, i] += c[i, j] * a[:, j]
        a[:, j] = 0
        removed.add(j)
    return out


def test_greedy_merging_matches_a_naive_recomputing_loop():
    model, _ = planted_redundancy_mlp(seed=8)
    result = merge_neurons(model, SurgeryConfig(n_merges=14, scale_invariant=True))
    naive = _naive_greedy(model, 14)
    assert [(m.removed, m.into) for m in result.merges] == [(j, i) for j, i, _ in naive]
    assert [m.saliency for m in result.merges] == pytest.approx([s for *_, s in naive], abs=1e-12)


def test_assay_mlp_with_two_hidden_layers():
    model = MLP(5, (8, 7), 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # plant an exact duplicate in the second hidden layer
        model.fc1.weight[5] = model.fc1.weight[2]
        model.fc1.bias[5] = model.fc1.bias[2]
    assert neuron_layers(model) == [NeuronLayer("fc0", "fc1", True), NeuronLayer("fc1", "out", True)]
    result = merge_neurons(model, SurgeryConfig(max_saliency=1e-12))
    assert [(m.layer, {m.removed, m.into}) for m in result.merges] == [("fc1", {2, 5})]
    x = _x(5)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-5)
    squeezed = merge_neurons(model, SurgeryConfig(n_merges=3))
    assert {k: int(v.sum()) for k, v in squeezed.keep.items()} == {"fc0": 5, "fc1": 4}


def test_transformer_mlp_blocks():
    cfg = TransformerConfig(vocab_size=11, n_layers=2, d_model=16, n_heads=2, context=8, dropout=0.0)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0)).eval()
    fc_in = model.blocks[1].mlp.fc_in
    with torch.no_grad():
        fc_in.weight[9] = fc_in.weight[4]
        fc_in.bias[9] = fc_in.bias[4]
    result = merge_neurons(model, SurgeryConfig(max_saliency=1e-12))
    assert [(m.layer, {m.removed, m.into}) for m in result.merges] == [("blocks.1.mlp.fc_in", {4, 9})]
    tokens = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(result.model(tokens), model(tokens), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc_in.*positively homogeneous"):
        merge_neurons(model, SurgeryConfig(n_merges=1, scale_invariant=True))


def test_bad_input_names_the_layer():
    model, _ = planted_redundancy_mlp(seed=0)
    with pytest.raises(ValueError, match="stopping rule"):
        SurgeryConfig()
    with pytest.raises(ValueError, match="n_merges"):
        SurgeryConfig(n_merges=-1)
    with pytest.raises(ValueError, match="every neuron of 'fc0'"):
        merge_neurons(model, SurgeryConfig(n_merges=model.fc0.out_features))
    with pytest.raises(TypeError, match="'act0'.*nn.Linear"):
        merge_neurons(model, SurgeryConfig(n_merges=1), [NeuronLayer("act0", "out", True)])
    with pytest.raises(TypeError, match="Sequential"):
        neuron_layers(nn.Sequential(nn.Linear(2, 2)))
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tied[4].weight = tied[2].weight
    with pytest.raises(ValueError, match=r"'0' -> '2'.*'4'.*tied"):
        merge_neurons(tied, SurgeryConfig(n_merges=1), [NeuronLayer("0", "2", True)])
    with pytest.raises(ValueError, match="not consecutive"):
        merge_neurons(nn.Sequential(nn.Linear(4, 5), nn.Linear(6, 3)), SurgeryConfig(n_merges=1),
                      [NeuronLayer("0", "1", True)])
