"""Hard-concrete L0 gates (Louizos et al. 2018) against the spec's values, Monte-Carlo sampling of the
gate, and the planted-redundancy MLP."""

import copy
import math

import pytest
import torch
from torch import nn

from assay.hooks import SiteError
from assay.models.planted_redundancy import PlantedRedundancyConfig, planted_redundancy_mlp
from assay.pruning.gates import (
    Gates,
    HardConcreteConfig,
    HardConcreteGate,
    expected_l0,
    hard_concrete_sample,
    hard_concrete_test_gate,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LOG_ALPHA = torch.tensor([0.0, 2.0, -2.0])


def test_spec_check_values():
    torch.testing.assert_close(expected_l0(LOG_ALPHA), torch.tensor([0.831822, 0.973367, 0.400975]), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(hard_concrete_test_gate(LOG_ALPHA), torch.tensor([0.5, 0.956956, 0.043044]),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("beta", [2 / 3, 0.3])
def test_expected_l0_and_the_point_masses_match_monte_carlo(beta):
    n = 200_000
    z = hard_concrete_sample(LOG_ALPHA.expand(n, 3), temperature=beta, generator=torch.Generator().manual_seed(0))
    assert z.min() >= 0 and z.max() <= 1
    gamma, zeta = -0.1, 1.1

    def logit(p):
        return math.log(p / (1 - p))

    # P(z = 1) = P(s >= (1 - γ)/(ζ - γ)), with logit(s) = logistic noise + log α over β
    p_one = torch.sigmoid(LOG_ALPHA - beta * logit((1 - gamma) / (zeta - gamma)))
    for closed, empirical in ((expected_l0(LOG_ALPHA, temperature=beta), (z > 0).double().mean(0)),
                              (p_one, (z == 1).double().mean(0))):
        se = (closed * (1 - closed) / n).sqrt()
        assert torch.all((empirical - closed).abs() < 4 * se), (empirical, closed)


def test_expected_l0_gradient_is_the_logistic_density():
    log_alpha = LOG_ALPHA.clone().requires_grad_()
    expected_l0(log_alpha).sum().backward()
    p = expected_l0(LOG_ALPHA)
    torch.testing.assert_close(log_alpha.grad, p * (1 - p))


def test_eval_gate_is_deterministic_and_training_gate_is_sampled():
    gates = Gates({"act0": 4}, log_alpha={"act0": torch.tensor([3.0, -3.0, 0.0, 1.0])})
    model = nn.Sequential()
    model.add_module("act0", nn.Identity())
    h = torch.ones(5, 4)
    gates.eval()
    with gates.attached(model):
        a, b = model(h), model(h)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, hard_concrete_test_gate(gates["act0"].log_alpha.detach()).expand(5, 4))
    assert gates.keep_mask()["act0"].tolist() == [True, False, True, True]
    assert torch.all(a[:, 1] == 0)
    gates.train()
    with gates.attached(model, generator=torch.Generator().manual_seed(1)):
        c = model(h)
    with gates.attached(model, generator=torch.Generator().manual_seed(1)):
        d = model(h)
    assert torch.equal(c, d) and not torch.equal(c[0], c[1])  # same seed same draws; per-example draws differ
    c.sum().backward()
    assert gates["act0"].log_alpha.grad is not None and gates["act0"].log_alpha.grad.abs().sum() > 0


def test_channel_gates_share_one_draw_over_space():
    gate = HardConcreteGate(3, HardConcreteConfig(dim=1), site="conv")
    gate.generator = torch.Generator().manual_seed(0)
    out = gate(torch.ones(2, 3, 4, 4))
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))
    single = HardConcreteGate(3, HardConcreteConfig(dim=1, per_example=False), site="conv")
    out = single(torch.ones(2, 3, 4, 4))
    assert torch.equal(out[0], out[1])


