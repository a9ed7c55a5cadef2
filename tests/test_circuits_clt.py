"""Cross-layer transcoders as attribution-graph bases (Ameisen et al. 2025) on the compiled two_hop program
(A → B = f(A) → C = g(B), spec circuits.md §4.3 A6): two exact CLTs built from the compiled weights — the
faithful one (each layer's features are its MLP's neurons) and the shortcut one (layer-0 features write C
straight into MLP 1's output; no layer-1 features) — give graphs whose edges plus constants reproduce every
target and the model's logits exactly, constrained interventions match the edges, and the chain share tells
the two apart while the share through layer 0 alone does not."""

import pytest
import torch

from assay.circuits.compile import PROGRAMS, compile_program
from assay.circuits.graph import (
    FeatureBasis,
    GraphConfig,
    LocalReplacement,
    attribute,
    constrained_effects,
    graph_scores,
    influence_through,
    influence_through_chain,
    subgraph_values,
)
from assay.circuits.graph.basis import rebuilt_outputs
from assay.circuits.learned import clt_bases, train_mlp_clt
from assay.dictionaries.registry import build_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_influence_through_chain_matches_hand_values():
    # nodes tok, f0, f1, logit: logit ← f0 (1), logit ← f1 (3), f1 ← f0 (2), f0 ← tok (5); w = logit
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[3, 1], a[3, 2], a[2, 1], a[1, 0] = 1.0, 3.0, 2.0, 5.0
    w = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    f0, f1 = (torch.arange(4) == i for i in (1, 2))
    assert influence_through(a, w, f0) == pytest.approx(1.0)  # every path meets f0
    assert influence_through_chain(a, w, [f1]) == pytest.approx(0.75)  # one mask: influence_through
    assert influence_through_chain(a, w, [f0, f1]) == pytest.approx(0.75)  # only tok → f0 → f1 → logit
    assert influence_through_chain(a, w, [f1, f0]) == pytest.approx(0.0)  # no path meets f1 below f0


def _exact_clt(model, *, shortcut: bool):
    """A TopK CLT (k = all neurons: TopK∘ReLU = ReLU) holding two_hop's compiled MLPs. ``shortcut``: layer-0
    features also write MLP 1's output, W^{0→1}[k] = mlp1(neuron k's output) − mlp1(0), and layer 1 has none."""
    d, m = model.config.d_model, model.config.d_mlp
    clt = build_sae("topk_clt", d_in=2 * d, d_out=2 * d, d_sae=2 * m, k=m, n_layers=2, unit_decoder=False).double()
    mlps = [model.blocks[i].mlp for i in range(2)]
    with torch.no_grad():
        for p in clt.parameters():
            p.zero_()
        for i in range(1 if shortcut else 2):
            clt.W_enc[i].copy_(mlps[i].fc_in.weight.T)
            clt.b_enc[i * m:(i + 1) * m].copy_(mlps[i].fc_in.bias)
            clt.decoder(i, i).copy_(mlps[i].fc_out.weight.T)
            clt.b_dec[i * d:(i + 1) * d].copy_(mlps[i].fc_out.bias)
        if shortcut:
            zero = mlps[1](torch.zeros(1, d, dtype=torch.float64))
            clt.decoder(0, 1).copy_(mlps[1](mlps[0].fc_out.weight.T) - zero)
            clt.b_dec[d:].copy_(zero[0])
    return clt


