"""Structured removal: the smaller model equals the original with the removed units zeroed (a
hook-based reference), parameter counts are exact, and residual-breaking removals are refused."""

from __future__ import annotations

import pytest
import torch

from assay.hooks import patch
from assay.models.cnn import SmallCNN
from assay.models.mlp import MLP
from assay.models.transformer import Transformer, TransformerConfig
from assay.pruning.masks import apply_masks
from assay.pruning.structured import dependency_groups, group_magnitude, remove_units, structured_keep


def _zero(keep: torch.Tensor, dim: int):
    def fn(h: torch.Tensor) -> torch.Tensor:
        shape = [1] * h.dim()
        shape[dim] = -1
        return h * keep.reshape(shape).to(h.dtype)
    return fn


def _n(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _keep(n, kept, seed):
    k = torch.zeros(n, dtype=torch.bool)
    k[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:kept]] = True
    return k


def test_mlp_neurons_removed_equal_zeroed_activations_and_exact_counts():
    model = MLP(4, (6, 5), 3, generator=torch.Generator().manual_seed(0)).eval()
    keep = {"fc0": _keep(6, 3, 1), "fc1": _keep(5, 2, 2)}
    small = remove_units(model, keep)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), patch(model, {"act0": _zero(keep["fc0"], 1), "act1": _zero(keep["fc1"], 1)}):
        ref = model(x)
    assert torch.allclose(small(x), ref, atol=1e-5)
    assert _n(small) == (4 * 3 + 3) + (3 * 2 + 2) + (2 * 3 + 3)
    assert (small.fc0.out_features, small.fc1.in_features, small.out.in_features) == (3, 3, 2)
    assert _n(model) == (4 * 6 + 6) + (6 * 5 + 5) + (5 * 3 + 3)  # the original is untouched


def test_cnn_channels_with_batchnorm_and_flatten():
    model = SmallCNN(3, 4, channels=(6, 5), image_size=8, batch_norm=True, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for bn in (model.bn0, model.bn1):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    model.eval()
    keep = {"conv0": _keep(6, 4, 2), "conv1": _keep(5, 3, 3)}
    small = remove_units(model, keep)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad(), patch(model, {"act0": _zero(keep["conv0"], 1), "act1": _zero(keep["conv1"], 1)}):
        ref = model(x)
    assert torch.allclose(small(x), ref, atol=1e-5)
    side = 8 // 4
    expected = (3 * 4 * 9 + 4) + 2 * 4 + (4 * 3 * 9 + 3) + 2 * 3 + (3 * side * side * 4 + 4)
    assert _n(small) == expected
    assert small.bn0.running_mean.shape == (4,) and small.bn1.num_features == 3 and small.fc.in_features == 12


def test_transformer_mlp_neurons():
    cfg = TransformerConfig(vocab_size=11, n_layers=2, d_model=8, n_heads=2, d_mlp=12, context=6)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0)).eval()
    keep = {"blocks.0.mlp.fc_in": _keep(12, 7, 1), "blocks.1.mlp.fc_in": _keep(12, 5, 2)}
    small = remove_units(model, keep)
    tokens = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(3))
    # GELU(0) = 0, so zeroing fc_in's output zeroes the neuron's activation
    with torch.no_grad(), patch(model, {k: _zero(v, -1) for k, v in keep.items()}):
        ref = model(tokens)
    assert torch.allclose(small(tokens), ref, atol=1e-5)
    assert _n(model) - _n(small) == (12 - 7) * (8 + 1 + 8) + (12 - 5) * (8 + 1 + 8)