def test_bad_input_names_the_layer():
    with pytest.raises(ValueError, match="temperature must be > 0.*'blocks.0.mlp'"):
        Gates({"blocks.0.mlp": 4}, HardConcreteConfig(temperature=0.0))
    with pytest.raises(ValueError, match="temperature must be > 0.*'act0'"):
        Gates({"act0": 4}, HardConcreteConfig(temperature=-1.0))
    with pytest.raises(ValueError, match=r"log_alpha for layer 'act0' must have shape \(4,\).*\(3,\)"):
        Gates({"act0": 4}, log_alpha={"act0": torch.zeros(3)})
    with pytest.raises(ValueError, match="not gated"):
        Gates({"act0": 4}, log_alpha={"act1": torch.zeros(4)})
    with pytest.raises(ValueError, match="gamma < 0 < 1 < zeta"):
        HardConcreteConfig(zeta=0.9)
    model, _ = planted_redundancy_mlp(seed=0)
    with pytest.raises(ValueError, match="layer 'act0' output has 19 units.*gate has 5"), \
            Gates({"act0": 5}).attached(model):
        model(torch.zeros(1, 12))
    with pytest.raises(SiteError), Gates({"act9": 5}).attached(model):
        model(torch.zeros(1, 12))


def test_l0_training_switches_off_planted_redundant_units():
    """Student = the planted MLP with gates on its hidden units, trained (weights and gates) to match the
    planted teacher's outputs with an L0 penalty. Measured over seeds 0-3 (λ = 0.5, 1000 steps): planted
    pairs with at least one unit switched off 5, 5, 3, 5 of 7; copy-less base neurons kept 5, 6, 6, 5 of 6;
    relative output error 0.008-0.028. The L0 objective sometimes switches off a whole low-variance pair
    (and the student re-fits the others) rather than exactly one unit per pair."""
    cfg = PlantedRedundancyConfig(n_base=13, n_exact=3, n_scaled=3, noise_levels=(0.05,))
    teacher, truth = planted_redundancy_mlp(cfg, seed=0)
    student = copy.deepcopy(teacher).train()
    gates = Gates({"act0": cfg.hidden}, HardConcreteConfig(init_log_alpha=0.0))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam([{"params": student.parameters(), "lr": 0.02}, {"params": gates.parameters(), "lr": 0.05}])
    with torch.no_grad():
        var = teacher(torch.randn(4096, cfg.d_in, generator=g)).var(0).sum()
    with gates.attached(student, generator=g):
        for _ in range(1000):
            x = torch.randn(64, cfg.d_in, generator=g)
            with torch.no_grad():
                y = teacher(x)
            loss = (student(x) - y).pow(2).mean(0).sum() / var + 0.5 * gates.expected_l0() / cfg.hidden
            opt.zero_grad()
            loss.backward()
            opt.step()
        gates.eval()
        x = torch.randn(2048, cfg.d_in, generator=g)
        with torch.no_grad():
            rel_error = float((student(x) - teacher(x)).pow(2).mean(0).sum() / var)
    keep = gates.keep_mask()["act0"]
    pairs = truth.pairs()
    redundant_off = sum(not (keep[s] and keep[c]) for s, c in pairs) / len(pairs)
    lonely = [i for i, k in enumerate(truth.kind) if k == "base" and i not in {s for s, _ in pairs}]
    lonely_off = float((~keep[lonely]).float().mean())
    assert redundant_off >= 4 / 7 and redundant_off - lonely_off >= 0.3, (redundant_off, lonely_off)
    assert rel_error < 0.05


@pytest.mark.parametrize("conv", [False, True])
def test_folded_gates_give_the_gated_outputs_without_hooks(conv):
    if conv:
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3))
        x, sizes, readers, config = torch.randn(2, 2, 7, 7), {"1": 4}, {"1": "2"}, HardConcreteConfig(dim=1)
    else:
        model, _ = planted_redundancy_mlp(seed=0)
        x, sizes, readers, config = torch.randn(8, 12), {"act0": 19}, {"act0": "out"}, HardConcreteConfig()
    n = next(iter(sizes.values()))
    log_alpha = torch.linspace(-4, 4, n, dtype=torch.float32)
    gates = Gates(sizes, config, log_alpha={next(iter(sizes)): log_alpha}).eval()
    with torch.no_grad(), gates.attached(model):
        gated = model(x)
    folded = gates.fold(model, readers)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), gated)
        assert not torch.allclose(model(x), gated)  # the gates did something; the input model is unchanged
    keep = gates.keep_mask()[next(iter(sizes))]
    assert 0 < int(keep.sum()) < n
    reader = folded.get_submodule(next(iter(readers.values())))
    assert torch.all(reader.weight[:, ~keep] == 0)
    with pytest.raises(ValueError, match="missing"):
        gates.fold(model, {})
    site = next(iter(sizes))
    with pytest.raises(TypeError, match=f"reader of gated site '{site}'"):
        gates.fold(model, {site: site})


