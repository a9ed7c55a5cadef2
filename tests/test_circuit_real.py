"""``assay circuit``'s experiment on a tiny random Llama: transcoders trained on live activations, the graph with a
partial transcoder set, the memory check and the interventions' linear prediction (against the replacement
model run by hand)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from assay.bench.circuit_real import (
    CircuitSettings,
    circuit_experiment,
    llama_bases,
    llama_sites,
    train_transcoders,
)
from assay.circuits.graph.replacement import LocalReplacement
from tests.test_circuits_llama import KW, D, T, exact_transcoder, tiny_llama

SETTINGS = CircuitSettings(layers=(1,), d_sae=32, k=4, steps=30, rows=64, graph_batch=16, max_n_logits=3, n_ablate=5)


def trained_on_tiny_llama():
    """A tiny float64 Llama, a transcoder trained (in float32) on its layer-1 MLP, and a prompt."""
    model = tiny_llama()
    windows = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(3))
    tcs = train_transcoders(model.float(), windows, SETTINGS)
    model.double()
    return model, llama_bases(tcs), torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))


def test_trained_transcoders_give_a_graph_whose_logit_rows_sum_to_the_model():
    model, bases, prompt = trained_on_tiny_llama()
    res = circuit_experiment(model, prompt, bases, SETTINGS)
    g = res.graph
    assert g.basis_names == ("model.layers.1.mlp", "model.layers.0.mlp")  # layer 0: an error node per position
    lg = g.slices()[3]
    with torch.no_grad():
        logits = model(prompt[None]).logits[0, -1]
    summed = g.adjacency[lg].sum(1) + g.constants[lg]
    assert torch.allclose(summed, logits[g.logit_tokens] - logits.mean(), atol=1e-5)
    assert {n["feature_type"] for n in res.document["nodes"]} >= {"embedding", "logit"}
    assert len(res.predicted) == len(res.measured) == len(res.measured_frozen) == min(SETTINGS.n_ablate, int((g.features[:, 1] > 0).sum()))
    assert all(p > 0 for _, p, _ in res.ablated)  # the BOS position is left out
    assert -1.0 <= res.correlation <= 1.0


def test_transcoders_trained_jointly_equal_ones_trained_one_layer_at_a_time_on_the_same_batches():
    """One forward pass per step feeds both layers; each must come out bit-identical to train_saes on that layer's
    own live batches (same token windows, same seed)."""
    from assay.bench.circuit_real import _token_batches
    from assay.dictionaries.batches import live_batches
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainConfig, train_saes

    model = tiny_llama().float()
    windows = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(3))
    settings = replace(SETTINGS, layers=(0, 1), steps=12)
    joint = train_transcoders(model, windows, settings)
    for i in (0, 1):
        inp, out = llama_sites(i)
        alone, _ = train_saes(build_sae("topk_transcoder", d_in=D, d_out=D, d_sae=32, k=4, seed=settings.seed + i),
                              SAETrainConfig(steps=12, warmup_steps=1),
                              live_batches(model, inp, _token_batches(windows, settings), batch_size=settings.rows,
                                           output_site=out))
        for name, p in alone.state_dict().items():
            assert torch.equal(joint[i].state_dict()[name], p), (i, name)
    assert not torch.equal(joint[0].state_dict()["W_dec"], joint[1].state_dict()["W_dec"])


def test_cached_transcoders_are_loaded_and_only_missing_layers_trained(tmp_path, monkeypatch):
    import assay.bench.circuit_real as cr

    model = tiny_llama().float()
    windows = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(3))
    settings = replace(SETTINGS, steps=6)
    first = cr.cached_transcoders(model, windows, settings, tmp_path)  # layer 1 alone
    trained = []
    real = cr.train_transcoders
    monkeypatch.setattr(cr, "train_transcoders", lambda m, w, s: trained.append(s.layers) or real(m, w, s))
    both = cr.cached_transcoders(model, windows, replace(settings, layers=(0, 1)), tmp_path)
    assert trained == [(0,)]
    assert torch.equal(both[1].state_dict()["W_dec"], first[1].state_dict()["W_dec"])
    assert len(list(tmp_path.iterdir())) == 2


def test_predicted_ablation_equals_the_replacement_model_propagated_by_hand():
    """With exact transcoders, ablating a feature in the local replacement model and letting every active downstream
    feature follow its (linear) pre-activation moves the top logit by exactly the graph's prediction."""
    from assay.bench.circuit_interventions import predicted_ablations

    model = tiny_llama()
    prompt = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    bases = [exact_transcoder(model, i) for i in (0, 1)]
    res = circuit_experiment(model, prompt, bases, SETTINGS)
    g = res.graph
    rep = LocalReplacement(model, prompt, bases, unembed=model.lm_head.weight, **KW)
    u = (model.lm_head.weight[g.logit_tokens[0]] - model.lm_head.weight.mean(0)).detach()
    errs = [e[None] for e in rep.errors]
    chosen = list(range(0, g.n_features, max(1, g.n_features // 6)))
    predicted = predicted_ablations(g, chosen, 0)
    for k, prediction in zip(chosen, predicted.tolist(), strict=True):
        j0, p0, i0 = g.features[k].tolist()
        acts = [a[None].clone() for a in rep.acts]
        active = [a > 0 for a in acts]
        with torch.no_grad():
            for _ in range(len(bases) + 1):
                acts[j0][0, p0, i0] = 0
                pres, final = rep.run(rep.emb[None], acts, errs)
                acts = [torch.where(m, p, a) for m, p, a in zip(active, pres, acts, strict=True)]
            acts[j0][0, p0, i0] = 0
            _, final = rep.run(rep.emb[None], acts, errs)
            _, clean = rep.run(rep.emb[None], [a[None] for a in rep.acts], errs)
        expected = float((final[0, -1] - clean[0, -1]) @ u)
        assert prediction == pytest.approx(expected, abs=1e-6)


def test_a_prompt_longer_than_the_memory_budget_is_refused_saying_what_fits():
    model = tiny_llama()
    small = CircuitSettings(layers=(1,), d_sae=32, k=4, memory_gb=0.001)
    prompt = torch.zeros(400, dtype=torch.long)
    with pytest.raises(ValueError, match=r"fits prompts up to \d+ tokens"):
        circuit_experiment(model, prompt, [], small)


def test_the_section_draws_the_exported_graph(tmp_path):
    from assay.report import Section, read_section, write_section

    model = tiny_llama()
    prompt = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    res = circuit_experiment(model, prompt, [exact_transcoder(model, 1)], SETTINGS)
    write_section(tmp_path, Section(title="graph", graphs=[res.document]))
    assert read_section(tmp_path).graphs[0]["metadata"]["prompt_tokens"] == [str(int(t)) for t in prompt]
    page = (tmp_path / "report.html").read_text()
    assert 'class="graphview"' in page and f'{len(res.document["nodes"])} nodes' in page


def test_the_command_refuses_bad_settings():
    from assay.cli.circuit import CircuitCommand
    from assay.config import ConfigError

    with pytest.raises(ConfigError, match="exceeds d_sae"):
        CircuitCommand(d_sae=8, k=16)
    with pytest.raises(ConfigError, match="increasing order"):
        CircuitCommand(layers=(9, 3))
    assert CircuitCommand(all_layers=True).settings().layers == ()  # filled in from the model's config


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_the_live_replacement_model_reproduces_the_model_and_with_exact_transcoders_its_ablations(fraction):
    """Run with its clean errors the live replacement model gives the clean logits; with exact transcoders (error 0)
    an ablation in it moves the logit exactly as removing the feature's write from the real model does."""
    from assay.bench.circuit_interventions import replacement_logits

    model = tiny_llama()
    prompt = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    exact = [exact_transcoder(model, i) for i in (0, 1)]
    res = circuit_experiment(model, prompt, exact, replace(SETTINGS, ablate_fraction=fraction))
    assert torch.allclose(res.measured_replacement, res.measured, atol=1e-9)
    assert res.measured.abs().max() > 1e-3  # the ablations do move the logit
    # with every attention pattern frozen at its clean value the run without an ablation is the clean run, and the
    # ablations differ from the live-attention ones (moving where attention looks is part of their effect)
    from assay.bench.circuit_interventions import Frozen, measured_ablation
    from assay.circuits.graph.hf_frozen import eager_patterns, hf_attention_sites, recorded_rms

    with torch.no_grad(), eager_patterns(model, hf_attention_sites(model)) as patterns, recorded_rms(model) as rms:
        logits = model(prompt[None]).logits[0, -1]
    token = int(res.graph.logit_tokens[0])
    clean_value = float(logits[token] - logits.mean())
    still = Frozen(dict(patterns), dict(rms))
    assert len(still.denominators) == 5  # two norms per layer and the final one
    attention_only = Frozen(still.patterns, {})
    assert abs(measured_ablation(model, prompt, exact[1], 2, 0, 0.0, token, clean_value, {}, attention_only)) < 1e-9
    # Hugging Face's RMSNorm computes its denominator in float32 even in a float64 model; the frozen one does not
    assert abs(measured_ablation(model, prompt, exact[1], 2, 0, 0.0, token, clean_value, {}, still)) < 1e-6
    assert res.measured_frozen_attention.shape == res.measured.shape
    assert not torch.allclose(res.measured_frozen_attention, res.measured, atol=1e-6)
    tcs = train_transcoders(model.float(), torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(3)),
                            replace(SETTINGS, steps=4))
    model.double()
    learned = llama_bases(tcs)
    with torch.no_grad():
        clean = model(prompt[None]).logits[0, -1]
    _, errors = replacement_logits(model, prompt, learned, None)
    assert errors[0].abs().max() > 1e-3  # a 4-step transcoder is far from exact
    rebuilt, _ = replacement_logits(model, prompt, learned, errors)
    assert torch.allclose(rebuilt, clean, atol=1e-9)


def test_the_real_models_first_order_prediction_is_the_limit_of_small_ablations():
    """The attribution-patching reference (the logit's gradient at the MLP output, dotted with the removed write)
    must equal the measured change per unit removed as the removed fraction goes to 0 (finite differences; Hugging
    Face's RMSNorm works in float32 even in a float64 model, hence a fraction of 1e-3), and differ from whole-feature removals (the model
    is not linear)."""
    model = tiny_llama()
    prompt = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    exact = [exact_transcoder(model, i) for i in (0, 1)]
    small = circuit_experiment(model, prompt, exact, replace(SETTINGS, ablate_fraction=1e-3))
    assert small.first_order["live"].abs().max() > 0.1
    assert torch.allclose(small.first_order["live"], small.measured, rtol=1e-2, atol=2e-3)
    assert small.correlation_first_order > 0.999
    assert torch.allclose(small.first_order["attention frozen"], small.measured_frozen_attention, rtol=1e-2, atol=2e-3)
    assert torch.allclose(small.first_order["attention and norms frozen"], small.measured_frozen_norms, rtol=1e-2,
                          atol=2e-3)
    assert not torch.allclose(small.first_order["norms frozen"], small.first_order["live"], rtol=1e-2, atol=2e-3)
    whole = circuit_experiment(model, prompt, exact, SETTINGS)
    # the same features, the same gradients
    assert all(torch.equal(whole.first_order[k], small.first_order[k]) for k in whole.first_order)
    assert not torch.allclose(whole.first_order["live"], whole.measured, rtol=1e-3, atol=1e-5)


def test_with_exact_transcoders_the_graph_predicts_the_real_models_frozen_linearisation():
    """With the MLPs' own neurons as features (error 0), the graph's prediction of every ablation (a matrix solve
    over its edges) is the real model's gradient with attention and norm denominators frozen (autograd through the
    Hugging Face forward), and differs from the fully live gradient."""
    model = tiny_llama()
    prompt = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    exact = [exact_transcoder(model, i) for i in (0, 1)]
    res = circuit_experiment(model, prompt, exact, SETTINGS)
    assert res.predicted.abs().max() > 0.1
    assert torch.allclose(res.first_order["attention and norms frozen"], res.predicted, rtol=1e-4, atol=1e-5)
    assert res.correlation_transcoders > 0.9999
    assert not torch.allclose(res.first_order["live"], res.first_order["attention and norms frozen"], rtol=1e-3,
                              atol=1e-4)
    # small ablations in the real model with attention and norm denominators frozen (MLPs live) tend to the same
    small = circuit_experiment(model, prompt, exact, replace(SETTINGS, ablate_fraction=1e-3))
    assert torch.allclose(small.measured_frozen_norms, small.predicted, rtol=1e-2, atol=2e-3)
    assert not torch.allclose(small.measured_frozen_attention, small.predicted, rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize(("attention", "equals", "differs"), [("frozen", "attention frozen", "attention and norms frozen"),
                                                             ("linearised", "live", "attention frozen")])
def test_a_graph_with_linearised_norms_predicts_the_real_models_gradient_with_what_it_freezes(attention, equals,
                                                                                             differs):
    """norms='linearised' replaces each RMSNorm by its Jacobian at the clean run, attention='linearised' each attention
    by its linearisation (the pattern moves with Q and K to first order). With exact transcoders the graph's
    prediction of every ablation is then the real model's gradient with only attention frozen, or with nothing
    frozen; and the logit rows still sum to the logits with their constants (the rows stay affine)."""
    from assay.bench.circuit_interventions import graph_freezing
    from assay.config import ConfigError

    model = tiny_llama()
    prompt = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    exact = [exact_transcoder(model, i) for i in (0, 1)]
    res = circuit_experiment(model, prompt, exact, replace(SETTINGS, norms="linearised", attention=attention))
    assert torch.allclose(res.predicted, res.first_order[equals], rtol=1e-4, atol=1e-5)
    assert graph_freezing("linearised", attention) == equals
    assert res.correlation_transcoders > 0.9999
    assert not torch.allclose(res.predicted, res.first_order[differs], rtol=1e-3, atol=1e-4)
    g = res.graph
    lg = g.slices()[3]
    with torch.no_grad():
        logits = model(prompt[None]).logits[0, -1]
    assert torch.allclose(g.adjacency[lg].sum(1) + g.constants[lg], logits[g.logit_tokens] - logits.mean(), atol=1e-5)
    for bad in ({"norms": "live"}, {"attention": "live"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CircuitSettings(**bad)


@pytest.mark.parametrize(("norms", "attention"), [("frozen", "frozen"), ("linearised", "linearised")])
def test_constrained_interventions_move_every_target_by_its_edge_on_the_ablated_and_drawn_features(norms, attention):
    """circuit-tracer's exactness check on a partial transcoder set with trained (inexact, so non-zero error nodes)
    transcoders: the ablated features, then drawn others up to n_constrained, then every token embedding, each
    doubled, move every feature pre-activation and logit by the graph's edge; the sampled columns are the same as
    when every feature is doubled."""
    from assay.circuits.graph import constrained_effects

    model, bases, prompt = trained_on_tiny_llama()
    settings = replace(SETTINGS, n_constrained=7, norms=norms, attention=attention, graph_batch=3)
    res = circuit_experiment(model, prompt, bases, settings)
    c, g = res.constrained, res.graph
    assert c.measured.shape == (g.n_features + g.n_logits, 7 + T)
    assert float(c.predicted.abs().max()) > 0.1
    torch.testing.assert_close(c.measured, c.predicted, rtol=0, atol=1e-9)
    nodes = {(g.basis_names[j], p, i): k for k, (j, p, i) in enumerate(g.features.tolist())}
    assert list(c.columns[:len(res.ablated)]) == [nodes[a] for a in res.ablated]
    tokens = g.slices()[2]
    assert len(set(c.columns)) == len(c.columns) and list(c.columns[7:]) == list(range(tokens.start, tokens.stop))
    full = constrained_effects(model, g, bases, **KW, unembed=model.lm_head.weight, norms=norms, attention=attention)
    at = {col: n for n, col in enumerate(full.columns)}
    torch.testing.assert_close(c.measured, full.measured[:, [at[col] for col in c.columns]], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="must index the graph"):
        constrained_effects(model, g, bases, features=[g.n_features], **KW, unembed=model.lm_head.weight)


def test_the_command_on_smollm2_in_float64_gives_a_graph_whose_edges_constrained_interventions_reproduce(smollm2, tmp_path):
    """End to end on the real model (a tiny transcoder set, a few steps): the run writes graph.json, the report and the
    cached transcoder; in float64 doubling each sampled feature and token embedding moves every target by its edge
    far below float32 rounding (the replay of the clean logits stays at float32's level: Hugging Face's RMSNorm
    computes in float32 whatever the model's dtype)."""
    import json

    from assay.bench.circuit_real import run_real_circuit

    settings = CircuitSettings(layers=(2, 5), d_sae=64, k=4, steps=3, rows=32, n_ablate=3, n_constrained=6,
                               float64=True)
    res = run_real_circuit("smollm2-135m", "The capital of France is", settings, tmp_path, n_windows=8, window=16)
    c, g = res.constrained, res.graph
    assert g.adjacency.dtype == torch.float64 and c.measured.shape == (g.n_features + g.n_logits, 6 + g.n_tokens)
    assert float(c.predicted.abs().max()) > 1e-2
    torch.testing.assert_close(c.measured, c.predicted, rtol=0, atol=1e-9)
    assert c.replay_error < 1e-3
    assert json.loads((tmp_path / "graph.json").read_text())["metadata"]["slug"] == "circuit"
    notes = " ".join(json.loads((tmp_path / "section.json").read_text())["notes"])
    assert "computed in float64" in notes and "every entry inside circuit-tracer's tolerances" in notes
    assert len(list((tmp_path / "transcoders").iterdir())) == 2