@pytest.mark.parametrize("shortcut", [False, True])
def test_exact_clt_graphs_reproduce_the_logits_and_the_chain_share_flags_the_shortcut(shortcut):
    compiled = compile_program(PROGRAMS["two_hop"]())
    model = compiled.model.double()
    bases = clt_bases(_exact_clt(model, shortcut=shortcut), layers=[0, 1])
    assert [s for s, _ in bases[0].writes] == ["blocks.1.mlp"] and bases[1].writes == ()
    tokens = torch.tensor([1, 4, 6, 5, 4, 6])
    g = attribute(model, tokens, bases, GraphConfig(batch_size=16))
    f, e, t, lg = g.slices()
    rows = list(range(f.stop)) + list(range(lg.start, lg.stop))
    torch.testing.assert_close(g.adjacency[rows].sum(1) + g.constants[rows], g.values[rows], rtol=0, atol=1e-10)
    logits = model(tokens[None])[0, -1]
    torch.testing.assert_close(g.values[lg], (logits - logits.mean())[g.logit_tokens], rtol=0, atol=1e-10)
    assert float(g.adjacency[:, e].abs().max()) < 1e-10  # exact: the error nodes carry nothing
    eff = constrained_effects(model, g, bases)
    torch.testing.assert_close(eff.measured, eff.predicted, rtol=0, atol=1e-10)
    w = g.logit_weights()
    errs, toks = torch.zeros(g.adjacency.shape[0], dtype=torch.bool), torch.zeros(g.adjacency.shape[0], dtype=torch.bool)
    errs[e], toks[t] = True, True
    assert graph_scores(g.adjacency, w, errs, toks).replacement == pytest.approx(1.0)
    layer = [torch.zeros_like(errs) for _ in range(2)]
    for k, (j, _, _) in enumerate(g.features.tolist()):
        layer[j][k] = True
    assert influence_through(g.adjacency, w, layer[0]) == pytest.approx(1.0)  # layer 0 is on every path either way
    assert influence_through_chain(g.adjacency, w, layer) == pytest.approx(0.0 if shortcut else 1.0)
    assert bool(layer[1].any()) != shortcut


@pytest.mark.parametrize("arch", ["topk_clt", "jumprelu_clt"])
def test_clt_bases_rebuild_the_clts_own_output(arch):
    kw = {"k": 2} if arch == "topk_clt" else {}
    clt = build_sae(arch, d_in=12, d_out=12, d_sae=15, n_layers=3, **kw).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        clt.mask_decoder(clt.W_dec)
    bases = clt_bases(clt, layers=[0, 1, 2])
    assert [len(b.writes) for b in bases] == [2, 1, 0]
    x = torch.randn(7, 12, generator=g, dtype=torch.float64)
    acts = [b.activation(b.pre(x[:, 4 * i:4 * (i + 1)])) for i, b in enumerate(bases)]
    torch.testing.assert_close(torch.cat(rebuilt_outputs(bases, acts), 1), clt.transcode(x), rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match="TopKCLT or JumpReLUCLT"):
        clt_bases(build_sae("topk_transcoder", d_in=4, d_out=4, d_sae=5, k=2), layers=[0])


def test_replacement_refuses_writes_into_sites_without_a_later_basis():
    compiled = compile_program(PROGRAMS["two_hop"]())
    model = compiled.model.double()
    b0, b1 = clt_bases(_exact_clt(model, shortcut=True), layers=[0, 1])
    with pytest.raises(ValueError, match="not the output site of a basis listed after it"):
        LocalReplacement(model, torch.tensor([1, 4]), [b1, b0])
    with pytest.raises(ValueError, match="writes"):
        FeatureBasis(name="x", input_site="a", output_site="b", W_enc=b0.W_enc, b_enc=b0.b_enc, W_dec=b0.W_dec,
                     b_dec=b0.b_dec, writes=(("c", torch.zeros(2, 3)),))


def test_a_trained_clt_graph_conserves_every_row():
    compiled = compile_program(PROGRAMS["two_hop"]())
    model = compiled.model
    inputs = torch.cat([torch.ones(64, 1, dtype=torch.long),
                        torch.randint(4, 7, (64, 7), generator=torch.Generator().manual_seed(0))], 1)
    from assay.circuits.learned import TranscoderTraining

    clt = train_mlp_clt(model, inputs, [0, 1], TranscoderTraining(d_sae=8, k=1, steps=60, batch_size=128))
    bases = [b.to(torch.float64) for b in clt_bases(clt, layers=[0, 1])]
    g = attribute(model.double(), inputs[0].clone(), bases, GraphConfig(batch_size=32))
    torch.testing.assert_close(g.adjacency.sum(1) + g.constants + g.unexplored, g.values, rtol=0, atol=1e-9)
    # every edge kept → the clean values: σ = TopK ranks within each position's row (over all positions at once,
    # k = 1 kept one feature of the whole prompt)
    everything = torch.ones_like(g.adjacency, dtype=torch.bool)
    torch.testing.assert_close(subgraph_values(g, bases, everything), g.values, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="must be 1\\+ of the model's 2 layers"):
        train_mlp_clt(model, inputs, [0, 2])