def _mixed_log_alpha(n: int, seed: int, closed: int) -> torch.Tensor:
    """Log α with ``closed`` gates at −6 (test-time gate 0) and the rest in (−1.5, 3) (gates in (0, 1])."""
    g = torch.Generator().manual_seed(seed)
    la = torch.empty(n).uniform_(-1.5, 3.0, generator=g)
    la[torch.randperm(n, generator=g)[:closed]] = -6.0
    return la


def test_materialized_gates_give_a_smaller_mlp_with_the_gated_outputs():
    from assay.pruning.structured import remove_units, unit_sites
    from assay.pruning.surgery import SurgeryConfig, merge_neurons

    model, _ = planted_redundancy_mlp(PlantedRedundancyConfig(), seed=0)
    assert unit_sites(model) == {"act0": "fc0"}
    la = _mixed_log_alpha(19, 0, closed=7)
    gates = Gates({"act0": 19}, log_alpha={"act0": la}).eval()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), gates.attached(model):
        ref = model(x)
    small = gates.materialize(model)
    assert small.fc0.out_features == small.out.in_features == 12  # the 7 closed units are gone
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref, atol=1e-5, rtol=1e-5)
    # surgery's keep is keyed by the producing layer already: the merged model shrinks unchanged
    merged = merge_neurons(model, SurgeryConfig(max_saliency=1e-9, scale_invariant=True))
    shrunk = remove_units(merged.model, merged.keep)
    assert shrunk.fc0.out_features == int(merged.keep["fc0"].sum()) == 13
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), merged.model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shrunk(x), model(x), atol=1e-5, rtol=1e-5)


def test_materialized_channel_gates_of_a_cnn_with_batchnorm_and_flatten():
    from assay.models.cnn import SmallCNN

    model = SmallCNN(channels=(6, 8), image_size=8, batch_norm=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.bn0.running_mean.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
        model.bn1.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    model.eval()
    gates = Gates({"act0": 6, "act1": 8}, HardConcreteConfig(dim=1),
                  log_alpha={"act0": _mixed_log_alpha(6, 1, 2), "act1": _mixed_log_alpha(8, 2, 3)}).eval()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), gates.attached(model):
        ref = model(x)
    small = gates.materialize(model)
    assert (small.conv0.out_channels, small.bn0.num_features, small.conv1.in_channels) == (4, 4, 4)
    assert small.conv1.out_channels == 5 and small.fc.in_features == 5 * 2 * 2  # h·w column blocks per channel
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref, atol=1e-5, rtol=1e-5)


def test_materialized_gates_on_a_gated_llama_mlp_and_bad_mappings():
    from transformers import LlamaConfig, LlamaForCausalLM

    from assay.pruning.structured import unit_sites

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    sites = unit_sites(model)
    assert sites == {f"model.layers.{i}.mlp.act_fn": f"model.layers.{i}.mlp.gate_proj" for i in range(2)}
    gates = Gates(dict.fromkeys(sites, 24), log_alpha={s: _mixed_log_alpha(24, i, 10)
                                                      for i, s in enumerate(sites)}).eval()
    tokens = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), gates.attached(model):
        ref = model(tokens).logits
    small = gates.materialize(model)
    assert [m.mlp.down_proj.in_features for m in small.model.layers] == [14, 14]
    with torch.no_grad():
        torch.testing.assert_close(small(tokens).logits, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no producing layer known for gated site"):
        Gates({"model.norm": 16}).materialize(model)
    with pytest.raises(ValueError, match=r"maps to 'model.layers.0.mlp.down_proj'.*no removable units"):
        Gates({"x": 16}).materialize(model, {"x": "model.layers.0.mlp.down_proj"})