def test_residual_and_output_removals_refused_naming_the_layer():
    cfg = TransformerConfig(vocab_size=11, n_layers=1, d_model=8, n_heads=2, context=6)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0))
    for layer in ("blocks.0.mlp.fc_out", "blocks.0.attn.out", "embed"):
        with pytest.raises(ValueError, match=rf"'{layer}'.*residual add"):
            remove_units(model, {layer: torch.ones(8, dtype=torch.bool)})
    mlp = MLP(4, (6,), 3)
    with pytest.raises(ValueError, match="'out' has no removable units"):
        remove_units(mlp, {"out": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"'fc0' must be a boolean tensor of shape \(6,\)"):
        remove_units(mlp, {"fc0": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="removes all 6 units"):
        remove_units(mlp, {"fc0": torch.zeros(6, dtype=torch.bool)})
    with pytest.raises(TypeError, match="Sequential"):
        dependency_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    apply_masks(mlp, {"fc0": torch.ones(6, 4)})
    with pytest.raises(ValueError, match="materialize"):
        remove_units(mlp, {"fc0": torch.ones(6, dtype=torch.bool)})


def test_group_magnitude_and_structured_keep():
    model = MLP(2, (3,), 1)
    with torch.no_grad():
        model.fc0.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]]))
        model.fc0.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
        model.out.weight.copy_(torch.tensor([[1.0, 0.5, 2.0]]))
    g = dependency_groups(model)["fc0"]
    assert group_magnitude(model, g).tolist() == [1 + 4 + 1 + 1, 1 + 0.25, 9 + 4]
    keep = structured_keep(model, 0.4)  # round(1.2) = 1 unit: the middle one
    assert keep["fc0"].tolist() == [True, False, True]
    deep = MLP(2, (2, 2), 1)
    with torch.no_grad():
        deep.fc0.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.1]]))
        deep.fc0.bias.zero_()
        deep.fc1.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
        deep.fc1.bias.zero_()
        deep.out.weight.copy_(torch.tensor([[1.0, 1.0]]))
    # fc0 units: 1 + 9 = 10, 0.01 + 4 = 4.01; fc1 units: 9 + 1 = 10, 4 + 1 = 5 → the global 2 lowest: fc0[1], fc1[1]
    assert [k.tolist() for k in structured_keep(deep, 0.5, scope="global").values()] == [[True, False], [True, False]]
    assert [k.tolist() for k in structured_keep(deep, 0.5, scope="layer").values()] == [[True, False], [True, False]]
    assert structured_keep(deep, 0.25, scope="global")["fc1"].tolist() == [True, True]  # only 4.01 goes


def test_group_magnitude_of_a_cnn_channel_counts_parameters_not_running_statistics():
    model = SmallCNN(2, 3, channels=(4, 3), image_size=4, batch_norm=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.bn0.running_mean.fill_(100.0)
        model.bn0.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    g = dependency_groups(model)
    c0 = group_magnitude(model, g["conv0"])
    by_hand = (model.conv0.weight.pow(2).sum((1, 2, 3)) + model.conv0.bias.pow(2) + model.bn0.weight.pow(2)
               + model.bn0.bias.pow(2) + model.conv1.weight.pow(2).sum((0, 2, 3)))
    assert torch.allclose(c0, by_hand.double())
    c1 = group_magnitude(model, g["conv1"])  # flattened into fc: 1·1 columns per channel at image_size 4
    by_hand = (model.conv1.weight.pow(2).sum((1, 2, 3)) + model.conv1.bias.pow(2) + model.bn1.weight.pow(2)
               + model.bn1.bias.pow(2) + model.fc.weight.pow(2).sum(0))
    assert torch.allclose(c1, by_hand.double())


def test_gated_mlp_neurons_of_a_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # redraw every weight from a seeded generator (transformers draws from the global one)
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    groups = dependency_groups(model)
    assert set(groups) == {"model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"}
    keep = structured_keep(model, 0.5)
    assert all(int(k.sum()) == 12 for k in keep.values())
    small = remove_units(model, keep)
    tokens = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(1))
    # act(gate)·up is zero where up_proj's output is zero: zero the removed neurons there
    edits = {k.replace("gate_proj", "up_proj"): _zero(v, -1) for k, v in keep.items()}
    with torch.no_grad(), patch(model, edits):
        ref = model(tokens).logits
    with torch.no_grad():
        assert torch.allclose(small(tokens).logits, ref, atol=1e-5)
    assert _n(model) - _n(small) == 2 * 12 * 16 * 3
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.down_proj'.*residual add"):
        remove_units(model, {"model.layers.0.mlp.down_proj": torch.ones(16, dtype=torch.bool)})
